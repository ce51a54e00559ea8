"""The correction in blocks of time: memory O(b d n T) per block, each block checkpointed under autograd.

Within a block the decay is the carried product P (``decay_in`` times the decay of everything before the
block) times
exp(A * cumsum(dt)) of the block, so no long running sum of dt is ever exponentiated. Once P has
underflowed to exactly zero in every entry (dt >= 0 and A <= 0 keep it there), every later output and
every gradient through it is exactly zero, so the remaining blocks are skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..selective_scan.common import compute_dtype, per_channel, prepare_delta

BLOCK = 256


def _block(dt, A, Cb, h_in, P):
    """dt (b, d, T), A (d, n), Cb (b, d, n, T), h_in and P (b, d, n) -> (y (b, d, T), P after the block)."""
    cum = dt.cumsum(-1)
    w = P[..., None] * torch.exp(A[None, :, :, None] * cum[:, :, None, :])
    y = (Cb * w * h_in[..., None]).sum(2)
    return y, P * torch.exp(A[None] * cum[:, :, -1:])


def state_correction_torch(delta, A, C, h_in, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                           decay_in=None, block=BLOCK):
    """Same contract as ``mambaverse.ops.state_correction``."""
    b, d, l = delta.shape
    real = compute_dtype(delta, A, C, h_in, z, delta_bias, decay_in)
    dt = prepare_delta(delta, delta_bias, delta_softplus, real)
    Cx = per_channel(C, b, d, l)
    Af, hf = A.to(real), h_in.to(real)
    if reverse:  # walk from the end without copying: the blocks are taken right to left and flipped inside
        dt = dt.flip(-1)
        Cx = Cx.flip(-1)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (delta, A, C, h_in, delta_bias, decay_in))
    P = torch.ones(b, d, A.shape[1], dtype=real, device=delta.device) if decay_in is None else decay_in.to(real)
    # the early stop reads P on the host; a CUDA graph being captured cannot sync, so it computes every block
    can_stop = not (P.is_cuda and torch.cuda.is_current_stream_capturing())
    ys = []
    for s in range(0, l, block):
        if s and can_stop and not bool(P.any()):  # the decay has underflowed everywhere: the rest is exactly zero
            ys.append(dt.new_zeros(b, d, l - s))
            break
        args = (dt[..., s:s + block], Af, Cx[..., s:s + block].to(real), hf, P)
        y, P = checkpoint(_block, *args, use_reentrant=False) if grad else _block(*args)
        ys.append(y)
    y = torch.cat(ys, -1) if len(ys) > 1 else ys[0] if ys else dt.new_zeros(b, d, 0)
    if reverse:
        y = y.flip(-1)
    if z is not None:
        y = y * F.silu(z.to(real))
    return y.to(delta.dtype)
