"""Our Triton kernel behind the selective-scan contract (the only place it is called from)."""
from __future__ import annotations

from .common import per_channel


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, return_final_state=False, reverse=False):
    """Real A only; B/C shared, grouped, or time-invariant (d, n), the latter passed as a per-channel
    (b, d, n, l) view (the kernel reads time contiguously, so it materialises that view once)."""
    from ...kernels import selective_scan_triton as kernel  # only the ops layer imports kernels

    b, d, l = u.shape
    if B.dim() == 2:
        B = per_channel(B, b, d, l)
    if C.dim() == 2:
        C = per_channel(C, b, d, l)
    return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state, reverse)
