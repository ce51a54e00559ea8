"""Bidirectional selective scan: a forward and a reverse scan over the same positions, combined.

Each of u, delta, A, B, C, D, delta_bias is one tensor shared by both directions or a pair
(forward, reverse); shapes per direction are those of `selective_scan`. z (b, d, l) is shared and
gates each direction. combine: "add" -> out_f + out_r, "multiply" -> out_f * out_r,
"stack" -> (2, b, d, l). The reverse direction scans from the last position to the first.

Backends: ``triton`` is our fused kernel (one program runs both directions of its rows and sums them in
place: no flips, no per-direction buffers); ``mamba_ssm`` runs both directions on mamba-ssm's kernel, the
reverse one on flipped copies (it has no reverse mode); ``scan`` is two ``selective_scan`` passes, each
dispatched by that op's own table.  Under ``torch.compile`` the pass-based paths are ``mambaverse::selective_scan``
custom ops, and the fused kernel is the custom op ``torch.ops.mambaverse.bidirectional_scan``
(``mambaverse.ops.custom``).
"""
from __future__ import annotations

import torch

from ...errors import BackendUnavailableError, ShapeError
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import (REAL_DTYPES, TABLE, Backend, check_composite_backend, cuda_and, module_importable,
                        register_backend, triton_kernel)
from ..selective_scan import check_scan_inputs, selective_scan
from ..selective_scan.common import compute_dtype
from .triton import bidirectional_scan_triton

COMBINES = ("add", "multiply", "stack")
OP = "bidirectional_scan"


def _passes(*args, **kwargs):
    return bidirectional_scan_reference(*args, **kwargs, backend="auto")


def _mamba_ssm_passes(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, combine="add"):
    """Both directions on mamba-ssm's kernel; the reverse one scans flipped copies and flips its output back."""
    flip = lambda t: None if t is None else t.flip(-1)  # noqa: E731
    pairs = [_pair(n, v) for n, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                      ("delta_bias", delta_bias))]
    outs = []
    for direction in (0, 1):
        uu, dd, AA, BB, CC, DD, bb = (p[direction] for p in pairs)
        if direction:
            y = selective_scan(flip(uu), flip(dd), AA, flip(BB), flip(CC), DD, flip(z), bb, delta_softplus,
                               backend="mamba_ssm").flip(-1)
        else:
            y = selective_scan(uu, dd, AA, BB, CC, DD, z, bb, delta_softplus, backend="mamba_ssm")
        outs.append(y)
    return combine_directions(outs[0], outs[1], combine)


# auto's order on CUDA, by fwd+bwd speed at B=4 D=1536 L=8192 bf16 (benchmarks/kernels.py times all three in
# one run): mamba-ssm's pair with flips (10.5 ms on an H200) first; our row-layout fused kernel (one program per
# rows for both directions, about one plain pass's work twice, so expected near 2 x 8.2 ms) ahead of two
# selective_scan passes (two of our passes: 24.6 ms; with mamba-ssm installed, its forward plus our reverse).
register_backend(Backend(OP, "mamba_ssm", _mamba_ssm_passes, frozenset({"reverse", "grouped"}), REAL_DTYPES,
                         cuda_and(module_importable("mamba_ssm.ops.selective_scan_interface")), {"cuda": 0},
                         "mamba-ssm's kernel for both directions, the reverse one on flipped copies"))
register_backend(Backend(OP, "triton", bidirectional_scan_triton, frozenset({"reverse", "grouped"}), REAL_DTYPES,
                         triton_kernel("bidirectional_scan_triton"), {"cuda": 1},
                         "ours, fused: each program runs both directions and sums them in place (no flips)"))
register_backend(Backend(OP, "scan", _passes, frozenset({"reverse", "grouped"}), available=lambda device: True,
                         rank={"cuda": 2, "cpu": 0}, note="two selective_scan passes (any of its backends)"))


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

    ``backend``: auto (the fastest that serves the call, see the module's table: mamba-ssm's pair with flips,
    then our fused kernel, then two passes), triton (our fused kernel), mamba_ssm (its kernel for both
    directions), scan (two selective_scan passes, each dispatched by its own table), or any other
    selective_scan backend name (both passes on it).

    Raises:
        ShapeError: an argument breaks the contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    check_composite_backend(OP, backend)
    if combine not in COMBINES:
        raise ShapeError(f"bidirectional_scan: combine={combine!r}; expected one of {COMBINES}")
    pairs = [_pair(n, v) for n, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                       ("delta_bias", delta_bias))]
    for direction in (0, 1):
        uu, dd, AA, BB, CC, DD, bb = (p[direction] for p in pairs)
        check_scan_inputs(uu, dd, AA, BB, CC, DD, z, bb)
    u0 = pairs[0][0]
    if pairs[0][1].shape != u0.shape:
        raise ShapeError(f"bidirectional_scan: u has shape {tuple(u0.shape)} forward and {tuple(pairs[0][1].shape)} "
                         f"reverse; expected one shape for both directions")
    dtype = compute_dtype(*(t for p in pairs for t in p))
    needs = set()  # over both directions, B and C: what the fused paths must serve
    for AA, BB, CC in zip(pairs[2], pairs[3], pairs[4]):
        needs |= {"grouped"} if 4 in (BB.dim(), CC.dim()) else set()
        needs |= {"time_invariant"} if 2 in (BB.dim(), CC.dim()) else set()
        needs |= {"complex"} if AA.is_complex() else set()
    # the fused kernel takes per-direction B/C of one group count (or one of them ungrouped)
    groups = lambda t: t.shape[1] if t.dim() == 4 else 1  # noqa: E731
    uneven = [n for n, (f, r) in (("B", pairs[3]), ("C", pairs[4]))
              if f.dim() > 2 and r.dim() > 2 and 1 not in (groups(f), groups(r)) and groups(f) != groups(r)]
    if backend == "auto" and (needs - {"grouped"} or uneven):
        backend = "scan"  # only the passes serve these (each selective_scan dispatched by its own table)
    if backend == "triton" and uneven:
        raise BackendUnavailableError(f"bidirectional_scan: backend 'triton' takes {uneven[0]} with one group count for "
                                      f"both directions, got {tuple(pairs[3 if uneven[0] == 'B' else 4][0].shape)} and "
                                      f"{tuple(pairs[3 if uneven[0] == 'B' else 4][1].shape)}; use backend='scan'")
    if backend in ("auto", "triton", "mamba_ssm"):
        name = resolve_backend(OP, backend, u0.device, dtype if dtype == torch.float64 else u0.dtype, needs)
        if name == "triton":
            if compiling():  # one opaque node for torch.compile
                return _fused_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine, name)
            return bidirectional_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine)
        if name == "mamba_ssm":  # two selective_scan custom ops (and flips) under torch.compile
            return _mamba_ssm_passes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine)
    return bidirectional_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine, "auto" if backend == "scan" else backend)
