"""MixerStack: the shared machinery of the sequence backbones (B, L, d_model) -> (B, L, d_model)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, ShapeError
from ..mixers import RMSNorm, mixer_factory
from .block import ResidualBlock
from .sweep import Chunking, check_chunk_len, sweep_chunks, sweep_layers


def weight_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating weight matrix (dim >= 2): the dtype its inputs must have."""
    return next((p.dtype for p in module.parameters() if p.dim() >= 2 and p.is_floating_point()), None)


def check_input_dtype(x: torch.Tensor, expected: torch.dtype | None, who: str, what: str = "input") -> None:
    """Raise a one-line ShapeError if float ``x`` has another dtype than the weights (``expected``).

    Inputs are never cast silently (a float64 input would lose precision the caller asked for; a float32 input to
    a bfloat16 model would hide a missing ``.to(dtype)``): the caller casts, or runs under ``torch.autocast``,
    which handles mixed dtypes itself and is let through.
    """
    if expected is None or x.dtype == expected or not x.is_floating_point():
        return
    if torch.is_autocast_enabled(x.device.type):
        return
    raise ShapeError(f"{who}: {what} has dtype {x.dtype}; expected {expected} (the dtype of the weights): cast it "
                     f"with .to({expected}), move the model with .to({x.dtype}), or run under torch.autocast")


def check_hidden(hidden, d_model: int, who: str, dtype: torch.dtype | None = None) -> None:
    """Raise a one-line ShapeError unless ``hidden`` is a floating (B, L, d_model) tensor with L >= 1 (and, given
    ``dtype``, of that dtype outside autocast: see :func:`check_input_dtype`).

    Integer token ids and empty sequences are the usual mistakes: say so instead of failing deep in a mixer.
    """
    if not torch.is_tensor(hidden):
        raise ShapeError(f"{who}: input is a {type(hidden).__name__}; expected a float tensor (batch, length, "
                         f"d_model={d_model})")
    if not (hidden.is_floating_point() or hidden.is_complex()):
        raise ShapeError(f"{who}: input has dtype {hidden.dtype} and shape {tuple(hidden.shape)} (token ids?); a "
                         f"backbone takes float hidden states (batch, length, d_model={d_model}): embed ids first")
    if hidden.dim() != 3 or hidden.shape[-1] != d_model:
        raise ShapeError(f"{who}: input has shape {tuple(hidden.shape)}, expected (batch, length, d_model={d_model})")
    if hidden.shape[1] == 0:
        raise ShapeError(f"{who}: input has length 0 (shape {tuple(hidden.shape)}); expected at least one position")
    check_input_dtype(hidden, dtype, who)


class MixerStack(nn.Module):
    """``n_layer`` pre-norm residual blocks around mixers built by one factory, then a final RMSNorm.

    Subclasses (the ``@builder`` backbones) call :meth:`_build` with their mixer and hyperparameters.
    ``forward`` runs the plain stack, a state-carrying chunk sweep when the sequence is longer than
    ``chunk_len`` (see ``backbones.sweep``), or the ``runner`` installed on it.

    Attributes:
        layers: ``nn.ModuleList`` of :class:`ResidualBlock` (state-dict keys ``layers.{i}.norm``/``.mixer``).
        norm_f: the final RMSNorm.
        chunk_len: default chunking of ``forward`` (None = off).
        runner: None, or a callable ``runner(stack, hidden, chunking) -> features`` that replaces the local
            sweep (context parallel installs one; see ``mambaverse.context_parallel``).
    """

    runner: Callable | None = None

    def _build(self, d_model: int, n_layer: int, mixer, mixer_options: dict | None, norm_eps: float,
               checkpoint_layers: bool, chunk_len: int | None, **shared):
        who = type(self).__name__
        self.d_model = d_model
        self.chunk_len = check_chunk_len(chunk_len, who)
        make = mixer_factory(mixer, d_model, mixer_options, who, **shared)
        self.layers = nn.ModuleList(ResidualBlock(d_model, make(), norm_eps) for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model, norm_eps)
        self.checkpoint_layers = checkpoint_layers
        if self.chunk_len and not self.carries_state:
            raise ConfigError(f"{who}: chunk_len needs a mixer that carries state (e.g. 'mamba'); got mixer={mixer!r}")

    @property
    def carries_state(self) -> bool:
        """Whether every mixer implements the state API (chunking, context parallel, initial_states)."""
        return all(getattr(layer.mixer, "carries_state", False) for layer in self.layers)

    @property
    def one_direction(self) -> bool:
        return all(tuple(getattr(layer.mixer, "directions", (False,))) == (False,) for layer in self.layers)

    supports_context_parallel = carries_state

    def _check(self, hidden):
        check_hidden(hidden, self.d_model, type(self).__name__, weight_dtype(self))

    def _run(self, layer, hidden, **kwargs):
        if self.checkpoint_layers and self.training and torch.is_grad_enabled():
            return checkpoint(lambda h: layer(h, **kwargs), hidden, use_reentrant=False)
        return layer(hidden, **kwargs)

    def chunking(self, chunking: Chunking | int | None = None) -> Chunking | None:
        """The Chunking a forward uses: the given one (an int is a chunk_len) or the stack's ``chunk_len``."""
        if isinstance(chunking, Chunking):
            return chunking
        chunk_len = check_chunk_len(chunking, type(self).__name__) or self.chunk_len
        return Chunking(chunk_len, self.checkpoint_layers) if chunk_len else None

    def sweep(self, hidden, chunking: Chunking):
        """The state-carrying chunk sweep (chunk-major for one-direction mixers, else layer-major)."""
        if not self.carries_state:
            raise ConfigError(f"{type(self).__name__}: chunking needs mixers that carry state")
        return (sweep_chunks if self.one_direction else sweep_layers)(self, hidden, chunking)

    def forward(self, hidden, initial_states=None, return_final_states=False, chunking=None):
        """hidden (B, L, d_model) -> features (B, L, d_model) [, the states leaving each layer].

        Args:
            initial_states: one state per layer entering before position 0 (a MixerState for one-direction
                mixers; a (forward, reverse) pair for bidirectional ones, the reverse one entering after the
                end), so that a long sequence can be processed in calls that carry their state.
            return_final_states: also return the per-layer states leaving the sequence.
            chunking: a :class:`Chunking` or a chunk_len overriding the stack's ``chunk_len`` for this call
                (None or 0: the stack's own ``chunk_len``).

        Raises ShapeError for a wrong input shape; ConfigError for carrying state with mixers that cannot.
        """
        self._check(hidden)
        carry = initial_states is not None or return_final_states
        plan = None if carry else self.chunking(chunking)
        if self.runner is not None:
            if carry:  # the runner sees one slice of a longer sequence: states at its edges mean nothing here
                raise ConfigError(f"{type(self).__name__}: initial_states/return_final_states cannot be used while "
                                  f"a runner ({type(self.runner).__name__}) is installed")
            return self.runner(self, hidden, plan)
        if plan is not None and hidden.shape[1] > plan.chunk_len:
            return self.sweep(hidden, plan)
        if carry and not self.carries_state:
            raise ConfigError(f"{type(self).__name__}: carrying state across calls needs mixers that carry state "
                              "(e.g. mixer='mamba')")
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
