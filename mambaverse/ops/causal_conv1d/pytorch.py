"""Depthwise causal conv1d in PyTorch (F.conv1d with a halo of k-1 steps), and the one-step update used
when decoding. Computes in the input dtype (float64 stays float64)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_torch(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                        return_final_state=False):
    """Same contract as ``mambaverse.ops.causal_conv1d``; computes in x's dtype."""
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
