"""The selective scan: one public op, several backends, one oracle.

Shapes (they follow mamba-ssm's ``selective_scan_fn``):

========  ==========================================  =====================================
name      shape                                       meaning
========  ==========================================  =====================================
u         (b, d, l)                                   input sequence, d channels
delta     (b, d, l)                                   step size (before ``delta_bias``/softplus)
A         (d, n)                                      state matrix (diagonal, real, negative)
B, C      (b, n, l)  or grouped (b, g, n, l)          input/output projections; with g
                                                      groups, channel c uses group c // (d//g)
D         (d,)                                        skip connection, optional
z         (b, d, l)                                   gate: out = y * silu(z), optional
delta_bias (d,)                                       added to delta, optional
initial_state (b, d, n)                               state before the first step, optional
returns   out (b, d, l) [, final_state (b, d, n)]
========  ==========================================  =====================================

The recurrence, per channel c and state index k::

    dt_t   = softplus(delta_t + delta_bias)       (softplus only if delta_softplus)
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t    = sum_k C_t h_t + D u_t,   out_t = y_t * silu(z_t)

With ``reverse=True`` the recurrence runs from t = l-1 down to 0: ``initial_state`` enters at
the last position and ``final_state`` is the state after position 0. The state is always fp32;
``out`` has the dtype of ``u``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError, ShapeError

BACKENDS = ("naive", "torch", "triton", "mamba_ssm")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- validation
def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None):
    """Raise ShapeError with a one-line message if any argument breaks the documented contract."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ShapeError(f"selective_scan: {name} has dtype {t.dtype}, expected a floating dtype")
    if u.dim() != 3:
        raise ShapeError(f"selective_scan: u has shape {_shape(u)}, expected (b, d, l)")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise ShapeError(f"selective_scan: delta has shape {_shape(delta)}, expected {_shape(u)} like u")
    if A.dim() != 2 or A.shape[0] != d:
        raise ShapeError(f"selective_scan: A has shape {_shape(A)}, expected (d={d}, n)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            if t.shape != (b, n, l):
                raise ShapeError(f"selective_scan: {name} has shape {_shape(t)}, expected (b={b}, n={n}, l={l})")
        elif t.dim() == 4:
            g = t.shape[1]
            if t.shape != (b, g, n, l) or g == 0 or d % g:
                raise ShapeError(
                    f"selective_scan: {name} has shape {_shape(t)}, expected (b={b}, g, n={n}, l={l}) with d={d} divisible by g")
        else:
            raise ShapeError(f"selective_scan: {name} has shape {_shape(t)}, expected (b, n, l) or (b, g, n, l)")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ShapeError(f"selective_scan: B has {B.shape[1]} groups but C has {C.shape[1]}; expected the same")
    for name, t, want in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, (b, d, l)),
                          ("initial_state", initial_state, (b, d, n))):
        if t is not None and tuple(t.shape) != want:
            raise ShapeError(f"selective_scan: {name} has shape {_shape(t)}, expected {want}")
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None}
    if len(devices) > 1:
        raise ShapeError(f"selective_scan: inputs are on several devices {sorted(map(str, devices))}; expected one")


