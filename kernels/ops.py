"""Public Triton entry points with the signatures of the mambaverse ops (minus ``backend``).

Kernels import nothing of the core: bad arguments raise plain ValueError / RuntimeError, which the ops
layer (the only caller) has already ruled out or turns into MambaverseError."""
from __future__ import annotations

import os

import torch

from ._common import _needs_grad
from ._rows import RowsFn, ScanSpec


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"{name}: the Triton kernels need CUDA tensors (got device {t.device}); use backend='torch' or set TRITON_INTERPRET=1")


def _grouped(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 3 else t


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, return_final_state=False, reverse=False):
    """Mamba-1 selective scan on Triton (the row-layout kernels of ``_rows.py``); same contract as
    ``mambaverse.ops.selective_scan``: u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or (b, g, n, l);
    D, delta_bias (d,); initial_state (b, d, n). Returns out (b, d, l) in u's dtype [, final state (b, d, n)
    fp32]."""
    check_device("selective_scan_triton", u)
    h0 = None if initial_state is None else initial_state.float()
    need_ck = _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    spec = ScanSpec(rev=reverse, softplus=delta_softplus, want_final=return_final_state, need_ck=need_ck)
    out, hT = RowsFn.apply(spec, u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias, h0)
    return (out, hT) if return_final_state else out


# ----------------------------------------------------------------------------- bidirectional
def _pack(name, value, like=None):
    """A shared tensor stays as it is (direction stride 0); a (forward, reverse) pair is stacked."""
    if not isinstance(value, (tuple, list)):
        return value
    if len(value) != 2:
        raise ValueError(f"bidirectional_scan_triton: {name} is a sequence of {len(value)}; expected one tensor or a pair")
    f, r = value
    if f is None and r is None:
        return None
    if f is r:
        return f
    if f is None or r is None:  # one direction without D / delta_bias: zeros for it
        t = r if f is None else f
        f = torch.zeros_like(t) if f is None else f
        r = torch.zeros_like(t) if r is None else r
    if f.shape != r.shape:
        if f.shape[:-3] == r.shape[:-3] and f.dim() == 4 and (f.shape[1] == 1 or r.shape[1] == 1):
            g = max(f.shape[1], r.shape[1])
            f, r = f.expand(-1, g, -1, -1), r.expand(-1, g, -1, -1)
        else:
            raise ValueError(f"bidirectional_scan_triton: {name} has shapes {tuple(f.shape)} and {tuple(r.shape)} for the two directions; expected equal shapes")
    return torch.stack([f, r])


def _pair_grouped(value):
    if isinstance(value, (tuple, list)):
        return tuple(None if t is None else _grouped(t) for t in value)
    return _grouped(value)


def bidirectional_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              combine="add"):
    """Forward and reverse selective scans fused in one kernel: each program runs both directions of its
    (channel block, batch row), the second walking the sequence backwards by index (no flips).

    Shared arguments are read by both directions through a zero direction stride (no copies); a
    (forward, reverse) pair is stacked. combine="add" sums the directions in the output buffer inside the
    kernel, and the gradients of shared u, delta, z in theirs (no per-direction buffers or adds);
    "multiply" and "stack" get both outputs stacked, (2, b, d, l)."""
    if combine not in ("add", "multiply", "stack"):
        raise ValueError(f"bidirectional_scan_triton: combine={combine!r}; expected 'add', 'multiply' or 'stack'")
    u0 = u[0] if isinstance(u, (tuple, list)) else u
    check_device("bidirectional_scan_triton", u0)
    args = [_pack("u", u), _pack("delta", delta), _pack("A", A), _pack("B", _pair_grouped(B)),
            _pack("C", _pair_grouped(C)), _pack("D", D), z, _pack("delta_bias", delta_bias)]
    flat = [t for v in (u, delta, A, B, C, D, delta_bias) for t in (v if isinstance(v, (tuple, list)) else (v,))]
    spec = ScanSpec(2, 0, softplus=delta_softplus, need_ck=_needs_grad(z, *flat), acc_out=combine == "add")
    out, _ = RowsFn.apply(spec, *args, None)
    if combine == "multiply":
        return out[0] * out[1]
    return out


# ----------------------------------------------------------------------------- cross-scan
def cross_selective_scan_triton(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """VMamba's 4-route scan fused in one kernel: each program runs the 4 routes of its (channel block, batch
    row) one after the other. x is read through each route's pixel order by index arithmetic (no
    cross_scan copies); delta/B/C are read in route order; each route adds its output on its pixels in one
    (b, c, h*w) buffer, and its x gradient likewise (no cross_merge)."""
    check_device("cross_selective_scan_triton", x)
    if x.dim() != 4:
        raise ValueError(f"cross_selective_scan_triton: x has shape {tuple(x.shape)}, expected (b, c, h, w)")
    b, c, h, w = x.shape
    L = h * w
    n = A.shape[-1]
    if tuple(delta.shape) != (b, 4, c, L):
        raise ValueError(f"cross_selective_scan_triton: delta has shape {tuple(delta.shape)}, expected {(b, 4, c, L)}")
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, 4, n, L):
            raise ValueError(f"cross_selective_scan_triton: {name} has shape {tuple(t.shape)}, expected {(b, 4, n, L)}")
    if tuple(A.shape) != (4 * c, n):
        raise ValueError(f"cross_selective_scan_triton: A has shape {tuple(A.shape)}, expected {(4 * c, n)}")
    u = x.reshape(b, c, L)
    spec = ScanSpec(4, 1, H=h, W=w, softplus=delta_softplus, need_ck=_needs_grad(x, delta, A, B, C, D, delta_bias),
                    acc_out=True)
    out, _ = RowsFn.apply(spec, u, delta.permute(1, 0, 2, 3), A.reshape(4, c, n),
                          B.permute(1, 0, 2, 3).unsqueeze(2), C.permute(1, 0, 2, 3).unsqueeze(2),
                          None if D is None else D.reshape(4, c), None,
                          None if delta_bias is None else delta_bias.reshape(4, c), None)
    return out.reshape(b, c, h, w)
