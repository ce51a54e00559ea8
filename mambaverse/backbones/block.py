"""The pre-norm residual block every sequence backbone stacks."""
from __future__ import annotations

import torch.nn as nn

from ..mixers import RMSNorm


class ResidualBlock(nn.Module):
    """hidden + mixer(RMSNorm(hidden)); the residual stream stays in the input dtype.

    Args:
        d_model: width of the residual stream.
        mixer: any module (B, L, d_model) -> (B, L, d_model); keyword arguments of ``forward`` go to it, and
            when it returns ``(y, state)`` (state carrying) the block returns ``(hidden + y, state)``.
        norm_eps: RMSNorm epsilon.

    State-dict keys: ``norm.weight`` and ``mixer.*``.
    """

    def __init__(self, d_model: int, mixer: nn.Module, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer

    def forward(self, hidden, **mixer_kwargs):
        out = self.mixer(self.norm(hidden), **mixer_kwargs)
        if isinstance(out, tuple):
            return hidden + out[0], out[1]
        return hidden + out
