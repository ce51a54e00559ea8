"""Mamba-2's state-space duality (SSD) scan: a scalar decay per head, shared B/C per group.

Shapes: x (b, l, h, p) with h heads of p channels; dt (b, l, h) already positive (after softplus);
A (h,) negative; B, C (b, l, g, n) with h divisible by g; D (h,) optional;
initial_state (b, h, p, n) optional. Returns y (b, l, h, p) [, final_state (b, h, p, n)].

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T,     y_t = h_t C_t + D x_t
"""
from __future__ import annotations

import torch

from ..errors import BackendUnavailableError, ShapeError


def _check(x, dt, A, B, C, initial_state):
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("initial_state", initial_state)):
        if t is not None and not t.is_floating_point():
            raise ShapeError(f"ssd_scan: {name} has dtype {t.dtype}, expected a floating dtype")
    if x.dim() != 4:
        raise ShapeError(f"ssd_scan: x has shape {tuple(x.shape)}, expected (b, l, h, p)")
    b, l, h, p = x.shape
    if tuple(dt.shape) != (b, l, h):
        raise ShapeError(f"ssd_scan: dt has shape {tuple(dt.shape)}, expected {(b, l, h)}")
    if tuple(A.shape) != (h,):
        raise ShapeError(f"ssd_scan: A has shape {tuple(A.shape)}, expected ({h},)")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[:2] != (b, l) or h % t.shape[2]:
            raise ShapeError(f"ssd_scan: {name} has shape {tuple(t.shape)}, expected (b={b}, l={l}, g, n) with h={h} divisible by g")
    if initial_state is not None and tuple(initial_state.shape) != (b, h, p, B.shape[3]):
        raise ShapeError(f"ssd_scan: initial_state has shape {tuple(initial_state.shape)}, expected {(b, h, p, B.shape[3])}")


def _heads(t, h):
    return t.repeat_interleave(h // t.shape[2], dim=2)


def ssd_scan_naive(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=None):
    b, l, h, p = x.shape
    Bh, Ch = _heads(B.float(), h), _heads(C.float(), h)
    state = x.new_zeros(b, h, p, B.shape[3], dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t].float() * A.float())  # (b, h)
        state = decay[..., None, None] * state + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t].float(), x[:, t].float(), Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y


def ssd_scan_chunked(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=64):
    """Chunked SSD in pure PyTorch: quadratic attention-like form inside a chunk, a recurrence across chunks."""
    b, l, h, p = x.shape
    n = B.shape[3]
    T = chunk_size
    pad = (-l) % T
    xf, dtf = x.float(), dt.float()
    Bh, Ch = _heads(B.float(), h), _heads(C.float(), h)
    if pad:  # zero dt on padding: no decay, no input, so states pass through unchanged
        xf, dtf, Bh, Ch = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (xf, dtf, Bh, Ch))
    c = xf.shape[1] // T
    xs = xf.reshape(b, c, T, h, p)
    Bs, Cs = Bh.reshape(b, c, T, h, n), Ch.reshape(b, c, T, h, n)
    log_decay = (dtf * A.float()).reshape(b, c, T, h)
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
    state = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    entering = []
    for i in range(c):
        entering.append(state)
        state = chunk_decay[:, i, :, None, None] * state + chunk_states[:, i]
    entering = torch.stack(entering, dim=1)  # (b, c, h, p, n): state before each chunk
    y = y + torch.einsum("bcthn,bchpn,bcth->bcthp", Cs, entering, torch.exp(cum))
    y = y.reshape(b, c * T, h, p)[:, :l]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y


def _mamba_ssm(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=64):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state,
                                     return_final_states=return_final_state)


_BACKENDS = {"naive": ssd_scan_naive, "torch": ssd_scan_chunked, "mamba_ssm": _mamba_ssm}


def _mamba_ssm_ready(device):
    if device.type != "cuda":
        return False
    try:
        import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
    except Exception:
        return False
    return True


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=64, backend="auto"):
    """Mamba-2 SSD scan; see the module docstring. backend: auto, naive, torch, mamba_ssm."""
    _check(x, dt, A, B, C, initial_state)
    if backend == "auto":
        backend = "mamba_ssm" if _mamba_ssm_ready(x.device) else "torch"
    if backend not in _BACKENDS or (backend == "mamba_ssm" and not _mamba_ssm_ready(x.device)):
        raise BackendUnavailableError(f"ssd_scan: backend {backend!r} is unavailable on device {x.device}; "
                                      f"expected one of {sorted(_BACKENDS)} (mamba_ssm needs CUDA and the package)")
    return _BACKENDS[backend](x, dt, A, B, C, D, initial_state, return_final_state, chunk_size)
