"""The oracle: the correction from its definition, one (b, d, n, l) decay tensor, plain autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..selective_scan.common import compute_dtype, per_channel, prepare_delta


def state_correction_naive(delta, A, C, h_in, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                           decay_in=None):
    """Same contract as ``mambaverse.ops.state_correction``; memory O(b d n l)."""
    b, d, l = delta.shape
    real = compute_dtype(delta, A, C, h_in, z, delta_bias, decay_in)
    h = h_in.to(real) if decay_in is None else h_in.to(real) * decay_in.to(real)
    dt = prepare_delta(delta, delta_bias, delta_softplus, real)
    # inclusive running sum of dt from the end where the state enters (the start, or the end when reversed)
    cum = dt.flip(-1).cumsum(-1).flip(-1) if reverse else dt.cumsum(-1)
    decay = torch.exp(A.to(real)[None, :, :, None] * cum[:, :, None, :])  # (b, d, n, l)
    y = (per_channel(C, b, d, l).to(real) * decay * h[..., None]).sum(2)
    if z is not None:
        y = y * F.silu(z.to(real))
    return y.to(delta.dtype)
