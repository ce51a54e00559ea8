"""Chunked, state-carrying training for long sequences, with exact gradients.

``ChunkedBackbone(backbone, chunk_len, checkpoint_layers)`` wraps a ``CausalBackbone`` (Mamba-1 mixer),
``BidirectionalBackbone`` or ``RCPSBackbone`` and computes exactly what the backbone computes, but
``chunk_len`` positions at a time, so that activation memory is bounded by one chunk instead of the length:

* **Causal**, chunk-major: chunk ``i`` runs through *all* layers, starting from the per-layer states
  (conv tail, SSM state) left by chunk ``i-1``. Each chunk is one ``torch.utils.checkpoint`` region whose
  inputs are the chunk's hidden states and the boundary states, so forward keeps only those; backward
  recomputes one chunk at a time from its stored boundary states, and the gradient of every boundary
  state flows into the previous chunk: nothing is truncated. With ``checkpoint_layers`` each layer inside
  the chunk is checkpointed too (nested), so the recompute peak is one layer of one chunk.
* **Bidirectional**, layer-major (a layer's reverse direction at chunk ``i`` depends on everything to its
  right, so no single left-to-right sweep can work). For each layer:
    1. right-to-left sweep: the reverse direction of every chunk, carrying its state from the end toward
       the start; each chunk is a checkpoint region that returns its contribution (B, chunk, d_model) and
       the state entering the chunk to its left;
    2. left-to-right sweep: the forward direction carrying its state, combined with the stored reverse
       contribution and the residual; again one checkpoint region per chunk.
  Memory: each layer's input (B, L, d_model), one reverse contribution being consumed, and one chunk's
  activations. Every chunk is already checkpointed per layer, so ``checkpoint_layers`` changes nothing.

Without grad (or in eval mode) no checkpointing is done; the chunking alone bounds inference memory.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from .errors import ConfigError, ShapeError
from .rc import rc_features


def _flatten(states):
    """[(conv, ssm), ...] -> [conv, ssm, ...]; None stays None."""
    return None if states is None else [t for pair in states for t in pair]


def _pairs(flat):
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)] if flat else None


class ChunkedBackbone(nn.Module):
    """Run ``backbone`` over the length in chunks of ``chunk_len`` that carry their state; exact.

    Args:
        backbone: a CausalBackbone (mixer 'mamba'), BidirectionalBackbone or RCPSBackbone.
        chunk_len: positions per chunk; ``None`` or 0 switches chunking off (plain backbone forward).
        checkpoint_layers: also checkpoint each layer inside a chunk (causal stacks); ``None`` keeps the
            backbone's own ``checkpoint_layers`` setting. Without chunking it sets the backbone's flag.
        checkpoint_chunks: recompute each chunk in backward (the memory saving); turn off only to debug.
        preserve_rng_state: replay the RNG in recomputation; the Mamba stacks draw no random numbers,
            so it is off by default (it costs an RNG-state copy per chunk).
    """

    def __init__(self, backbone: nn.Module, chunk_len: int | None = 65536, checkpoint_layers: bool | None = None,
                 checkpoint_chunks: bool = True, preserve_rng_state: bool = False):
        super().__init__()
        if chunk_len is not None and (not isinstance(chunk_len, int) or chunk_len < 0):
            raise ConfigError(f"ChunkedBackbone: chunk_len={chunk_len!r}; expected a positive int, or 0/None for no chunking")
        if isinstance(backbone, CausalBackbone):
            if backbone.mixer_type != "mamba":
                raise ConfigError(f"ChunkedBackbone: CausalBackbone with mixer={backbone.mixer_type!r} cannot carry "
                                  "state; expected mixer='mamba'")
            self.kind = "causal"
        elif isinstance(backbone, BidirectionalBackbone):
            self.kind = "bidirectional"
        elif isinstance(backbone, RCPSBackbone):
            self.kind = "rcps"
        else:
            raise ConfigError(f"ChunkedBackbone: backbone is a {type(backbone).__name__}; expected CausalBackbone, "
                              "BidirectionalBackbone or RCPSBackbone")
        self.backbone = backbone
        self.d_model = backbone.d_model
        self.chunk_len = chunk_len or None
        self.checkpoint_chunks = checkpoint_chunks
        self.preserve_rng_state = preserve_rng_state
        inner = backbone.rc.module if self.kind == "rcps" else backbone
        if checkpoint_layers is None:
            checkpoint_layers = inner.checkpoint_layers
        self.checkpoint_layers = bool(checkpoint_layers)
        if self.chunk_len is None:
            inner.checkpoint_layers = self.checkpoint_layers
        self.config = {"builder": "ChunkedBackbone", "backbone": getattr(backbone, "config", None),
                       "chunk_len": self.chunk_len, "checkpoint_layers": self.checkpoint_layers}

    # ------------------------------------------------------------------ helpers
    def _recompute(self) -> bool:
        return self.checkpoint_chunks and self.training and torch.is_grad_enabled()

    def _ckpt(self, fn, *args):
        if self._recompute():
            return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=self.preserve_rng_state)
        return fn(*args)

    def forward(self, hidden):
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ShapeError(f"ChunkedBackbone: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length, d_model={self.d_model})")
        if self.chunk_len is None:
            return self.backbone(hidden)
        if self.kind == "causal":
            return self._causal(self.backbone, hidden)
        if self.kind == "bidirectional":
            return self._bidirectional(self.backbone, hidden)
        k = hidden.shape[-1] // 2  # RCPS: the same parameter sharing as RCEquivariant, chunked inside
        both = torch.cat([hidden[..., :k], rc_features(hidden[..., k:])], dim=0)
        fwd, rev = self._bidirectional(self.backbone.rc.module, both).chunk(2, dim=0)
        return torch.cat([fwd, rc_features(rev)], dim=-1)

    # ------------------------------------------------------------------ causal: chunk-major
    def _causal(self, bb: CausalBackbone, hidden):
        layers = list(bb.layers)
        nested = self.checkpoint_layers and self._recompute()

        def layer_step(layer, h, flat):
            init = (flat[0], flat[1]) if flat else None
            h, (conv, ssm) = layer(h, initial_state=init, return_final_state=True)
            return h, conv, ssm

        def run_chunk(h, *flat):
            states = _pairs(flat)
            finals = []
            for i, layer in enumerate(layers):
                st = states[i] if states else ()
                if nested:
                    h, conv, ssm = checkpoint(lambda x, *s, _l=layer: layer_step(_l, x, s), h, *st,
                                              use_reentrant=False, preserve_rng_state=self.preserve_rng_state)
                else:
                    h, conv, ssm = layer_step(layer, h, st)
                finals += [conv, ssm]
            return (bb.norm_f(h), *finals)

        outs, flat = [], ()
        for piece in hidden.split(self.chunk_len, dim=1):
            out, *flat = self._ckpt(run_chunk, piece, *flat)
            outs.append(out)
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    # ------------------------------------------------------------------ bidirectional: layer-major
    def _bidirectional(self, bb: BidirectionalBackbone, hidden):
        pieces = list(hidden.split(self.chunk_len, dim=1))
        n = len(pieces)
        for layer in bb.layers:
            mixer, norm = layer.mixer, layer.norm

            def reverse_chunk(h, *state, _m=mixer, _n=norm):
                r, (conv, ssm) = _m.direction(_n(h), True, state or None, True)
                return r, conv, ssm

            def forward_chunk(h, r, *state, _m=mixer, _n=norm):
                f, (conv, ssm) = _m.direction(_n(h), False, state or None, True)
                return h + _m.combine(f, r), conv, ssm

            revs, state = [None] * n, ()
            for i in range(n - 1, -1, -1):  # the reverse direction carries its state right to left
                revs[i], *state = self._ckpt(reverse_chunk, pieces[i], *state)
            state = ()
            for i in range(n):
                pieces[i], *state = self._ckpt(forward_chunk, pieces[i], revs[i], *state)
                revs[i] = None  # consumed: free it
        outs = [bb.norm_f(p) for p in pieces]
        return torch.cat(outs, dim=1) if n > 1 else outs[0]


def chunked(backbone: nn.Module, chunk_len: int | None = 65536, checkpoint_layers: bool | None = None) -> ChunkedBackbone:
    """Shorthand for ``ChunkedBackbone(backbone, chunk_len, checkpoint_layers)``."""
    return ChunkedBackbone(backbone, chunk_len, checkpoint_layers)
