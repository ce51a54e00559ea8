"""Sequence backbones behind one contract: hidden states (B, L, d_model) -> features (B, L, d_model).

- CausalBackbone: pre-norm residual stack of Mamba (or Mamba-2) mixers with RMSNorm; supports
  recurrent decoding (`allocate_cache`, `step`) and carrying state across calls (`initial_states`).
- BidirectionalBackbone: the same stack with BidirectionalMamba mixers (Caduceus or Vim-v2 style).
- RCPSBackbone: a Caduceus-PS-style reverse-complement-equivariant wrapper of a bidirectional stack.

``chunk_len`` (all three; None = off) runs sequences longer than it in state-carrying chunks with exact
gradients and memory bounded by one chunk (see ``mambaverse.long_context``); ``checkpoint_layers`` adds
per-layer activation checkpointing. Both are plain hyperparameters, so a config sets them through
``backbone_overrides``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .cache import BackboneCache
from .errors import ConfigError, ShapeError
from .mixers import BidirectionalMamba, Mamba, Mamba2, RMSNorm
from .rc import RCEquivariant
from .registry import builder


def _chunk_len(chunk_len, who):
    """Validate a backbone's ``chunk_len`` switch: None/0 = off, else positions per state-carrying chunk."""
    if chunk_len is not None and (isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 0):
        raise ConfigError(f"{who}: chunk_len={chunk_len!r}; expected a positive int, or 0/None for no chunking")
    return chunk_len or None


