"""Mamba-2's state-space duality (SSD) scan: a scalar decay per head, shared B/C per group.

Shapes: x (b, l, h, p) with h heads of p channels; dt (b, l, h) already positive (after softplus);
A (h,) negative; B, C (b, l, g, n) with h divisible by g; D (h,) optional;
initial_state (b, h, p, n) optional. Returns y (b, l, h, p) [, final_state (b, h, p, n)].

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T,     y_t = h_t C_t + D x_t

Under ``torch.compile`` the call goes through the custom op ``torch.ops.mambaverse.ssd_scan``
(``mambaverse.ops.custom``), whatever the backend.
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import ALL_DTYPES, REAL_DTYPES, TABLE, Backend, cuda_and, module_importable, needs_grad
from ..dispatch import register_backend
from .common import compute_dtype
from .mamba_ssm import _mamba_ssm as ssd_scan_mamba_ssm
from .naive import ssd_scan_naive
from .pytorch import ssd_scan_chunked

OP = "ssd_scan"
_ALL = frozenset({"initial_state", "final_state", "final_state_grad", "grouped"})
# mamba-ssm's combined kernel takes initial states, and gradient flows back through its final state
# (benchmarks/results/gpu_parity_h200_with_mamba_ssm.md probes it: 8e-4 from naive, TF32 matmuls in fp32).
register_backend(Backend(OP, "mamba_ssm", ssd_scan_mamba_ssm, _ALL, REAL_DTYPES,
                         cuda_and(module_importable("mamba_ssm.ops.triton.ssd_combined")), {"cuda": 0},
                         "mamba-ssm's Triton SSD kernels; fp32 matmuls in TF32 (about 1e-3 from naive)"))
register_backend(Backend(OP, "torch", ssd_scan_chunked, _ALL, ALL_DTYPES, lambda device: True, {"cuda": 1, "cpu": 0},
                         "chunked SSD in PyTorch"))
register_backend(Backend(OP, "naive", ssd_scan_naive, _ALL, ALL_DTYPES, lambda device: True, {"cuda": 2, "cpu": 1},
                         "the sequential oracle"))


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


def _outputs(x, dt, A, B, C, D, initial_state, return_final_state, chunk_size, backend):
    """(shape, dtype) of y (x's dtype) and of the final state (b, h, p, n) in the compute dtype (None when not
    returned)."""
    y = (tuple(x.shape), x.dtype)
    if not return_final_state:
        return y, None
    b, _, h, p = x.shape
    return y, ((b, h, p, B.shape[3]), compute_dtype(x, dt, A, B, C, D, initial_state))


def _impl(x, dt, A, B, C, D, initial_state, return_final_state, chunk_size, backend):
    res = TABLE[OP][backend].fn(x, dt, A, B, C, D, initial_state, return_final_state, chunk_size)
    return res if return_final_state else (res, None)


#: ``mambaverse::ssd_scan``: (y, final state or an empty placeholder); see ``mambaverse.ops.custom``.
ssd_scan_op = DifferentiableOp(
    OP, [("Tensor", "x"), ("Tensor", "dt"), ("Tensor", "A"), ("Tensor", "B"), ("Tensor", "C"), ("Tensor?", "D"),
         ("Tensor?", "initial_state"), ("bool", "return_final_state"), ("int", "chunk_size"), ("str", "backend")],
    2, _outputs, _impl)


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False, chunk_size=64, backend="auto"):
    """Mamba-2 SSD scan (Dao & Gu 2024); see the module docstring. ``chunk_size``: steps per chunk of the
    chunked algorithm. ``backend``: auto (mamba_ssm on CUDA when installed and the call allows, else torch),
    naive, torch, mamba_ssm. Under ``torch.compile`` the chosen backend runs inside the custom op
    ``mambaverse::ssd_scan``.

    Raises:
        ShapeError: an argument breaks the contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    _check(x, dt, A, B, C, initial_state)
    needs = {"grouped"} if B.shape[2] > 1 else set()
    if initial_state is not None:
        needs.add("initial_state")
    if return_final_state:
        needs.add("final_state")
        if needs_grad(x, dt, A, B, C, D, initial_state):
            needs.add("final_state_grad")
    cd = compute_dtype(x, dt, A, B, C, D, initial_state)
    name = resolve_backend(OP, backend, x.device, cd if cd == torch.float64 else x.dtype, needs)
    if x.shape[1] == 0:  # no steps: nothing to scan, the state passes through
        state = (x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[3], dtype=cd) if initial_state is None
                 else initial_state.to(cd))
        y = x.new_zeros(x.shape)
        return (y, state) if return_final_state else y
    if compiling():  # one opaque node for torch.compile, whatever the backend
        y, state = ssd_scan_op(x, dt, A, B, C, D, initial_state, bool(return_final_state), int(chunk_size), name)
        return (y, state) if return_final_state else y
    return TABLE[OP][name].fn(x, dt, A, B, C, D, initial_state, return_final_state, chunk_size)


__all__ = ["ssd_scan", "ssd_scan_op", "ssd_scan_naive", "ssd_scan_chunked", "ssd_scan_mamba_ssm"]
