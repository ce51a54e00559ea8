"""The selective scan of Mamba-1: one public op, four backends, one oracle.

Shapes (they follow mamba-ssm's ``selective_scan_fn``):

=============  =======================================  ==========================================
name           shape                                    meaning
=============  =======================================  ==========================================
u              (b, d, l)                                input sequence, d channels
delta          (b, d, l)                                step size (before ``delta_bias``/softplus)
A              (d, n), real (negative) or complex       state matrix (diagonal)
B, C           (b, n, l), grouped (b, g, n, l), or      input/output projections; with g groups,
               time-invariant (d, n)                    channel c uses group c // (d//g)
D              (d,)                                     skip connection, optional
z              (b, d, l)                                gate: out = y * silu(z), optional
delta_bias     (d,)                                     added to delta, optional
initial_state  (b, d, n)                                state before the first step, optional
returns        out (b, d, l) [, final_state (b, d, n)]
=============  =======================================  ==========================================

The recurrence, per channel c and state index k::

    dt_t   = softplus(delta_t + delta_bias)       (softplus only if delta_softplus)
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t    = sum_k C_t h_t + D u_t,   out_t = y_t * silu(z_t)

With ``reverse=True`` the recurrence runs from t = l-1 down to 0: ``initial_state`` enters at the last
position and ``final_state`` is the state after position 0. The state is fp32 (float64 for float64
inputs); ``out`` has the dtype of ``u``. A complex A (with complex B/C, or mamba-ssm's real form with
(re, im) interleaved along l) gives ``y_t = 2 Re(sum_k C_t h_t)``, as in mamba-ssm and S4D; the state is
then complex.

Under ``torch.compile`` the call goes through the custom op ``torch.ops.mambaverse.selective_scan`` (one opaque
node with fake shapes and autograd, ``mambaverse.ops.custom``), whatever the backend.
"""
from __future__ import annotations

import torch

from ..dispatch import ALL_DTYPES, REAL_DTYPES, Backend, cuda_and, module_importable, needs_grad, register_backend
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import TABLE, triton_kernel
from .common import check_scan_inputs, complex_from_interleaved, complex_of, compute_dtype, flag_features
from .mamba_ssm import selective_scan_mamba_ssm
from .naive import selective_scan_naive
from .pytorch import chunk_size_for, selective_scan_torch
from .triton import selective_scan_triton

OP = "selective_scan"
_ALL = frozenset({"initial_state", "final_state", "final_state_grad", "reverse", "grouped", "time_invariant",
                  "complex"})
register_backend(Backend(OP, "mamba_ssm", selective_scan_mamba_ssm,
                         _ALL - {"initial_state", "final_state_grad", "complex"}, REAL_DTYPES,
                         cuda_and(module_importable("mamba_ssm.ops.selective_scan_interface")), {"cuda": 0},
                         "fastest on CUDA (ours 1.3-1.8x its fwd+bwd time: benchmarks/results/kernels_h200.md); "
                         "no initial state; its final state is a constant for autograd"))
register_backend(Backend(OP, "triton", selective_scan_triton, _ALL - {"complex"}, REAL_DTYPES,
                         triton_kernel("selective_scan_triton"), {"cuda": 1},
                         "ours, no compile; real A only; computes in fp32"))
register_backend(Backend(OP, "torch", selective_scan_torch, _ALL, ALL_DTYPES, lambda device: True,
                         {"cuda": 2, "cpu": 0}, "chunked, hand-written backward; the CPU path"))
register_backend(Backend(OP, "naive", selective_scan_naive, _ALL, ALL_DTYPES, lambda device: True,
                         {"cuda": 3, "cpu": 1}, "the sequential oracle"))


def _outputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state, reverse,
             backend):
    """(shape, dtype) of out and of the final state (None when not returned); the state dtype is every
    backend's: fp32 (float64 for float64 inputs), complex for a complex A."""
    out = (tuple(u.shape), u.dtype)
    if not return_final_state:
        return out, None
    real = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return out, ((u.shape[0], u.shape[1], A.shape[1]), complex_of(real) if A.is_complex() else real)


def _impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state, reverse, backend):
    res = TABLE[OP][backend].fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                return_final_state, reverse)
    return res if return_final_state else (res, None)


#: ``mambaverse::selective_scan``: (out, final state or an empty placeholder); see ``mambaverse.ops.custom``.
selective_scan_op = DifferentiableOp(
    OP, [("Tensor", "u"), ("Tensor", "delta"), ("Tensor", "A"), ("Tensor", "B"), ("Tensor", "C"), ("Tensor?", "D"),
         ("Tensor?", "z"), ("Tensor?", "delta_bias"), ("bool", "delta_softplus"), ("Tensor?", "initial_state"),
         ("bool", "return_final_state"), ("bool", "reverse"), ("str", "backend")], 2, _outputs, _impl)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False, reverse=False, backend="auto"):
    """Selective scan of Mamba-1 (Gu & Dao 2023, Algorithm 2); see the module docstring for shapes.

    ``backend``: ``auto`` picks, among the backends available on the inputs' device whose declared
    capabilities cover this call (initial state, a final state that carries gradient, reverse, B/C form,
    complex, dtype), the one measured fastest: mamba_ssm, then triton on CUDA; torch on CPU
    (``mambaverse.ops.dispatch.TABLE``). A named backend that cannot serve the call raises. Under
    ``torch.compile`` the chosen backend runs inside the custom op ``mambaverse::selective_scan``.

    Raises:
        ShapeError: an argument breaks the shape/dtype contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    B, C = complex_from_interleaved(B, A), complex_from_interleaved(C, A)
    grad = needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs = flag_features(u, A, B, C, initial_state, return_final_state, reverse, grad)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = dtype if dtype == torch.float64 else u.dtype
    name = resolve_backend(OP, backend, u.device, dtype, needs)
    if u.shape[-1] == 0:  # no steps: an empty output, and the state passes through unchanged
        out = u.new_zeros(u.shape)
        if not return_final_state:
            return out
        if initial_state is not None:
            return out, initial_state
        dtype = torch.complex64 if A.is_complex() else torch.float32
        return out, u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.promote_types(dtype, A.dtype))
    if compiling():  # one opaque node for torch.compile, whatever the backend
        out, state = selective_scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state,
                                       bool(return_final_state), bool(reverse), name)
        return (out, state) if return_final_state else out
    return TABLE[OP][name].fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                              return_final_state, reverse)


__all__ = ["selective_scan", "selective_scan_op", "selective_scan_naive", "selective_scan_torch", "selective_scan_triton",
           "selective_scan_mamba_ssm", "check_scan_inputs", "chunk_size_for"]
