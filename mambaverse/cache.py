"""Recurrent-inference state as modules of buffers (they move with .to() and show in state_dict)."""
from __future__ import annotations

import torch
import torch.nn as nn


class MambaCache(nn.Module):
    """One Mamba layer's decoding state: the last d_conv-1 inputs of its conv, and its SSM state (fp32).

    Mamba-1: conv over d_inner channels, state (d_inner, d_state).
    Mamba-2: conv over (x, B, C) channels, state (nheads, headdim, d_state).

    Args:
        batch: sequences decoded together.
        conv_channels: channels of the conv input.
        d_conv: conv width; the buffer ``conv_state`` is (batch, conv_channels, d_conv - 1) in ``dtype``.
        ssm_shape: per-sequence shape of ``ssm_state`` (always fp32).
        device, dtype: where and in which dtype the conv state lives.

    Buffers are not persistent (they do not appear in a saved state_dict).
    """

    def __init__(self, batch: int, conv_channels: int, d_conv: int, ssm_shape: tuple[int, ...], device=None,
                 dtype=torch.float32):
        super().__init__()
        self.register_buffer("conv_state", torch.zeros(batch, conv_channels, d_conv - 1, device=device, dtype=dtype),
                             persistent=False)
        self.register_buffer("ssm_state", torch.zeros(batch, *ssm_shape, device=device, dtype=torch.float32),
                             persistent=False)

    def reset(self):
        self.conv_state.zero_()
        self.ssm_state.zero_()
        return self

    def update(self, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """Load states from a parallel forward (e.g. after a prompt) to continue step by step."""
        self.conv_state.copy_(conv_state)
        self.ssm_state.copy_(ssm_state)
        return self


class BackboneCache(nn.Module):
    """The caches of every layer of a causal backbone, plus the number of positions seen.

    Args:
        layers: one :class:`MambaCache` per layer (``mixer.allocate_cache``), in layer order.
    """

    def __init__(self, layers: list[MambaCache]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.seqlen_offset = 0

    def reset(self):
        for layer in self.layers:
            layer.reset()
        self.seqlen_offset = 0
        return self
