"""Argument checks and the pieces every selective-scan backend shares (delta preparation, the D skip and
the z gate, B/C layouts)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ShapeError

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, op="selective_scan"):
    """Raise ShapeError with a one-line message if any argument breaks the documented contract."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        allowed = _FLOAT_DTYPES + (_COMPLEX_DTYPES if name in ("A", "B", "C") else ())
        if t.dtype not in allowed:
            raise ShapeError(f"{op}: {name} has dtype {t.dtype}, expected a floating dtype"
                             + (" (or complex)" if name in ("A", "B", "C") else ""))
    for name, t in (("D", D), ("z", z), ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dtype not in _FLOAT_DTYPES + _COMPLEX_DTYPES
                              or (t.is_complex() and name != "initial_state")):
            raise ShapeError(f"{op}: {name} must be a real floating tensor or None, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
    if u.dim() != 3:
        raise ShapeError(f"{op}: u has shape {shape_str(u)}, expected (b, d, l)")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise ShapeError(f"{op}: delta has shape {shape_str(delta)}, expected {shape_str(u)} like u")
    if A.dim() != 2 or A.shape[0] != d:
        raise ShapeError(f"{op}: A has shape {shape_str(A)}, expected (d={d}, n)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if A.is_complex() and t.is_complex() is False and t.dim() in (3, 4):
            want_l = 2 * l  # mamba-ssm's form: a complex B/C as real (re, im) pairs interleaved along l
        else:
            want_l = l
        if t.dim() == 2:
            if tuple(t.shape) != (d, n):
                raise ShapeError(f"{op}: {name} has shape {shape_str(t)}, expected time-invariant (d={d}, n={n})")
        elif t.dim() == 3:
            if tuple(t.shape) != (b, n, want_l):
                raise ShapeError(f"{op}: {name} has shape {shape_str(t)}, expected (b={b}, n={n}, l={want_l})")
        elif t.dim() == 4:
            g = t.shape[1]
            if tuple(t.shape) != (b, g, n, want_l) or g == 0 or d % g:
                raise ShapeError(
                    f"{op}: {name} has shape {shape_str(t)}, expected (b={b}, g, n={n}, l={want_l}) with d={d} divisible by g")
        else:
            raise ShapeError(f"{op}: {name} has shape {shape_str(t)}, expected (d, n), (b, n, l) or (b, g, n, l)")
        if t.is_complex() and not A.is_complex():
            raise ShapeError(f"{op}: {name} is complex but A is real; expected a complex A (d, n) with complex B/C")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ShapeError(f"{op}: B has {B.shape[1]} groups but C has {C.shape[1]}; expected the same")
    for name, t, want in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, (b, d, l)),
                          ("initial_state", initial_state, (b, d, n))):
        if t is not None and tuple(t.shape) != want:
            raise ShapeError(f"{op}: {name} has shape {shape_str(t)}, expected {want}")
    if initial_state is not None and initial_state.is_complex() != A.is_complex():
        raise ShapeError(f"{op}: initial_state is {'complex' if initial_state.is_complex() else 'real'} but A is "
                         f"{'complex' if A.is_complex() else 'real'}; expected the state to match A")
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None}
    if len(devices) > 1:
        raise ShapeError(f"{op}: inputs are on several devices {sorted(map(str, devices))}; expected one")


def complex_from_interleaved(t: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """mamba-ssm passes a time-varying complex B/C as a real tensor with (re, im) interleaved along l."""
    if A.is_complex() and not t.is_complex() and t.dim() in (3, 4):
        return torch.view_as_complex(t.float().unflatten(-1, (-1, 2)).contiguous())
    return t


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any input is float64 (or complex128), else float32: the state is never below fp32."""
    wide = any(t is not None and t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.float64 if wide else torch.float32


def complex_of(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


def prepare_delta(delta, delta_bias, delta_softplus, dtype):
    """dt = softplus(delta + delta_bias) (each part optional), in ``dtype``."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def finish(y, u, D, z, out_dtype):
    """2 Re(y) for a complex scan (the state and its conjugate, as in S4D and mamba-ssm), then the D skip and
    the SiLU gate, both outside the recurrence (plain autograd)."""
    if y.is_complex():
        y = 2 * y.real
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def per_channel(t: torch.Tensor, b: int, d: int, l: int) -> torch.Tensor:
    """B or C as a (b, d, n, l) view, one row per channel: groups are repeated, a time-invariant (d, n) is
    broadcast with stride 0 over b and l (no copy)."""
    if t.dim() == 2:
        return t[None, :, :, None].expand(b, d, t.shape[1], l)
    if t.dim() == 3:
        return t[:, None].expand(b, d, t.shape[1], l)
    return t.repeat_interleave(d // t.shape[1], dim=1)


def flag_features(u, A, B, C, initial_state, return_final_state, reverse, grad) -> set[str]:
    """The capabilities a selective-scan call needs (keys of ``dispatch.FEATURES``)."""
    needs = set()
    if initial_state is not None:
        needs.add("initial_state")
    if return_final_state:
        needs.add("final_state")
        if grad:
            needs.add("final_state_grad")
    if reverse:
        needs.add("reverse")
    if B.dim() == 4 or C.dim() == 4:
        needs.add("grouped")
    if B.dim() == 2 or C.dim() == 2:
        needs.add("time_invariant")
    if A.is_complex():
        needs.add("complex")
    return needs
