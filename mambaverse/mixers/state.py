"""The mixers' public API for carrying state across a split of the sequence.

A long sequence cut into segments (chunks on one device, slices on several ranks) gives exactly the
output of one pass when each segment starts from the state the previous segment left. For a Mamba scan
direction that state is a :class:`MixerState`: the conv's last ``d_conv - 1`` inputs and the SSM state.

Every state-carrying mixer (``carries_state = True``) implements:

``directions``
    the scan directions it runs, as reverse flags: ``(False,)`` for a causal mixer, ``(False, True)``
    for a bidirectional one. A reverse direction's state enters after the segment's last position and
    leaves before its first, so segments are visited right to left for it.
``direction(hidden, reverse=False, initial_state=None, return_final_state=False)``
    hidden (B, L, d_model) -> that direction's contribution (B, L, d_model) [, the MixerState leaving].
``combine(*contributions)`` and ``additive_scale``
    the block output from the contributions (in ``directions`` order). ``additive_scale`` is ``s`` when
    ``combine`` is ``s * sum(contributions)`` and None when it is not additive; wrappers use it to add a
    stored contribution outside a checkpointed region.
``transfer(hidden, reverse=False, initial_state=None)``
    the segment's action on the SSM state without computing outputs: ``(decay, final_state)`` where
    ``final_state`` is the MixerState leaving when ``initial_state`` enters, and ``decay`` (B, d_inner,
    d_state) fp32 is the segment's total decay prod_t exp(dt_t A), so that the SSM state leaving is
    ``decay * h_in + final_state.ssm`` evaluated at h_in = 0 (the recurrence is linear in h). Context
    parallel folds these pairs across ranks.
``direction(..., return_final_state=True, return_decay=True)``, ``corrects_state`` and
``state_contribution(hidden, h_in, reverse=False, conv_state=None, decay_in=None)`` (optional; Mamba-1)
    a direction's contribution also with the segment's total decay (as ``transfer``'s), and what the
    contribution gains when an SSM state ``h_in`` (B, d_inner, d_state) enters on top of the one it was
    computed from: (B, L, d_model), linear in h_in (``mambaverse.ops.state_correction`` then out_proj
    without bias). ``corrects_state`` says the block output adds it (additive ``combine``). Context
    parallel then scans each slice once and corrects it instead of scanning it twice.
``conv_state_from(hidden, reverse=False)`` and ``conv_context``
    the conv part of the state leaving a segment, computed from its last ``conv_context = d_conv - 1``
    positions (first, reversed) alone: (B, conv_channels, d_conv - 1), or None when d_conv == 1.

Wrappers (``mambaverse.long_context``, ``mambaverse.context_parallel``) use only this API.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class MixerState(NamedTuple):
    """The state of one scan direction at a segment boundary (a tuple, so ``conv, ssm = state`` works).

    conv: (B, conv_channels, d_conv - 1) in the activations' dtype, or None (zeros / d_conv == 1).
    ssm: (B, d_inner, d_state) fp32 for Mamba-1, or None (zeros).
    """

    conv: Optional[torch.Tensor]
    ssm: Optional[torch.Tensor]


def as_state(state) -> MixerState | None:
    """A MixerState from None, a (conv, ssm) pair or a MixerState."""
    if state is None or isinstance(state, MixerState):
        return state
    conv, ssm = state
    return MixerState(conv, ssm)
