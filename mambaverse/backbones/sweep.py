"""The chunk sweeps: a stack of residual blocks over a sequence cut into state-carrying chunks, exactly.

Built only on the mixers' state API (``mambaverse.mixers.state``). Used by the backbones' ``chunk_len``,
by ``mambaverse.long_context.ChunkedBackbone`` and, with states entering from other ranks, by
``mambaverse.context_parallel``.

* Chunk-major (:func:`sweep_chunks`, stacks whose mixers all run one forward direction): chunk ``i`` runs
  through *all* layers from the per-layer states left by chunk ``i-1``. Each chunk is one
  ``torch.utils.checkpoint`` region whose inputs are the chunk's hidden states and the boundary states,
  so forward keeps only those (and the last chunk's activations: backward starts there, so it is not
  recomputed; ``Chunking.recompute_last``); backward recomputes one chunk at a time, and the gradient of every
  boundary state flows into the previous chunk: nothing is truncated. ``checkpoint_layers`` nests a
  region per layer inside the chunk, so the recompute peak is one layer of one chunk.
* Layer-major (:func:`sweep_layers`, any state-carrying stack; bidirectional ones need it, since a
  layer's reverse direction at chunk ``i`` depends on everything to its right). Per layer: the reverse
  direction right to left, keeping each chunk's contribution, then the forward direction left to right,
  combined with it and the residual; one checkpoint region per chunk and direction. Memory: each layer's
  input, one stored reverse contribution per chunk being consumed, and one chunk's activations.

Without grad (or in eval mode) nothing is checkpointed; the chunking alone bounds inference memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..mixers import MixerState


@dataclass(frozen=True)
class Chunking:
    """How to cut a sequence for a state-carrying sweep.

    chunk_len: positions per chunk (the long-context split; not the SSD kernel's ``chunk_size``).
    checkpoint_layers: also checkpoint each layer inside a chunk (chunk-major sweeps).
    recompute: checkpoint each chunk, recomputing it in backward (the memory saving); off only to debug.
    preserve_rng_state: replay the RNG in recomputation; Mamba stacks draw no random numbers, so it is off.
    recompute_last: also checkpoint the last chunk of a chunk-major sweep. Off by default: backward starts
        with that chunk, so its recompute would rebuild the activations the forward just dropped; keeping
        them saves one chunk's forward and leaves the backward's peak unchanged (they are held from the end
        of the forward through the loss instead).
    """

    chunk_len: int
    checkpoint_layers: bool = False
    recompute: bool = True
    preserve_rng_state: bool = False
    recompute_last: bool = False


def check_chunk_len(chunk_len, who: str) -> int | None:
    """Validate a ``chunk_len`` setting: None/0 = off, else a positive int. Raises ConfigError."""
    if chunk_len is not None and (isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 0):
        raise ConfigError(f"{who}: chunk_len={chunk_len!r}; expected a positive int, or 0/None for no chunking")
    return chunk_len or None


def own(t):
    """A carried state as its own small tensor: the conv tail is a view into the chunk's activations, and
    keeping the view would keep the whole chunk's buffer alive across chunks (memory O(L), not O(chunk))."""
    return t.clone() if t is not None else None


def chunk_runner(module: nn.Module, chunking: Chunking) -> tuple[Callable, bool]:
    """(run, active): ``run(fn, *args)`` is one checkpoint region when recomputing in training with grad."""
    active = chunking.recompute and module.training and torch.is_grad_enabled()

    def run(fn, *args):
        if active:
            return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=chunking.preserve_rng_state)
        return fn(*args)

    return run, active


def _cat(pieces):
    return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]


