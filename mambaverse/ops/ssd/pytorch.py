"""Mamba-2 SSD scan in chunks (Dao & Gu 2024, Listing 1): quadratic within a chunk, a recurrence across."""
from __future__ import annotations

import torch

from .common import _heads, compute_dtype


def ssd_scan_chunked(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=64):
    """Chunked SSD in pure PyTorch: quadratic attention-like form inside a chunk, a recurrence across chunks."""
    b, l, h, p = x.shape
    cd = compute_dtype(x, dt, A, B, C, D, initial_state)
    n = B.shape[3]
    T = chunk_size
    pad = (-l) % T
    xf, dtf = x.to(cd), dt.to(cd)
    Bh, Ch = _heads(B.to(cd), h), _heads(C.to(cd), h)
    if pad:  # zero dt on padding: no decay, no input, so states pass through unchanged
        xf, dtf, Bh, Ch = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (xf, dtf, Bh, Ch))
    c = xf.shape[1] // T
    xs = xf.reshape(b, c, T, h, p)
    Bs, Cs = Bh.reshape(b, c, T, h, n), Ch.reshape(b, c, T, h, n)
    log_decay = (dtf * A.to(cd)).reshape(b, c, T, h)
    cum = log_decay.cumsum(2)  # (b, c, T, h)
    X = xs * dtf.reshape(b, c, T, h, 1)
    # within a chunk: y_t = sum_{s<=t} (C_t . B_s) exp(cum_t - cum_s) X_s; masked before exp, so no overflow
    seg = cum.unsqueeze(3) - cum.unsqueeze(2)  # (b, c, t, s, h)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    weights = torch.exp(seg.masked_fill(~causal[None, None, :, :, None], float("-inf")))
    scores = torch.einsum("bcthn,bcshn->bctsh", Cs, Bs) * weights
    y = torch.einsum("bctsh,bcshp->bcthp", scores, X)
    # each chunk's own contribution to the state at its end
    to_end = torch.exp(cum[:, :, -1:, :] - cum)  # (b, c, T, h)
    chunk_states = torch.einsum("bcsh,bcshp,bcshn->bchpn", to_end, X, Bs)
    chunk_decay = torch.exp(cum[:, :, -1, :])  # (b, c, h)
    state = x.new_zeros(b, h, p, n, dtype=cd) if initial_state is None else initial_state.to(cd)
    entering = []
    for i in range(c):
        entering.append(state)
        state = chunk_decay[:, i, :, None, None] * state + chunk_states[:, i]
    entering = torch.stack(entering, dim=1)  # (b, c, h, p, n): state before each chunk
    y = y + torch.einsum("bcthn,bchpn,bcth->bcthp", Cs, entering, torch.exp(cum))
    y = y.reshape(b, c * T, h, p)[:, :l]
    if D is not None:
        y = y + x.to(cd) * D.to(cd)[:, None]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y
