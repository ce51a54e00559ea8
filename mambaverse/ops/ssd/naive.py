"""Mamba-2 SSD scan, the sequential oracle."""
from __future__ import annotations

import torch

from .common import _heads, compute_dtype


def ssd_scan_naive(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=None):
    """The oracle: one step at a time (Dao & Gu 2024, eq. 2), fp32 state (float64 for float64 inputs)."""
    b, l, h, p = x.shape
    cd = compute_dtype(x, dt, A, B, C, D, initial_state)
    Bh, Ch = _heads(B.to(cd), h), _heads(C.to(cd), h)
    state = x.new_zeros(b, h, p, B.shape[3], dtype=cd) if initial_state is None else initial_state.to(cd)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t].to(cd) * A.to(cd))  # (b, h)
        state = decay[..., None, None] * state + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t].to(cd), x[:, t].to(cd), Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x.to(cd) * D.to(cd)[:, None]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y
