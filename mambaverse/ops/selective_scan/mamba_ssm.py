"""mamba-ssm's CUDA kernel (``selective_scan_fn``), when installed."""
from __future__ import annotations


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             initial_state=None, return_final_state=False, reverse=False):
    """mamba-ssm has no initial state, and its final state carries no gradient; the capability table keeps
    such calls away from it. ``reverse`` runs on flipped copies."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def flip(t):
        return t.flip(-1) if (reverse and t is not None and t.dim() >= 3) else t

    res = selective_scan_fn(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias,
                            delta_softplus, return_last_state=return_final_state)
    if return_final_state:
        out, last = res
        return flip(out), last.float()
    return flip(res)
