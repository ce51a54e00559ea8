"""The Mamba-1 block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces")."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..cache import MambaCache
from .base import SSMDirections, check_hidden
from .defaults import D_CONV, D_STATE, EXPAND
from .ssm import SelectiveSSM


class Mamba(SSMDirections):
    """in_proj -> (x, z); SelectiveSSM(x) gated by SiLU(z); out_proj.  (B, L, d_model) -> (B, L, d_model).

    Args:
        d_model: model width.
        d_state: SSM state size N.
        d_conv: width of the depthwise causal conv.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the dt projection; None = ceil(d_inner / 16).
        bias: biases on in_proj and out_proj.
        conv_bias: bias on the conv.
        backend: the ops backend ("auto", "naive", "torch", "triton", "mamba_ssm").

    Carries state (``mambaverse.mixers.state``): one forward direction. On CUDA the block runs channel-major
    (``mambaverse.mixers.layout``): no layout copies or transposes between in_proj, conv, scan, gate and
    out_proj, bf16 GEMMs under autocast; ``layout`` (attribute) overrides that.
    Raises ShapeError for an input that is not (B, L, d_model).
    """

    directions = (False,)

    def __init__(self, d_model: int, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND,
                 dt_rank: int | None = None, bias: bool = False, conv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.d_model, self.d_inner, self.backend = d_model, expand * d_model, backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.ssm = SelectiveSSM(self.d_inner, d_state, d_conv, dt_rank, conv_bias=conv_bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def _parts(self, reverse):
        return self.in_proj, self.ssm

    def _out_weight(self, reverse):
        return self.out_proj.weight

    def forward(self, hidden, initial_state=None, return_final_state=False):
        """hidden (B, L, d_model) -> (B, L, d_model) [, MixerState leaving]. initial_state: a MixerState
        (conv_state (B, d_inner, d_conv-1), ssm_state (B, d_inner, d_state)) entering before position 0."""
        return self.direction(hidden, False, initial_state, return_final_state)

    def direction(self, hidden, reverse: bool = False, initial_state=None, return_final_state=False,
                  return_decay=False):
        """The state API's per-direction call; for this causal mixer, ``forward`` itself. ``return_decay``
        also returns the segment's total decay (B, d_inner, d_state) fp32 (see ``mixers.state``)."""
        self._check_direction(reverse)
        check_hidden(hidden, self.d_model, "Mamba")
        channels = self._channels(hidden)
        x, z = self._xz(hidden, self.in_proj, self.d_inner, channels)
        out = self.ssm(x, z, initial_state, return_final_state, self.backend, return_decay, channels)
        if not (return_final_state or return_decay):
            return self._project_out(out, self.out_proj.weight, self.out_proj.bias, channels)
        return (self._project_out(out[0], self.out_proj.weight, self.out_proj.bias, channels), *out[1:])

    def allocate_cache(self, batch: int, device=None, dtype=torch.float32) -> MambaCache:
        """A zeroed decoding cache: conv (batch, d_inner, d_conv-1), ssm (batch, d_inner, d_state) fp32."""
        return MambaCache(batch, self.d_inner, self.ssm.d_conv, (self.d_inner, self.ssm.d_state), device, dtype)

    def step(self, hidden_t, cache: MambaCache):
        """hidden_t (B, d_model) -> (B, d_model), advancing cache by one position."""
        x, z = self.in_proj(hidden_t).chunk(2, dim=-1)
        return self.out_proj(self.ssm.step(x, z, cache))
