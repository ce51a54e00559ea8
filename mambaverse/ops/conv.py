"""Depthwise causal conv1d (+ optional SiLU), the short convolution in front of every Mamba scan.

x (b, d, l), weight (d, k), bias (d,) or None. Causal: y_t = act(bias + sum_j weight[:, j] * x_{t-(k-1)+j}).
``reverse=True`` is the anti-causal mirror (equal to flip -> conv -> flip): y_t uses x_t .. x_{t+k-1}.
``initial_state`` (b, d, k-1) holds the k-1 inputs before position 0 (after position l-1 when reversed);
``return_final_state`` also returns the last k-1 inputs, which continue the sequence in a later call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError, ShapeError
from .scan import kernel_available

_ACTIVATIONS = (None, "silu")


def _check(x, weight, bias, activation, initial_state):
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state)):
        if t is not None and not t.is_floating_point():
            raise ShapeError(f"causal_conv1d: {name} has dtype {t.dtype}, expected a floating dtype")
    if x.dim() != 3:
        raise ShapeError(f"causal_conv1d: x has shape {tuple(x.shape)}, expected (b, d, l)")
    b, d, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ShapeError(f"causal_conv1d: weight has shape {tuple(weight.shape)}, expected (d={d}, k)")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ShapeError(f"causal_conv1d: bias has shape {tuple(bias.shape)}, expected ({d},)")
    k = weight.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (b, d, k - 1):
        raise ShapeError(f"causal_conv1d: initial_state has shape {tuple(initial_state.shape)}, expected {(b, d, k - 1)}")
    if activation not in _ACTIVATIONS:
        raise ShapeError(f"causal_conv1d: activation {activation!r} is unknown; expected one of {_ACTIVATIONS}")


def causal_conv1d_torch(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                        return_final_state=False):
    b, d, l = x.shape
    k = weight.shape[1]
    if reverse:  # mirror: reverse time, conv causally, reverse back
        out = causal_conv1d_torch(x.flip(-1), weight, bias, activation, False,
                                  None if initial_state is None else initial_state.flip(-1), return_final_state)
        if return_final_state:
            return out[0].flip(-1), out[1].flip(-1)
        return out.flip(-1)
    halo = x.new_zeros(b, d, k - 1) if initial_state is None else initial_state.to(x.dtype)
    xp = torch.cat([halo, x], dim=-1)
    y = F.conv1d(xp, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype), groups=d)
    if activation == "silu":
        y = F.silu(y)
    if return_final_state:
        return y, xp[..., xp.shape[-1] - (k - 1):].clone()  # a copy: a view would keep all of xp alive
    return y


def causal_conv1d_step(x_t, conv_state, weight, bias=None, activation=None):
    """One decoding step: x_t (b, d); conv_state (b, d, k-1) is updated in place. Returns y_t (b, d)."""
    window = torch.cat([conv_state, x_t.unsqueeze(-1)], dim=-1)  # (b, d, k)
    y = (window * weight.to(window.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    conv_state.copy_(window[..., 1:])
    return F.silu(y) if activation == "silu" else y


def _triton(*args, **kwargs):
    from ..kernels import causal_conv1d_triton

    return causal_conv1d_triton(*args, **kwargs)


def _causal_conv1d_lib(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                       return_final_state=False):
    """The causal-conv1d package's CUDA kernel, for the plain causal case it covers."""
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn(x, weight, bias, activation=activation)


_BACKEND_FUNCS = {"torch": causal_conv1d_torch, "triton": _triton, "causal_conv1d": _causal_conv1d_lib}


def _available(device: torch.device) -> list[str]:
    found = []
    if device.type == "cuda":
        try:
            import causal_conv1d  # noqa: F401
            found.append("causal_conv1d")
        except ImportError:
            pass
        if kernel_available("causal_conv1d_triton", device):
            found.append("triton")
    return found + ["torch"]


def causal_conv1d(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                  return_final_state=False, backend="auto"):
    """Depthwise causal conv1d; see the module docstring. backend: auto, torch, triton, causal_conv1d."""
    _check(x, weight, bias, activation, initial_state)
    usable = _available(x.device)
    plain = not reverse and initial_state is None and not return_final_state
    if backend == "auto":
        backend = next(name for name in usable if name != "causal_conv1d" or plain)
    elif backend not in _BACKEND_FUNCS or backend not in usable:
        raise BackendUnavailableError(
            f"causal_conv1d: backend {backend!r} is unavailable on device {x.device}; available here: {usable}")
    return _BACKEND_FUNCS[backend](x, weight, bias, activation, reverse, initial_state, return_final_state)