def _groups(t: torch.Tensor) -> torch.Tensor:
    """B or C as (b, g, n, l); shared projections become one group."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _prepare_delta(delta, delta_bias, delta_softplus):
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    return F.softplus(dt) if delta_softplus else dt


def _finish(y, u, D, z, out_dtype):
    """Add the D skip and the SiLU gate, both outside the recurrence (plain autograd)."""
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


# ----------------------------------------------------------------------------- naive oracle
def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_final_state=False, reverse=False):
    """Sequential fp32 recurrence, one step at a time. Slow and obviously correct: the oracle."""
    b, d, l = u.shape
    n = A.shape[1]
    dt = _prepare_delta(delta, delta_bias, delta_softplus)
    Bg, Cg = _groups(B).float(), _groups(C).float()
    Bx = Bg.repeat_interleave(d // Bg.shape[1], dim=1)  # (b, d, n, l)
    Cx = Cg.repeat_interleave(d // Cg.shape[1], dim=1)
    uf, Af = u.float(), A.float()
    h = u.new_zeros(b, d, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = [None] * l
    order = range(l - 1, -1, -1) if reverse else range(l)
    for t in order:
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bx[:, :, :, t]
        ys[t] = (h * Cx[:, :, :, t]).sum(-1)
    y = _finish(torch.stack(ys, dim=-1), u, D, z, u.dtype)
    return (y, h) if return_final_state else y


# ----------------------------------------------------------------------------- chunked torch
def _chunk_length(b, d, n, l, budget=1 << 18):
    """Steps per chunk so that one (T, b, d, n) fp32 temporary stays near `budget` elements (cache-sized)."""
    return int(max(8, min(l, budget // max(1, b * d * n))))


class _ChunkedScan(torch.autograd.Function):
    """h_t = dA_t * h_{t-1} + dBu_t, y_t = <C_t, h_t>, in chunks of T steps, forward in time.

    Works on time-major tensors: dt, u (l, b, g, e) with e = d // g channels per group; B, C (l, b, g, n);
    A (g, e, n); h0 (b, g, e, n). Only the inputs and one state per chunk are kept for backward, which
    recomputes each chunk's states, so memory is bounded by the chunk rather than by l * d * n.
    """

    @staticmethod
    def forward(ctx, dt, u, A, B, C, h0, T):
        l = dt.shape[0]
        h = h0
        ys, starts = [], []
        for t0 in range(0, l, T):
            t1 = min(l, t0 + T)
            starts.append(h)
            H = _chunk_states(dt[t0:t1], u[t0:t1], A, B[t0:t1], h)
            ys.append((H * C[t0:t1, :, :, None, :]).sum(-1))
            h = H[-1].clone()
        ctx.save_for_backward(dt, u, A, B, C, torch.stack(starts))
        ctx.T = T
        return torch.cat(ys), h

    @staticmethod
    def backward(ctx, dy, dh_last):
        dt, u, A, B, C, starts = ctx.saved_tensors
        T, l = ctx.T, dt.shape[0]
        ddt, du = torch.empty_like(dt), torch.empty_like(u)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = dh_last.float() if dh_last is not None else torch.zeros_like(starts[0])
        dy = dy.float() if dy is not None else torch.zeros_like(u)
        chunk_starts = list(range(0, l, T))
        for i in range(len(chunk_starts) - 1, -1, -1):
            t0 = chunk_starts[i]
            t1 = min(l, t0 + T)
            dt_c, u_c, B_c, C_c, dy_c = dt[t0:t1], u[t0:t1], B[t0:t1], C[t0:t1], dy[t0:t1]
            dA_c = torch.exp(dt_c[..., None] * A)  # (t, b, g, e, n)
            H = _chunk_states(dt_c, u_c, A, B_c, starts[i], decay=dA_c)
            # G_t = dL/dh_t, accumulated backwards in time through h_{t+1} = dA_{t+1} h_t + ...
            G = dy_c[..., None] * C_c[:, :, :, None, :]
            G[-1] += carry
            G_steps, decay_steps = G.unbind(0), dA_c.unbind(0)  # views made once, not per step
            for t in range(G.shape[0] - 2, -1, -1):
                G_steps[t].addcmul_(decay_steps[t + 1], G_steps[t + 1])
            carry = decay_steps[0] * G_steps[0]
            dtu = dt_c * u_c
            # dA_t * h_{t-1} = h_t - dBu_t: no shifted copy of the states needed
            X = G * (H - dtu[..., None] * B_c[:, :, :, None, :])  # dL/d(dt*A), elementwise
            GB = (G * B_c[:, :, :, None, :]).sum(-1)
            ddt[t0:t1] = (X * A).sum(-1) + GB * u_c
            du[t0:t1] = GB * dt_c
            dA += (X * dt_c[..., None]).sum((0, 1))
            dB[t0:t1] = (G * dtu[..., None]).sum(3)
            dC[t0:t1] = (H * dy_c[..., None]).sum(3)
        return ddt, du, dA, dB, dC, carry, None


def _chunk_states(dt, u, A, B, h, decay=None):
    """All states of one chunk, (t, b, g, e, n): one fused multiply-add per step, in place."""
    if decay is None:
        decay = torch.exp(dt[..., None] * A)
    H = (dt * u)[..., None] * B[:, :, :, None, :]
    steps, decay_steps = H.unbind(0), decay.unbind(0)  # views made once, not per step
    steps[0].addcmul_(decay_steps[0], h)
    for t in range(1, H.shape[0]):
        steps[t].addcmul_(decay_steps[t], steps[t - 1])
    return H


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_final_state=False, reverse=False, chunk_size=None):
    """Chunked scan in pure PyTorch with a hand-written backward; any device, state in fp32."""
    b, d, l = u.shape
    n = A.shape[1]
    Bg, Cg = _groups(B), _groups(C)
    g = max(Bg.shape[1], Cg.shape[1])  # a shared B or C broadcasts over the other's groups
    Bg, Cg = Bg.expand(b, g, n, l), Cg.expand(b, g, n, l)
    e = d // g
    dt = _prepare_delta(delta, delta_bias, delta_softplus)
    uf = u.float()
    if reverse:  # the CPU path flips copies of (b, d, l) tensors; cheap next to the (l, d, n) work
        dt, uf, Bg, Cg = dt.flip(-1), uf.flip(-1), Bg.flip(-1), Cg.flip(-1)
    # time-major, grouped layout: (l, b, g, e) and (l, b, g, n), so each step is one contiguous slice
    dt_t = dt.reshape(b, g, e, l).permute(3, 0, 1, 2).contiguous()
    u_t = uf.reshape(b, g, e, l).permute(3, 0, 1, 2).contiguous()
    B_t = Bg.float().permute(3, 0, 1, 2).contiguous()
    C_t = Cg.float().permute(3, 0, 1, 2).contiguous()
    A_g = A.float().reshape(g, e, n)
    h0 = (u.new_zeros(b, d, n, dtype=torch.float32) if initial_state is None else initial_state.float())
    T = chunk_size or _chunk_length(b, d, n, l)
    y_t, h_last = _ChunkedScan.apply(dt_t, u_t, A_g, B_t, C_t, h0.reshape(b, g, e, n), T)
    y = y_t.permute(1, 2, 3, 0).reshape(b, d, l)
    if reverse:
        y = y.flip(-1)
    out = _finish(y, u, D, z, u.dtype)
    return (out, h_last.reshape(b, d, n)) if return_final_state else out


# ----------------------------------------------------------------------------- mamba-ssm
def _mamba_ssm_available() -> bool:
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception:
        return False
    return True


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             initial_state=None, return_final_state=False, reverse=False):
    """mamba-ssm's CUDA kernel. It has no initial state: with one, this falls back to our Triton kernel."""
    if initial_state is not None:
        return _BACKEND_FUNCS["triton"](u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                        initial_state, return_final_state, reverse)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def flip(t):
        return t.flip(-1) if (reverse and t is not None) else t

    res = selective_scan_fn(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias,
                            delta_softplus, return_last_state=return_final_state)
    if return_final_state:
        out, last = res
        return flip(out), last.float()
    return flip(res)