class ResidualBlock(nn.Module):
    """hidden + mixer(norm(hidden)); the residual stream stays in the input dtype."""

    def __init__(self, d_model: int, mixer: nn.Module, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer

    def forward(self, hidden, **mixer_kwargs):
        out = self.mixer(self.norm(hidden), **mixer_kwargs)
        if isinstance(out, tuple):
            return hidden + out[0], out[1]
        return hidden + out


class _Stack(nn.Module):
    """Shared machinery: the block list, final norm, input checks, optional activation checkpointing."""

    def _build(self, d_model, blocks, norm_eps, checkpoint_layers):
        self.d_model = d_model
        self.layers = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(d_model, norm_eps)
        self.checkpoint_layers = checkpoint_layers

    def _check(self, hidden):
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ShapeError(f"{type(self).__name__}: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length, d_model={self.d_model})")

    def _run(self, layer, hidden, **kwargs):
        if self.checkpoint_layers and self.training and torch.is_grad_enabled():
            return checkpoint(lambda h: layer(h, **kwargs), hidden, use_reentrant=False)
        return layer(hidden, **kwargs)


@builder
class CausalBackbone(_Stack):
    def __init__(self, d_model: int = 128, n_layer: int = 4, mixer: str = "mamba", d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, dt_rank: int | None = None, headdim: int = 32,
                 chunk_size: int = 64, norm_eps: float = 1e-5, checkpoint_layers: bool = False,
                 backend: str = "auto", chunk_len: int | None = None):
        super().__init__()
        self.chunk_len = _chunk_len(chunk_len, "CausalBackbone")
        if self.chunk_len and mixer != "mamba":
            raise ConfigError(f"CausalBackbone: chunk_len needs mixer='mamba' (state carrying); got mixer={mixer!r}")
        if mixer == "mamba":
            make = lambda: Mamba(d_model, d_state, d_conv, expand, dt_rank, backend=backend)  # noqa: E731
        elif mixer == "mamba2":
            make = lambda: Mamba2(d_model, d_state, d_conv, expand, headdim, chunk_size=chunk_size,  # noqa: E731
                                  backend=backend)
        else:
            raise ConfigError(f"CausalBackbone: mixer={mixer!r}; expected 'mamba' or 'mamba2'")
        self.mixer_type = mixer
        self._build(d_model, [ResidualBlock(d_model, make(), norm_eps) for _ in range(n_layer)], norm_eps,
                    checkpoint_layers)

    def forward(self, hidden, initial_states=None, return_final_states=False):
        """hidden (B, L, d_model). initial_states/final states: one (conv_state, ssm_state) per layer,
        so that a long sequence can be processed in chunks that carry their state (Mamba-1 mixer only)."""
        self._check(hidden)
        carry = initial_states is not None or return_final_states
        if self.chunk_len and not carry and hidden.shape[1] > self.chunk_len:
            from .long_context import chunked_causal_forward  # chunks that carry state, exact gradients

            return chunked_causal_forward(self, hidden, self.chunk_len, self.checkpoint_layers)
        if carry and self.mixer_type != "mamba":
            raise ConfigError("CausalBackbone: carrying state across calls needs mixer='mamba'")
        finals = []
        for i, layer in enumerate(self.layers):
            if carry:
                hidden, state = self._run(layer, hidden, initial_state=None if initial_states is None
                                          else initial_states[i], return_final_state=True)
                finals.append(state)
            else:
                hidden = self._run(layer, hidden)
        out = self.norm_f(hidden)
        return (out, finals) if return_final_states else out

    def allocate_cache(self, batch: int, device=None, dtype=torch.float32) -> BackboneCache:
        device = device if device is not None else self.norm_f.weight.device
        return BackboneCache([layer.mixer.allocate_cache(batch, device, dtype) for layer in self.layers])

    @torch.no_grad()
    def step(self, hidden_t, cache: BackboneCache):
        """hidden_t (B, d_model) at the next position -> features (B, d_model); advances cache."""
        if hidden_t.dim() != 2 or hidden_t.shape[-1] != self.d_model:
            raise ShapeError(f"CausalBackbone.step: input has shape {tuple(hidden_t.shape)}, "
                             f"expected (batch, d_model={self.d_model})")
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden_t = hidden_t + layer.mixer.step(layer.norm(hidden_t), layer_cache)
        cache.seqlen_offset += 1
        return self.norm_f(hidden_t)


@builder
class BidirectionalBackbone(_Stack):
    def __init__(self, d_model: int = 128, n_layer: int = 4, variant: str = "caduceus", strategy: str = "add",
                 tie_projections: bool = True, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, norm_eps: float = 1e-5, checkpoint_layers: bool = False,
                 backend: str = "auto", chunk_len: int | None = None):
        super().__init__()
        self.chunk_len = _chunk_len(chunk_len, "BidirectionalBackbone")
        blocks = [ResidualBlock(d_model, BidirectionalMamba(d_model, d_state, d_conv, expand, dt_rank, variant, strategy,
                                                            tie_projections, backend=backend), norm_eps)
                  for _ in range(n_layer)]
        self._build(d_model, blocks, norm_eps, checkpoint_layers)

    def forward(self, hidden):
        self._check(hidden)
        if self.chunk_len and hidden.shape[1] > self.chunk_len:
            from .long_context import chunked_bidirectional_forward  # layer-major, exact gradients

            return chunked_bidirectional_forward(self, hidden, self.chunk_len)
        for layer in self.layers:
            hidden = self._run(layer, hidden)
        return self.norm_f(hidden)


@builder
class RCPSBackbone(nn.Module):
    """Reverse-complement equivariant (Caduceus-PS): channels split in two halves of d_model // 2 that
    share one BidirectionalBackbone; f(rc_features(h)) == rc_features(f(h)), with rc_features flipping
    length and channels. Token embeddings and heads that respect RC live in the genomics package."""

    def __init__(self, d_model: int = 128, n_layer: int = 4, variant: str = "caduceus", strategy: str = "add",
                 tie_projections: bool = True, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, norm_eps: float = 1e-5, checkpoint_layers: bool = False,
                 backend: str = "auto", chunk_len: int | None = None):
        super().__init__()
        if d_model % 2:
            raise ConfigError(f"RCPSBackbone: d_model={d_model} must be even (two RC-paired halves)")
        self.d_model = d_model
        inner = BidirectionalBackbone(d_model // 2, n_layer, variant, strategy, tie_projections, d_state, d_conv,
                                      expand, dt_rank, norm_eps, checkpoint_layers, backend, chunk_len)
        self.rc = RCEquivariant(inner)

    def forward(self, hidden):
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ShapeError(f"RCPSBackbone: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length, d_model={self.d_model})")
        return self.rc(hidden)
