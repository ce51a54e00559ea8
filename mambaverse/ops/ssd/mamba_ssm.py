"""mamba-ssm's Triton SSD kernels (``mamba_chunk_scan_combined``), when installed."""
from __future__ import annotations


def _mamba_ssm(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=64):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state,
                                     return_final_states=return_final_state)
