"""What the Mamba-1 mixers share: the input check and the state-carrying API built on their scan directions."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError
from .layout import LAYOUTS, project_in, project_out, use_channels
from .state import MixerState


def check_hidden(x: torch.Tensor, d_model: int, who: str) -> None:
    """Raise ShapeError unless x is (batch, length, d_model)."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ShapeError(f"{who}: input has shape {tuple(x.shape)}, expected (batch, length, d_model={d_model})")


class SSMDirections(nn.Module):
    """Base of mixers made of in_proj -> SelectiveSSM per direction -> out_proj.

    Subclasses set ``directions`` and implement ``_parts(reverse) -> (in_proj, ssm)`` and ``direction``;
    ``transfer`` and ``conv_state_from`` of the state API (``mambaverse.mixers.state``) follow from them.

    ``layout`` (attribute): "auto" (default) runs the block channel-major on CUDA, with no transposes
    between in_proj, conv, scan, gate and out_proj (``mambaverse.mixers.layout``), and in nn.Linear's
    (B, L, ·) rows elsewhere; "channels" / "rows" force one (the two give the same result up to rounding).
    """

    carries_state = True
    corrects_state = True
    directions: tuple[bool, ...] = (False,)
    d_model: int
    d_inner: int
    backend: str
    layout: str = "auto"

    def _channels(self, hidden) -> bool:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"{type(self).__name__}: layout={self.layout!r}; expected one of {LAYOUTS}")
        return use_channels(self.layout, hidden)

    def _xz(self, hidden, proj, d_inner, channels, with_z=True):
        """in_proj(hidden) as x, z (B, d_inner, L): channel-major GEMMs, or nn.Linear then a transpose view."""
        if channels:
            parts = project_in(hidden, proj.weight, proj.bias, (d_inner, d_inner) if with_z else (d_inner,))
            return (parts[0], parts[1]) if with_z else (parts[0], None)
        if not with_z:
            return F.linear(hidden, proj.weight[:d_inner],
                            None if proj.bias is None else proj.bias[:d_inner]).transpose(1, 2), None
        x, z = proj(hidden).transpose(1, 2).chunk(2, dim=1)
        return x, z

    @staticmethod
    def _project_out(y, weight, bias=None, channels=False):
        """y (B, d_inner, L) -> (B, L, d_model) through out_proj's weight (and bias), in y's layout."""
        return project_out(y, weight, bias, channels)

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
        return self._xz(hidden, proj, ssm.d_inner, self._channels(hidden), with_z=False)[0], ssm

    def transfer(self, hidden, reverse: bool = False, initial_state=None):
        """hidden (B, L, d_model) -> (decay (B, d_inner, d_state) fp32, MixerState leaving); no outputs computed."""
        x, ssm = self._x(hidden, reverse)
        return ssm.transfer(x, initial_state, self.backend, self._channels(hidden))

    def state_contribution(self, hidden, h_in, reverse: bool = False, conv_state=None, decay_in=None):
        """What ``direction(hidden, reverse, MixerState(conv_state, s))`` gains when the SSM state entering is
        ``s + h_in`` instead of ``s``: (B, L, d_model), linear in h_in (B, d_inner, d_state); out_proj without
        its bias applied to the SSM's ``correction`` (``mambaverse.ops.state_correction``). Context parallel
        adds it to a slice scanned from a zero state once the true incoming state is known."""
        self._check_direction(reverse)
        check_hidden(hidden, self.d_model, type(self).__name__)
        proj, ssm = self._parts(reverse)
        channels = self._channels(hidden)
        x, z = self._xz(hidden, proj, ssm.d_inner, channels)
        corr = ssm.correction(x, z, h_in, conv_state, self.backend, decay_in, channels)
        return self._project_out(corr, self._out_weight(reverse), None, channels)

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
