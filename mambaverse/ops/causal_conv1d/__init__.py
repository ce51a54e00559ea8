"""Depthwise causal conv1d (+ optional SiLU), the short convolution in front of every Mamba scan.

x (b, d, l), weight (d, k), bias (d,) or None. Causal: y_t = act(bias + sum_j weight[:, j] * x_{t-(k-1)+j}).
``reverse=True`` is the anti-causal mirror (equal to flip -> conv -> flip): y_t uses x_t .. x_{t+k-1}.
``initial_state`` (b, d, k-1) holds the k-1 inputs before position 0 (after position l-1 when reversed);
``return_final_state`` also returns the last k-1 inputs, which continue the sequence in a later call.

Under ``torch.compile`` the call goes through the custom op ``torch.ops.mambaverse.causal_conv1d``
(``mambaverse.ops.custom``), whatever the backend.
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import ALL_DTYPES, REAL_DTYPES, TABLE, Backend, cuda_and, module_importable, register_backend
from ..dispatch import triton_kernel
from .library import causal_conv1d_library
from .pytorch import causal_conv1d_step, causal_conv1d_torch
from .triton import causal_conv1d_triton

OP = "causal_conv1d"
ACTIVATIONS = (None, "silu")
_ALL = frozenset({"initial_state", "final_state", "final_state_grad", "reverse", "wide_kernel"})
register_backend(Backend(OP, "causal_conv1d", causal_conv1d_library, frozenset(), REAL_DTYPES,
                         cuda_and(module_importable("causal_conv1d")), {"cuda": 0},
                         "the causal-conv1d package; plain causal calls of width <= 4 only"))
register_backend(Backend(OP, "triton", causal_conv1d_triton, _ALL, REAL_DTYPES, triton_kernel("causal_conv1d_triton"),
                         {"cuda": 1}, "ours, fused SiLU, reverse by index arithmetic"))
register_backend(Backend(OP, "torch", causal_conv1d_torch, _ALL, ALL_DTYPES, lambda device: True,
                         {"cuda": 2, "cpu": 0}, "F.conv1d with a halo; also the reference"))


def _check(x, weight, bias, activation, initial_state):
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state)):
        if t is not None and (not isinstance(t, torch.Tensor) or not t.is_floating_point()):
            raise ShapeError(f"causal_conv1d: {name} has dtype {getattr(t, 'dtype', type(t).__name__)}, "
                             "expected a floating dtype")
    if x.dim() != 3:
        raise ShapeError(f"causal_conv1d: x has shape {tuple(x.shape)}, expected (b, d, l)")
    b, d, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != d or weight.shape[1] < 1:
        raise ShapeError(f"causal_conv1d: weight has shape {tuple(weight.shape)}, expected (d={d}, k) with k >= 1")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ShapeError(f"causal_conv1d: bias has shape {tuple(bias.shape)}, expected ({d},)")
    k = weight.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (b, d, k - 1):
        raise ShapeError(f"causal_conv1d: initial_state has shape {tuple(initial_state.shape)}, expected {(b, d, k - 1)}")
    if activation not in ACTIVATIONS:
        raise ShapeError(f"causal_conv1d: activation {activation!r} is unknown; expected one of {ACTIVATIONS}")
    devices = {t.device for t in (x, weight, bias, initial_state) if t is not None}
    if len(devices) > 1:
        raise ShapeError(f"causal_conv1d: inputs are on several devices {sorted(map(str, devices))}; expected one")


def _outputs(x, weight, bias, activation, reverse, initial_state, return_final_state, backend):
    """(shape, dtype) of y and of the conv state leaving (None when not returned): both in x's dtype."""
    y = (tuple(x.shape), x.dtype)
    if not return_final_state:
        return y, None
    return y, ((x.shape[0], x.shape[1], weight.shape[1] - 1), x.dtype)


def _impl(x, weight, bias, activation, reverse, initial_state, return_final_state, backend):
    res = TABLE[OP][backend].fn(x, weight, bias, activation, reverse, initial_state, return_final_state)
    return res if return_final_state else (res, None)


#: ``mambaverse::causal_conv1d``: (y, conv state or an empty placeholder); see ``mambaverse.ops.custom``.
causal_conv1d_op = DifferentiableOp(
    OP, [("Tensor", "x"), ("Tensor", "weight"), ("Tensor?", "bias"), ("str?", "activation"), ("bool", "reverse"),
         ("Tensor?", "initial_state"), ("bool", "return_final_state"), ("str", "backend")], 2, _outputs, _impl)


def causal_conv1d(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                  return_final_state=False, backend="auto"):
    """Depthwise causal conv1d (Mamba's short conv, Gu & Dao 2023 Fig. 3); see the module docstring.

    ``backend``: auto (the fastest available backend that serves the call: causal_conv1d, then triton on
    CUDA; torch on CPU), torch, triton or causal_conv1d. Under ``torch.compile`` the chosen backend runs inside
    the custom op ``mambaverse::causal_conv1d``.

    Raises:
        ShapeError: an argument breaks the contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    _check(x, weight, bias, activation, initial_state)
    needs = set()
    if initial_state is not None:
        needs.add("initial_state")
    if return_final_state:
        needs.add("final_state")
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, initial_state)):
            needs.add("final_state_grad")
    if reverse:
        needs.add("reverse")
    if weight.shape[1] > 4 or weight.shape[1] < 2:
        needs.add("wide_kernel")
    name = resolve_backend(OP, backend, x.device, x.dtype, needs)
    if x.shape[-1] == 0:  # no steps: an empty output, and the conv state passes through unchanged
        y = x.new_zeros(x.shape)
        if not return_final_state:
            return y
        k = weight.shape[1]
        return y, (initial_state if initial_state is not None else x.new_zeros(x.shape[0], x.shape[1], k - 1))
    if compiling():  # one opaque node for torch.compile, whatever the backend
        y, state = causal_conv1d_op(x, weight, bias, activation, bool(reverse), initial_state,
                                    bool(return_final_state), name)
        return (y, state) if return_final_state else y
    return TABLE[OP][name].fn(x, weight, bias, activation, reverse, initial_state, return_final_state)


__all__ = ["causal_conv1d", "causal_conv1d_op", "causal_conv1d_step", "causal_conv1d_torch", "causal_conv1d_triton"]
