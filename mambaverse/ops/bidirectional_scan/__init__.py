"""Bidirectional selective scan: a forward and a reverse scan over the same positions, combined.

Each of u, delta, A, B, C, D, delta_bias is one tensor shared by both directions or a pair
(forward, reverse); shapes per direction are those of `selective_scan`. z (b, d, l) is shared and
gates each direction. combine: "add" -> out_f + out_r, "multiply" -> out_f * out_r,
"stack" -> (2, b, d, l). The reverse direction scans from the last position to the first.

Under ``torch.compile`` the two-pass path is two ``mambaverse::selective_scan`` custom ops, and the fused
kernel is the custom op ``torch.ops.mambaverse.bidirectional_scan`` (``mambaverse.ops.custom``).
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import REAL_DTYPES, TABLE, Backend, register_backend, triton_kernel
from ..selective_scan import check_scan_inputs, selective_scan
from ..selective_scan.common import compute_dtype
from .triton import bidirectional_scan_triton

COMBINES = ("add", "multiply", "stack")
OP = "bidirectional_scan"


def _passes(*args, **kwargs):
    return bidirectional_scan_reference(*args, **kwargs, backend="auto")


# "scan": two selective_scan calls, each dispatched by selective_scan's own table. The fused kernel is
# measured about 2x slower than two of our own passes (benchmarks/results/kernels_h200.md), so auto never
# picks it; backend="triton" asks for it explicitly.
register_backend(Backend(OP, "scan", _passes, frozenset({"reverse", "grouped"}), available=lambda device: True,
                         rank={"cuda": 0, "cpu": 0}, note="two selective_scan passes (any of its backends)"))
register_backend(Backend(OP, "triton", bidirectional_scan_triton, frozenset({"reverse", "grouped"}), REAL_DTYPES,
                         triton_kernel("bidirectional_scan_triton"), {},
                         "fused: both directions in one launch, no flips; slower than two passes today"))


def _pair(name, value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ShapeError(f"bidirectional_scan: {name} is a sequence of {len(value)}; expected one tensor or a (forward, reverse) pair")
        return tuple(value)
    return value, value


def combine_directions(out_f, out_r, combine):
    if combine == "add":
        return out_f + out_r
    if combine == "multiply":
        return out_f * out_r
    return torch.stack([out_f, out_r])


def bidirectional_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                 combine="add", backend="auto"):
    """Two selective_scan passes (forward, then reverse) on ``backend``, combined: the unfused path."""
    pairs = [_pair(n, v) for n, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                      ("delta_bias", delta_bias))]
    outs = []
    for direction in (0, 1):
        uu, dd, AA, BB, CC, DD, bb = (p[direction] for p in pairs)
        outs.append(selective_scan(uu, dd, AA, BB, CC, DD, z, bb, delta_softplus, reverse=bool(direction),
                                   backend=backend))
    return combine_directions(outs[0], outs[1], combine)


# The fused op's schema: each argument that may be a (forward, reverse) pair is passed as two tensors, and
# ``paired`` says which are pairs; a shared tensor is passed once (its second slot None), so the kernel reads it
# for both directions through a zero direction stride and its gradient sums both.
_PAIRABLE = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _unflatten(kw):
    return {n: ((kw[n + "_f"], kw[n + "_r"]) if kw["paired"][i] else kw[n + "_f"]) for i, n in enumerate(_PAIRABLE)}


def _outputs(**kw):
    """(shape, dtype) of the combined output: u's (b, d, l), or (2, b, d, l) for combine="stack"."""
    u = kw["u_f"]
    return ((((2,) if kw["combine"] == "stack" else ()) + tuple(u.shape), u.dtype),)


def _impl(**kw):
    v = _unflatten(kw)
    return TABLE[OP][kw["backend"]].fn(v["u"], v["delta"], v["A"], v["B"], v["C"], v["D"], kw["z"], v["delta_bias"],
                                       kw["delta_softplus"], kw["combine"])


#: ``mambaverse::bidirectional_scan`` (the fused kernel's path); see ``mambaverse.ops.custom``.
bidirectional_scan_op = DifferentiableOp(
    OP, [("Tensor?", n + side) for n in _PAIRABLE for side in ("_f", "_r")]
    + [("Tensor?", "z"), ("bool", "delta_softplus"), ("str", "combine"), ("bool[]", "paired"), ("str", "backend")],
    1, _outputs, _impl)


def _fused_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine, name):
    flat, paired = [], []
    for value in (u, delta, A, B, C, D, delta_bias):
        pair = isinstance(value, (tuple, list))
        paired.append(pair)
        flat += list(value) if pair else [value, None]
    return bidirectional_scan_op(*flat, z, bool(delta_softplus), combine, paired, name)[0]


def bidirectional_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       combine="add", backend="auto"):
    """Both directions of a selective scan, combined (Caduceus' BiMamba, Vim); see the module docstring.

    ``backend``: auto (two selective_scan passes, each dispatched by its own capability table), triton (the
    fused kernel), or any selective_scan backend name (both passes on it).

    Raises:
        ShapeError: an argument breaks the contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    if combine not in COMBINES:
        raise ShapeError(f"bidirectional_scan: combine={combine!r}; expected one of {COMBINES}")
    pairs = [_pair(n, v) for n, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                       ("delta_bias", delta_bias))]
    for direction in (0, 1):
        uu, dd, AA, BB, CC, DD, bb = (p[direction] for p in pairs)
        check_scan_inputs(uu, dd, AA, BB, CC, DD, z, bb)
    u0, B0 = pairs[0][0], pairs[3][0]
    dtype = compute_dtype(*(t for p in pairs for t in p))
    needs = {"grouped"} if B0.dim() == 4 else set()
    if backend in ("auto", "triton"):
        name = resolve_backend(OP, backend, u0.device, dtype if dtype == torch.float64 else u0.dtype, needs)
        if name == "triton":
            if compiling():  # one opaque node for torch.compile
                return _fused_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine, name)
            return bidirectional_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine)
    return bidirectional_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine, "auto" if backend == "scan" else backend)
