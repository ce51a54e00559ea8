"""Our Triton correction kernel behind the state_correction contract (the only place it is called from)."""
from __future__ import annotations


def state_correction_triton(delta, A, C, h_in, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                            decay_in=None):
    """Real A; C shared (b, n, l) or grouped (b, g, n, l), passed to the kernel as groups."""
    from ...kernels import state_correction_triton as kernel  # only the ops layer imports kernels

    if C.dim() == 3:
        C = C.unsqueeze(1)
    return kernel(delta, A, C, h_in, z, delta_bias, delta_softplus, reverse, decay_in)
