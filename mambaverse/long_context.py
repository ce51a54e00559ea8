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

from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone, _chunk_len
from .errors import ConfigError, ShapeError
from .rc import rc_features



def _own(state):
    """A carried state as its own small tensor: the conv tail is a view into the chunk's activations, and
    keeping the view would keep the whole chunk's buffer alive across chunks (memory O(L), not O(chunk))."""
    return state.clone() if state is not None else None


def additive_scale(mixer):
    """combine(f, r) == s * (f + r) for a BidirectionalMamba that adds its directions: s; None if it multiplies."""
    if mixer.strategy == "ew_multiply":
        return None
    return 0.5 if mixer.variant == "vim_v2" else 1.0


def _pairs(flat):
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)] if flat else None


def _runner(module: nn.Module, recompute: bool, preserve_rng_state: bool):
    """fn(*args) run as one checkpoint region when recomputing (training with grad), else directly."""
    active = recompute and module.training and torch.is_grad_enabled()

    def run(fn, *args):
        if active:
            return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state)
        return fn(*args)

    return run, active


def chunked_causal_forward(bb: CausalBackbone, hidden, chunk_len: int, checkpoint_layers: bool = False,
                           recompute: bool = True, preserve_rng_state: bool = False):
    """CausalBackbone (mixer 'mamba') over ``hidden`` (B, L, d_model), chunk-major; see the module docstring."""
    if bb.mixer_type != "mamba":
        raise ConfigError(f"chunked_causal_forward: mixer={bb.mixer_type!r} cannot carry state; expected 'mamba'")
    layers = list(bb.layers)
    ckpt, active = _runner(bb, recompute, preserve_rng_state)
    nested = checkpoint_layers and active

    def layer_step(layer, h, *flat):
        h, (conv, ssm) = layer(h, initial_state=(flat[0], flat[1]) if flat else None, return_final_state=True)
        return h, _own(conv), _own(ssm)

    def run_chunk(h, *flat):
        states = _pairs(flat)
        finals = []
        for i, layer in enumerate(layers):
            st = states[i] if states else ()
            if nested:
                h, conv, ssm = checkpoint(layer_step, layer, h, *st, use_reentrant=False,
                                          preserve_rng_state=preserve_rng_state)
            else:
                h, conv, ssm = layer_step(layer, h, *st)
            finals += [conv, ssm]
        return (bb.norm_f(h), *finals)

    outs, flat = [], ()
    for piece in hidden.split(chunk_len, dim=1):
        out, *flat = ckpt(run_chunk, piece, *flat)
        outs.append(out)
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def chunked_bidirectional_forward(bb: BidirectionalBackbone, hidden, chunk_len: int, recompute: bool = True,
                                  preserve_rng_state: bool = False):
    """BidirectionalBackbone over ``hidden`` (B, L, d_model), layer-major; see the module docstring."""
    ckpt, _ = _runner(bb, recompute, preserve_rng_state)
    pieces = list(hidden.split(chunk_len, dim=1))
    n = len(pieces)

    def reverse_chunk(layer, h, *state):
        r, (conv, ssm) = layer.mixer.direction(layer.norm(h), True, state or None, True)
        return r, _own(conv), _own(ssm)

    def forward_chunk(layer, h, r, *state):
        f, (conv, ssm) = layer.mixer.direction(layer.norm(h), False, state or None, True)
        if r is None:  # additive combine: the reverse part is added outside, so the region need not keep it
            return h + additive_scale(layer.mixer) * f, _own(conv), _own(ssm)
        return h + layer.mixer.combine(f, r), _own(conv), _own(ssm)

    for layer in bb.layers:
        revs, state = [None] * n, ()
        for i in range(n - 1, -1, -1):  # the reverse direction carries its state right to left
            revs[i], *state = ckpt(reverse_chunk, layer, pieces[i], *state)
        state = ()
        scale = additive_scale(layer.mixer)
        for i in range(n):
            if scale is None:
                pieces[i], *state = ckpt(forward_chunk, layer, pieces[i], revs[i], *state)
            else:
                out, *state = ckpt(forward_chunk, layer, pieces[i], None, *state)
                pieces[i] = out + scale * revs[i]
            revs[i] = None  # consumed: free it
    outs = [ckpt(bb.norm_f, p) for p in pieces]  # the final norm keeps nothing either
    return torch.cat(outs, dim=1) if n > 1 else outs[0]


class ChunkedBackbone(nn.Module):
    """Run ``backbone`` over the length in chunks of ``chunk_len`` that carry their state; exact.

    The same switch exists on the backbones themselves (``chunk_len=`` on CausalBackbone,
    BidirectionalBackbone, RCPSBackbone), which is what configs use (``backbone_overrides: {chunk_len: ...}``);
    this wrapper is for a backbone built elsewhere.

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
        self.chunk_len = _chunk_len(chunk_len, "ChunkedBackbone")
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

    def forward(self, hidden):
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ShapeError(f"ChunkedBackbone: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length, d_model={self.d_model})")
        if self.chunk_len is None:
            return self.backbone(hidden)
        opts = dict(recompute=self.checkpoint_chunks, preserve_rng_state=self.preserve_rng_state)
        if self.kind == "causal":
            return chunked_causal_forward(self.backbone, hidden, self.chunk_len, self.checkpoint_layers, **opts)
        if self.kind == "bidirectional":
            return chunked_bidirectional_forward(self.backbone, hidden, self.chunk_len, **opts)
        k = hidden.shape[-1] // 2  # RCPS: the same parameter sharing as RCEquivariant, chunked inside
        both = torch.cat([hidden[..., :k], rc_features(hidden[..., k:])], dim=0)
        out = chunked_bidirectional_forward(self.backbone.rc.module, both, self.chunk_len, **opts)
        fwd, rev = out.chunk(2, dim=0)
        return torch.cat([fwd, rc_features(rev)], dim=-1)
