"""The oracle: the recurrence one step at a time, in fp32 (float64 for float64 inputs). Slow and obviously
correct; every other backend is tested against it."""
from __future__ import annotations

import torch

from .common import complex_of, compute_dtype, finish, per_channel, prepare_delta


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_final_state=False, reverse=False):
    """Same contract as ``mambaverse.ops.selective_scan``; follows mamba-ssm's ``selective_scan_ref``."""
    b, d, l = u.shape
    n = A.shape[1]
    real = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    state_dtype = complex_of(real) if A.is_complex() else real
    dt = prepare_delta(delta, delta_bias, delta_softplus, real)
    Bx = per_channel(B, b, d, l).to(state_dtype)  # (b, d, n, l)
    Cx = per_channel(C, b, d, l).to(state_dtype)
    uf, Af = u.to(real), A.to(state_dtype)
    h = u.new_zeros(b, d, n, dtype=state_dtype) if initial_state is None else initial_state.to(state_dtype)
    ys = [None] * l
    order = range(l - 1, -1, -1) if reverse else range(l)
    for t in order:
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bx[:, :, :, t]
        ys[t] = (h * Cx[:, :, :, t]).sum(-1)
    y = torch.stack(ys, dim=-1) if l else u.new_zeros(b, d, 0, dtype=state_dtype)
    out = finish(y, u, D, z, u.dtype)
    return (out, h) if return_final_state else out
