"""Chunked, state-carrying training for long sequences, with exact gradients: a wrapper for a backbone built elsewhere.

The work is done by the backbones' own chunk sweep (``mambaverse.backbones.sweep``): chunk-major for
causal stacks, layer-major for bidirectional ones, each chunk a checkpoint region that carries its state,
so activation memory is bounded by one chunk instead of the length. The same switch exists on the
backbones themselves (``chunk_len=`` on CausalBackbone, BidirectionalBackbone, RCPSBackbone), which is what
configs use (``backbone_overrides: {chunk_len: ...}``).
"""
from __future__ import annotations

import torch.nn as nn

from .backbones import Chunking, MixerStack, RCPSBackbone
from .backbones.sweep import check_chunk_len
from .errors import ConfigError, ShapeError

__all__ = ["ChunkedBackbone", "Chunking", "chunked_forward"]


def chunked_forward(backbone: nn.Module, hidden, chunk_len: int, checkpoint_layers: bool = False,
                    recompute: bool = True, preserve_rng_state: bool = False):
    """``backbone(hidden)`` computed ``chunk_len`` positions at a time (see ``backbones.sweep``); exact."""
    return backbone(hidden, chunking=Chunking(chunk_len, checkpoint_layers, recompute, preserve_rng_state))


class ChunkedBackbone(nn.Module):
    """Run ``backbone`` over the length in chunks of ``chunk_len`` that carry their state; exact.

    Args:
        backbone: a CausalBackbone or BidirectionalBackbone whose mixers carry state, or an RCPSBackbone.
        chunk_len: positions per chunk; ``None`` or 0 switches chunking off (plain backbone forward).
        checkpoint_layers: also checkpoint each layer inside a chunk (causal stacks); ``None`` keeps the
            backbone's own ``checkpoint_layers`` setting. The backbone itself is never modified.
        checkpoint_chunks: recompute each chunk in backward (the memory saving); turn off only to debug.
        preserve_rng_state: replay the RNG in recomputation; the Mamba stacks draw no random numbers,
            so it is off by default (it costs an RNG-state copy per chunk).

    Forward: hidden (B, L, d_model) -> features (B, L, d_model). State-dict keys are ``backbone.*``.
    Raises ConfigError for another kind of module or a bad chunk_len, ShapeError for a wrong input shape.
    """

    def __init__(self, backbone: nn.Module, chunk_len: int | None = 65536, checkpoint_layers: bool | None = None,
                 checkpoint_chunks: bool = True, preserve_rng_state: bool = False):
        super().__init__()
        self.chunk_len = check_chunk_len(chunk_len, "ChunkedBackbone")
        stack = backbone.rc.module if isinstance(backbone, RCPSBackbone) else backbone
        if not isinstance(stack, MixerStack) or not stack.carries_state:
            raise ConfigError(f"ChunkedBackbone: backbone is a {type(backbone).__name__} that cannot carry state "
                              "across chunks; expected a CausalBackbone (mixer 'mamba'), BidirectionalBackbone or RCPSBackbone")
        self.backbone = backbone
        self.d_model = backbone.d_model
        self.checkpoint_chunks = checkpoint_chunks
        self.preserve_rng_state = preserve_rng_state
        self.checkpoint_layers = bool(stack.checkpoint_layers if checkpoint_layers is None else checkpoint_layers)
        self.config = {"builder": "ChunkedBackbone", "backbone": getattr(backbone, "config", None),
                       "chunk_len": self.chunk_len, "checkpoint_layers": self.checkpoint_layers}

    def forward(self, hidden):
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ShapeError(f"ChunkedBackbone: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length, d_model={self.d_model})")
        if self.chunk_len is None:
            return self.backbone(hidden)
        return chunked_forward(self.backbone, hidden, self.chunk_len, self.checkpoint_layers,
                               self.checkpoint_chunks, self.preserve_rng_state)
