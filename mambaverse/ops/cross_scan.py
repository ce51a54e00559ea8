"""VMamba's 4-route cross-scan of an image, and the merge that undoes it.

Routes, for x (b, c, h, w) and L = h*w:
  0: row-major (left to right, top to bottom)      1: column-major (top to bottom, left to right)
  2: route 0 reversed                              3: route 1 reversed
cross_scan(x) -> (b, 4, c, L); cross_merge(y, h, w) maps each route back to its pixel and sums the
four, so cross_merge(cross_scan(x), h, w) == 4 * x.
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from .scan import check_scan_inputs, selective_scan, use_fused_kernel

ROUTES = 4


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ShapeError(f"cross_scan: x has shape {tuple(x.shape)}, expected (b, c, h, w)")
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h * w)
    cols = x.transpose(2, 3).reshape(b, c, h * w)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if y.dim() != 4 or y.shape[1] != ROUTES or y.shape[3] != h * w:
        raise ShapeError(f"cross_merge: y has shape {tuple(y.shape)}, expected (b, 4, c, {h * w}) for h={h}, w={w}")
    b, _, c, _ = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return (rows + cols.reshape(b, c, w, h).transpose(2, 3).reshape(b, c, h * w)).reshape(b, c, h, w)


def cross_selective_scan_reference(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto"):
    b, c, h, w = x.shape
    L = h * w
    xs = cross_scan(x).reshape(b, ROUTES * c, L)
    ys = selective_scan(xs, delta.reshape(b, ROUTES * c, L), A, B, C, D, None, delta_bias, delta_softplus,
                        backend=backend)
    return cross_merge(ys.reshape(b, ROUTES, c, L), h, w)


def cross_selective_scan(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto"):
    """Scan an image along its four routes with per-route parameters, then merge.

    x (b, c, h, w); delta (b, 4, c, h*w), B and C (b, 4, n, h*w), each in its route's own scan order;
    A (4*c, n), D and delta_bias (4*c,). Returns (b, c, h, w), the sum of the four routes.
    """
    if x.dim() != 4:
        raise ShapeError(f"cross_selective_scan: x has shape {tuple(x.shape)}, expected (b, c, h, w)")
    b, c, h, w = x.shape
    if tuple(delta.shape) != (b, ROUTES, c, h * w):
        raise ShapeError(f"cross_selective_scan: delta has shape {tuple(delta.shape)}, expected {(b, ROUTES, c, h * w)}")
    check_scan_inputs(x.new_empty(b, ROUTES * c, h * w), delta.reshape(b, ROUTES * c, h * w), A, B, C, D, None, delta_bias)
    if use_fused_kernel("cross_selective_scan_triton", x.device, backend):
        from ..kernels import cross_selective_scan_triton

        return cross_selective_scan_triton(x, delta, A, B, C, D, delta_bias, delta_softplus)
    return cross_selective_scan_reference(x, delta, A, B, C, D, delta_bias, delta_softplus, backend)
