"""Sequence backbones behind one contract: hidden states (B, L, d_model) -> features (B, L, d_model).

- :class:`CausalBackbone`: pre-norm residual stack of Mamba (or Mamba-2) mixers with RMSNorm; recurrent
  decoding (``allocate_cache``, ``step``) and state carrying across calls (``initial_states``).
- :class:`BidirectionalBackbone`: the same stack with BidirectionalMamba mixers (Caduceus or Vim-v2 style).
- :class:`RCPSBackbone`: a Caduceus-PS-style reverse-complement-equivariant wrapper of a bidirectional stack.

All three are :class:`MixerStack` s (or wrap one) built from a mixer factory (``mambaverse.mixers.
mixer_factory``), so a new mixer is a new ``mixer=`` value, not a backbone edit. ``chunk_len`` runs long
sequences in state-carrying chunks with exact gradients (``backbones.sweep``); ``checkpoint_layers`` adds
per-layer activation checkpointing. Both are plain hyperparameters (``backbone_overrides`` in configs).
"""
from .bidirectional import BidirectionalBackbone, RCPSBackbone
from .block import ResidualBlock
from .causal import CausalBackbone
from .stack import MixerStack
from .sweep import Chunking

__all__ = ["BidirectionalBackbone", "CausalBackbone", "Chunking", "MixerStack", "RCPSBackbone", "ResidualBlock"]