def sweep_chunks(stack: nn.Module, hidden: torch.Tensor, chunking: Chunking) -> torch.Tensor:
    """Chunk-major sweep of ``stack`` (``layers`` of one-direction state-carrying blocks, ``norm_f``) over
    hidden (B, L, d_model) -> features (B, L, d_model); see the module docstring."""
    layers = list(stack.layers)
    run, active = chunk_runner(stack, chunking)
    nested = chunking.checkpoint_layers and active

    def layer_step(layer, h, conv, ssm):
        h, state = layer(h, initial_state=MixerState(conv, ssm), return_final_state=True)
        return h, own(state[0]), own(state[1])

    def run_chunk(h, *flat):
        finals = []
        for i, layer in enumerate(layers):
            conv, ssm = (flat[2 * i], flat[2 * i + 1]) if flat else (None, None)
            if nested:
                h, conv, ssm = checkpoint(layer_step, layer, h, conv, ssm, use_reentrant=False,
                                          preserve_rng_state=chunking.preserve_rng_state)
            else:
                h, conv, ssm = layer_step(layer, h, conv, ssm)
            finals += [conv, ssm]
        return (stack.norm_f(h), *finals)

    outs, flat = [], ()
    pieces = hidden.split(chunking.chunk_len, dim=1)
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1 and len(pieces) > 1 and not chunking.recompute_last
        out, *flat = (run_chunk if last else lambda *a: run(run_chunk, *a))(piece, *flat)
        outs.append(out)
    return _cat(outs)


def _direction_chunk(block, reverse, h, conv, ssm):
    y, state = block.mixer.direction(block.norm(h), reverse, MixerState(conv, ssm), True)
    return y, own(state[0]), own(state[1])


def _residual_chunk(block, h, rev, conv, ssm):
    """h + the block's output on one chunk, the forward direction computed here and the reverse one given
    (None: a one-direction mixer, or an additive combine whose reverse part the caller adds outside)."""
    f, conv, ssm = _direction_chunk(block, False, h, conv, ssm)
    out = h + (block.mixer.combine(f, rev) if rev is not None else block.mixer.additive_scale * f)
    return out, conv, ssm


def sweep_layer(block: nn.Module, pieces: list, run: Callable, entering: dict | None = None) -> list:
    """One residual block over the chunks ``pieces`` (each (B, l_i, d_model)), layer-major; returns the new pieces.

    ``entering`` maps a direction (reverse flag) to the MixerState entering the whole run of pieces in that
    direction (before the first piece; after the last, reversed); missing = zeros.
    """
    mixer = block.mixer
    entering = entering or {}
    n = len(pieces)
    revs = None
    if True in mixer.directions:  # the reverse direction carries its state right to left
        revs = [None] * n
        state = tuple(entering.get(True) or (None, None))
        for i in range(n - 1, -1, -1):
            revs[i], *state = run(_direction_chunk, block, True, pieces[i], *state)
    scale = mixer.additive_scale
    state = tuple(entering.get(False) or (None, None))
    out = list(pieces)
    for i in range(n):
        if revs is not None and scale is None:
            out[i], *state = run(_residual_chunk, block, pieces[i], revs[i], *state)
        else:  # additive: the region need not keep the reverse part, which is added here
            out[i], *state = run(_residual_chunk, block, pieces[i], None, *state)
            if revs is not None:
                out[i] = out[i] + scale * revs[i]
        if revs is not None:
            revs[i] = None  # consumed: free it
        pieces[i] = None
    return out


def sweep_layers(stack: nn.Module, hidden: torch.Tensor, chunking: Chunking,
                 entering: Callable | None = None) -> torch.Tensor:
    """Layer-major sweep of ``stack`` over hidden (B, L, d_model) -> features; see the module docstring.

    ``entering(block, pieces, run) -> {reverse: MixerState}`` gives, per layer, the states entering the
    pieces from outside (context parallel's exchange); None = zeros at both ends.
    """
    run, _ = chunk_runner(stack, chunking)
    pieces = list(hidden.split(chunking.chunk_len, dim=1))
    for block in stack.layers:
        states = entering(block, pieces, run) if entering is not None else None
        pieces = sweep_layer(block, pieces, run, states)
    return _cat([run(stack.norm_f, p) for p in pieces])  # the final norm keeps nothing either
