"""The chunked pure-PyTorch scan with a hand-written backward: any device, fp32 state (float64 for float64
inputs, complex for a complex A). Memory is bounded by the chunk: backward keeps one state per chunk and
recomputes the chunk's states from it."""
from __future__ import annotations

import torch

from .common import complex_of, compute_dtype, finish, prepare_delta


def chunk_size_for(b, d, n, l, budget=1 << 18):
    """Steps per chunk so that one (T, b, d, n) temporary stays near ``budget`` elements (cache-sized)."""
    return int(max(8, min(max(l, 1), budget // max(1, b * d * n))))


def _steps(t, t0, t1):
    """Rows t0:t1 of a time-major tensor; a time-invariant one (time axis of size 1) broadcasts as it is."""
    return t if t.shape[0] == 1 else t[t0:t1]


def _reduce_like(grad, shape):
    """Sum ``grad`` over the axes that ``shape`` broadcast (size 1 there), keeping them."""
    dims = tuple(i for i, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1)
    return grad.sum(dims, keepdim=True) if dims else grad


class _ChunkedScan(torch.autograd.Function):
    """h_t = dA_t * h_{t-1} + dt_t u_t B_t, y_t = <C_t, h_t>, in chunks of T steps, forward in time.

    Time-major tensors: dt, u (l, b, g, e) with e = d // g channels per group; B, C (l, b, g|1, n), or
    (1, 1, g, n) when time-invariant; A (g, e, n); h0 (b, g, e, n). For complex A/B/C the backward applies
    the conjugates of the (holomorphic) step's derivatives, PyTorch's convention for complex autograd.
    """

    @staticmethod
    def forward(ctx, dt, u, A, B, C, h0, T):
        l = dt.shape[0]
        h = h0
        ys, starts = [], []
        for t0 in range(0, l, T):
            t1 = min(l, t0 + T)
            starts.append(h)
            H = _chunk_states(dt[t0:t1], u[t0:t1], A, _steps(B, t0, t1), h)
            ys.append((H * _steps(C, t0, t1)[:, :, :, None, :]).sum(-1))
            h = H[-1].clone()
        ctx.save_for_backward(dt, u, A, B, C, torch.stack(starts) if starts else h0[None])
        ctx.T = T
        y = torch.cat(ys) if ys else dt.new_zeros(dt.shape, dtype=h0.dtype)
        return y, h

    @staticmethod
    def backward(ctx, dy, dh_last):
        dt, u, A, B, C, starts = ctx.saved_tensors
        T, l = ctx.T, dt.shape[0]
        cplx = A.is_complex()
        ddt, du = torch.empty_like(dt), torch.empty_like(u)
        dB = torch.zeros_like(B) if B.shape[0] == 1 else torch.empty_like(B)
        dC = torch.zeros_like(C) if C.shape[0] == 1 else torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = dh_last.to(starts.dtype) if dh_last is not None else torch.zeros_like(starts[0])
        dy = dy.to(starts.dtype) if dy is not None else torch.zeros(dt.shape, dtype=starts.dtype, device=dt.device)
        chunk_starts = list(range(0, l, T))
        for i in range(len(chunk_starts) - 1, -1, -1):
            t0 = chunk_starts[i]
            t1 = min(l, t0 + T)
            dt_c, u_c, dy_c = dt[t0:t1], u[t0:t1], dy[t0:t1]
            B_c, C_c = _steps(B, t0, t1)[:, :, :, None, :], _steps(C, t0, t1)[:, :, :, None, :]
            dA_c = torch.exp(dt_c[..., None] * A)  # (t, b, g, e, n)
            H = _chunk_states(dt_c, u_c, A, _steps(B, t0, t1), starts[i], decay=dA_c)
            back = dA_c.conj().resolve_conj() if cplx else dA_c  # the adjoint runs on the conjugate decay
            # G_t = dL/dh_t, accumulated backwards in time through h_{t+1} = dA_{t+1} h_t + ...
            G = dy_c[..., None] * C_c.conj()
            G[-1] += carry
            G_steps, back_steps = G.unbind(0), back.unbind(0)  # views made once, not per step
            for t in range(G.shape[0] - 2, -1, -1):
                G_steps[t].addcmul_(back_steps[t + 1], G_steps[t + 1])
            carry = back_steps[0] * G_steps[0]
            dtu = dt_c * u_c
            # dA_t * h_{t-1} = h_t - dBu_t: no shifted copy of the states needed
            X = G * (H - dtu[..., None] * B_c).conj()  # dL/d(dt*A), elementwise
            GB = (G * B_c.conj()).sum(-1)
            ddt[t0:t1] = ((X * A.conj()).sum(-1) + GB * u_c).real
            du[t0:t1] = (GB * dt_c).real
            dA += (X * dt_c[..., None]).sum((0, 1))
            gB = _reduce_like((G * dtu[..., None]).sum(3), B.shape if B.shape[0] == 1 else (t1 - t0,) + B.shape[1:])
            gC = _reduce_like((H.conj() * dy_c[..., None]).sum(3), C.shape if C.shape[0] == 1 else (t1 - t0,) + C.shape[1:])
            if B.shape[0] == 1:
                dB += gB
            else:
                dB[t0:t1] = gB
            if C.shape[0] == 1:
                dC += gC
            else:
                dC[t0:t1] = gC
        return ddt, du, dA, dB, dC, carry, None


def _chunk_states(dt, u, A, B, h, decay=None):
    """All states of one chunk, (t, b, g, e, n): one fused multiply-add per step, in place."""
    if decay is None:
        decay = torch.exp(dt[..., None] * A)
    H = (dt * u)[..., None] * B[:, :, :, None, :]  # B broadcasts over channels (and steps, if invariant)
    steps, decay_steps = H.unbind(0), decay.unbind(0)  # views made once, not per step
    steps[0].addcmul_(decay_steps[0], h)
    for t in range(1, H.shape[0]):
        steps[t].addcmul_(decay_steps[t], steps[t - 1])
    return H


def _time_major(t, b, g, n, l, dtype, reverse):
    """B or C in the kernel's layout: (l, b, g or 1, n), or (1, 1, g, n) when time-invariant."""
    if t.dim() == 2:  # (d, n) with g == d: one row per channel, the same at every step
        return t.to(dtype).reshape(1, 1, g, n)
    t4 = t.unsqueeze(1) if t.dim() == 3 else t
    if t4.shape[1] not in (1, g):  # fewer groups than the partner's: repeat to match
        t4 = t4.repeat_interleave(g // t4.shape[1], dim=1)
    if reverse:
        t4 = t4.flip(-1)
    return t4.to(dtype).permute(3, 0, 1, 2).contiguous()


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_final_state=False, reverse=False, chunk_size=None):
    """Same contract as ``mambaverse.ops.selective_scan``; ``chunk_size`` steps per chunk (default: sized to
    stay in cache)."""
    b, d, l = u.shape
    n = A.shape[1]
    real = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    state = complex_of(real) if A.is_complex() else real
    if B.dim() == 2 or C.dim() == 2:
        g = d  # per-channel B or C
    else:
        g = max(1 if t.dim() == 3 else t.shape[1] for t in (B, C))
    e = d // g
    dt = prepare_delta(delta, delta_bias, delta_softplus, real)
    uf = u.to(real)
    if reverse:  # flips copies of (b, d, l) tensors; cheap next to the (l, d, n) work
        dt, uf = dt.flip(-1), uf.flip(-1)
    # time-major, grouped layout: (l, b, g, e), so each step is one contiguous slice
    dt_t = dt.reshape(b, g, e, l).permute(3, 0, 1, 2).contiguous()
    u_t = uf.reshape(b, g, e, l).permute(3, 0, 1, 2).contiguous()
    cdtype = state if A.is_complex() else real
    B_t = _time_major(B, b, g, n, l, cdtype, reverse)
    C_t = _time_major(C, b, g, n, l, cdtype, reverse)
    A_g = A.to(state).reshape(g, e, n)
    h0 = u.new_zeros(b, d, n, dtype=state) if initial_state is None else initial_state.to(state)
    T = chunk_size or chunk_size_for(b, d, n, l)
    y_t, h_last = _ChunkedScan.apply(dt_t, u_t, A_g, B_t, C_t, h0.reshape(b, g, e, n), T)
    y = y_t.permute(1, 2, 3, 0).reshape(b, d, l)
    if reverse:
        y = y.flip(-1)
    out = finish(y, u, D, z, u.dtype)
    return (out, h_last.reshape(b, d, n)) if return_final_state else out
