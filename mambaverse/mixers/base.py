"""What the Mamba-1 mixers share: the input check and the state-carrying API built on their scan directions."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError
from .state import MixerState


def check_hidden(x: torch.Tensor, d_model: int, who: str) -> None:
    """Raise ShapeError unless x is (batch, length, d_model)."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ShapeError(f"{who}: input has shape {tuple(x.shape)}, expected (batch, length, d_model={d_model})")


class SSMDirections(nn.Module):
    """Base of mixers made of in_proj -> SelectiveSSM per direction -> out_proj.

    Subclasses set ``directions`` and implement ``_parts(reverse) -> (in_proj, ssm)`` and ``direction``;
    ``transfer`` and ``conv_state_from`` of the state API (``mambaverse.mixers.state``) follow from them.
    """

    carries_state = True
    corrects_state = True
    directions: tuple[bool, ...] = (False,)
    d_model: int
    d_inner: int
    backend: str

    def _parts(self, reverse: bool):
        raise NotImplementedError

    def _out_weight(self, reverse: bool) -> torch.Tensor:
        """The weight of the out_proj that ``direction(reverse)`` applies to the SSM output."""
        raise NotImplementedError

    def _check_direction(self, reverse: bool):
        if reverse not in self.directions:
            raise ConfigError(f"{type(self).__name__}: has no {'reverse' if reverse else 'forward'} direction; "
                              f"expected reverse in {self.directions}")

    def _x(self, hidden, reverse):
        """The x half of the direction's in_proj(hidden), (B, d_inner, L), without computing the gate half."""
        self._check_direction(reverse)
        check_hidden(hidden, self.d_model, type(self).__name__)
        proj, ssm = self._parts(reverse)
        d = ssm.d_inner
        return F.linear(hidden, proj.weight[:d], None if proj.bias is None else proj.bias[:d]).transpose(1, 2), ssm

    def transfer(self, hidden, reverse: bool = False, initial_state=None):
        """hidden (B, L, d_model) -> (decay (B, d_inner, d_state) fp32, MixerState leaving); no outputs computed."""
        x, ssm = self._x(hidden, reverse)
        return ssm.transfer(x, initial_state, self.backend)

    def state_contribution(self, hidden, h_in, reverse: bool = False, conv_state=None, decay_in=None):
        """What ``direction(hidden, reverse, MixerState(conv_state, s))`` gains when the SSM state entering is
        ``s + h_in`` instead of ``s``: (B, L, d_model), linear in h_in (B, d_inner, d_state); out_proj without
        its bias applied to the SSM's ``correction`` (``mambaverse.ops.state_correction``). Context parallel
        adds it to a slice scanned from a zero state once the true incoming state is known."""
        self._check_direction(reverse)
        check_hidden(hidden, self.d_model, type(self).__name__)
        proj, ssm = self._parts(reverse)
        x, z = proj(hidden).transpose(1, 2).chunk(2, dim=1)
        corr = ssm.correction(x, z, h_in, conv_state, self.backend, decay_in)
        return F.linear(corr.transpose(1, 2), self._out_weight(reverse))

    @property
    def conv_context(self) -> int:
        """Positions the conv state holds (d_conv - 1): what ``conv_state_from`` needs."""
        return self._parts(self.directions[0])[1].d_conv - 1

    def conv_state_from(self, hidden, reverse: bool = False):
        """The conv state (B, d_inner, d_conv-1) leaving a segment that ends (starts, reversed) with ``hidden``
        (B, >= conv_context, d_model); only those last (first) positions are projected. None if d_conv == 1."""
        k1 = self.conv_context
        if hidden.dim() == 3 and hidden.shape[1] < k1:
            raise ShapeError(f"{type(self).__name__}.conv_state_from: {hidden.shape[1]} positions, fewer than "
                             f"d_conv-1={k1}")
        if k1 == 0:
            return None
        edge = hidden[:, :k1] if reverse else hidden[:, hidden.shape[1] - k1:]
        x, ssm = self._x(edge, reverse)
        return ssm.conv_state_from(x)

    @property
    def additive_scale(self) -> float | None:
        return 1.0

    def combine(self, *contributions):
        """The block output from the directions' contributions (one direction: itself)."""
        (out,) = contributions
        return out


__all__ = ["MixerState", "SSMDirections", "check_hidden"]