def _triton(*args, **kwargs):
    from ..kernels import selective_scan_triton  # only the ops layer imports kernels

    return selective_scan_triton(*args, **kwargs)


def kernel_available(name: str, device: torch.device) -> bool:
    """True if mambaverse.kernels provides the Triton kernel `name` and Triton can run on `device`."""
    try:
        from .. import kernels
    except ImportError:
        return False
    available = getattr(kernels, "triton_available", None)
    return hasattr(kernels, name) and available is not None and available(device)


def _triton_available(device: torch.device) -> bool:
    return kernel_available("selective_scan_triton", device)


_BACKEND_FUNCS = {
    "naive": selective_scan_naive,
    "torch": selective_scan_torch,
    "triton": _triton,
    "mamba_ssm": selective_scan_mamba_ssm,
}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device`, best first.

    On CUDA, mamba-ssm (when installed) ranks above our Triton kernels because it is measured faster
    today (benchmarks/results/kernels_h100.md); calls with an initial_state still reach Triton, since
    mamba-ssm's kernel has none. Without mamba-ssm -- the install we aim at -- auto picks Triton."""
    device = torch.device(device)
    found = []
    if device.type == "cuda" and _mamba_ssm_available():
        found.append("mamba_ssm")
    if device.type == "cuda" and _triton_available(device):
        found.append("triton")
    found += ["torch", "naive"]
    return found


def use_fused_kernel(name: str, device: torch.device, backend: str) -> bool:
    """Whether a composite op (bidirectional, cross-scan) should call its fused Triton kernel `name`:
    when asked for explicitly, or under auto when mamba-ssm's faster single-direction kernel is absent."""
    if backend == "triton":
        if not kernel_available(name, device):
            raise BackendUnavailableError(f"{name}: backend 'triton' is unavailable on device {device}")
        return True
    return backend == "auto" and kernel_available(name, device) and not _mamba_ssm_available()


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS + ("auto",):
        raise BackendUnavailableError(
            f"selective_scan: unknown backend {backend!r}; expected one of {('auto',) + BACKENDS}")
    usable = available_backends(device)
    if backend == "auto":
        return usable[0]
    if backend not in usable:
        raise BackendUnavailableError(
            f"selective_scan: backend {backend!r} is unavailable on device {device}; available here: {usable}")
    return backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False, reverse=False, backend="auto"):
    """Selective scan of Mamba-1; see the module docstring for shapes. ``backend``: auto, naive, torch,
    triton or mamba_ssm. ``auto`` picks mamba_ssm on CUDA when installed, else triton; torch elsewhere."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = resolve_backend(backend, u.device)
    return _BACKEND_FUNCS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                initial_state, return_final_state, reverse)
