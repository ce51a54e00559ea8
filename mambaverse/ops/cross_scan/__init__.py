"""VMamba's 4-route cross-scan of an image, and the merge that undoes it.

Routes, for x (b, c, h, w) and L = h*w:
  0: row-major (left to right, top to bottom)      1: column-major (top to bottom, left to right)
  2: route 0 reversed                              3: route 1 reversed
cross_scan(x) -> (b, 4, c, L); cross_merge(y, h, w) maps each route back to its pixel and sums the
four, so cross_merge(cross_scan(x), h, w) == 4 * x.

Under ``torch.compile`` the unfused path is plain tensor code around a ``mambaverse::selective_scan`` custom op,
and the fused kernel is the custom op ``torch.ops.mambaverse.cross_selective_scan`` (``mambaverse.ops.custom``).
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import REAL_DTYPES, TABLE, Backend, check_composite_backend, register_backend, triton_kernel
from ..selective_scan import check_scan_inputs, selective_scan
from ..selective_scan.common import compute_dtype
from .triton import cross_selective_scan_triton

ROUTES = 4
OP = "cross_selective_scan"


def _passes(*args, **kwargs):
    return cross_selective_scan_reference(*args, **kwargs, backend="auto")


# "scan": cross_scan copies, one selective_scan over the 4 routes' channels (dispatched by its own table, so
# mamba-ssm's kernel when installed), cross_merge. "triton": our row-layout kernel running the 4 routes in each
# program, reading x by index arithmetic (no copies). auto keeps "scan" first until benchmarks/kernels.py --fused
# measures the fused kernel faster: the fused program count is a quarter of the unfused pass's (4c channels),
# and the column-major routes gather x.
register_backend(Backend(OP, "scan", _passes, frozenset(), available=lambda device: True, rank={"cuda": 0, "cpu": 0},
                         note="cross_scan + one selective_scan pass + cross_merge"))
register_backend(Backend(OP, "triton", cross_selective_scan_triton, frozenset(), REAL_DTYPES,
                         triton_kernel("cross_selective_scan_triton"), {"cuda": 1},
                         "fused: the 4 routes in one launch, no copies"))


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """x (b, c, h, w) -> (b, 4, c, h*w), the four routes of the module docstring."""
    if x.dim() != 4:
        raise ShapeError(f"cross_scan: x has shape {tuple(x.shape)}, expected (b, c, h, w)")
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h * w)
    cols = x.transpose(2, 3).reshape(b, c, h * w)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """y (b, 4, c, h*w) -> (b, c, h, w): each route back to its pixels, summed."""
    if y.dim() != 4 or y.shape[1] != ROUTES or y.shape[3] != h * w:
        raise ShapeError(f"cross_merge: y has shape {tuple(y.shape)}, expected (b, 4, c, {h * w}) for h={h}, w={w}")
    b, _, c, _ = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return (rows + cols.reshape(b, c, w, h).transpose(2, 3).reshape(b, c, h * w)).reshape(b, c, h, w)


def cross_selective_scan_reference(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto"):
    """The unfused path: cross_scan, one selective_scan over the 4 routes' channels on ``backend``, cross_merge."""
    b, c, h, w = x.shape
    L = h * w
    xs = cross_scan(x).reshape(b, ROUTES * c, L)
    ys = selective_scan(xs, delta.reshape(b, ROUTES * c, L), A, B, C, D, None, delta_bias, delta_softplus,
                        backend=backend)
    return cross_merge(ys.reshape(b, ROUTES, c, L), h, w)


def _outputs(x, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    """(shape, dtype) of the merged output: x's."""
    return ((tuple(x.shape), x.dtype),)


def _impl(x, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    return TABLE[OP][backend].fn(x, delta, A, B, C, D, delta_bias, delta_softplus)


#: ``mambaverse::cross_selective_scan`` (the fused kernel's path); see ``mambaverse.ops.custom``.
cross_selective_scan_op = DifferentiableOp(
    OP, [("Tensor", "x"), ("Tensor", "delta"), ("Tensor", "A"), ("Tensor", "B"), ("Tensor", "C"), ("Tensor?", "D"),
         ("Tensor?", "delta_bias"), ("bool", "delta_softplus"), ("str", "backend")], 1, _outputs, _impl)


def cross_selective_scan(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto"):
    """Scan an image along its four routes with per-route parameters, then merge.

    x (b, c, h, w); delta (b, 4, c, h*w), B and C (b, 4, n, h*w), each in its route's own scan order;
    A (4*c, n), D and delta_bias (4*c,). Returns (b, c, h, w), the sum of the four routes (VMamba's SS2D,
    Liu et al. 2024). ``backend``: auto (the table's order: the unfused pass, then the fused kernel), triton
    (fused), or any selective_scan backend name (the unfused pass on it).

    Raises:
        ShapeError: an argument breaks the contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    check_composite_backend(OP, backend)
    if x.dim() != 4:
        raise ShapeError(f"cross_selective_scan: x has shape {tuple(x.shape)}, expected (b, c, h, w)")
    b, c, h, w = x.shape
    if tuple(delta.shape) != (b, ROUTES, c, h * w):
        raise ShapeError(f"cross_selective_scan: delta has shape {tuple(delta.shape)}, expected {(b, ROUTES, c, h * w)}")
    check_scan_inputs(x.new_empty(b, ROUTES * c, h * w), delta.reshape(b, ROUTES * c, h * w), A, B, C, D, None, delta_bias)
    for name, t in (("B", B), ("C", C)):  # one (n, L) slice per route: other group counts would mix the routes
        if t.dim() != 4 or t.shape[1] != ROUTES:
            raise ShapeError(f"cross_selective_scan: {name} has shape {tuple(t.shape)}, expected "
                             f"{(b, ROUTES, A.shape[1], h * w)} (one slice per route)")
    dtype = compute_dtype(x, delta, A, B, C, D, delta_bias)
    if backend in ("auto", "triton"):
        name = resolve_backend(OP, backend, x.device, dtype if dtype == torch.float64 else x.dtype, set())
        if name == "triton":
            if compiling():  # one opaque node for torch.compile
                return cross_selective_scan_op(x, delta, A, B, C, D, delta_bias, bool(delta_softplus), name)[0]
            return cross_selective_scan_triton(x, delta, A, B, C, D, delta_bias, delta_softplus)
    return cross_selective_scan_reference(x, delta, A, B, C, D, delta_bias, delta_softplus, "auto" if backend == "scan" else backend)
