"""Mixers by name, and the component builder backbones call: a new mixer needs no edit to any backbone.

A backbone's ``mixer`` argument is either a registered name ("mamba", "mamba2", "bimamba", or one added
with :func:`register_mixer`) or a callable ``factory(d_model, **mixer_options) -> nn.Module``.
Named mixers are built with the backbone's shared hyperparameters that their constructor accepts
(d_state, d_conv, expand, dt_rank, backend, ...) plus ``mixer_options``; only named mixers can be
saved with ``save_pretrained`` (a config holds the name, not the callable).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError
from .bidirectional import BidirectionalMamba
from .mamba import Mamba
from .mamba2 import Mamba2

MIXERS: dict[str, type] = {"mamba": Mamba, "mamba2": Mamba2, "bimamba": BidirectionalMamba}


def register_mixer(name: str):
    """Class decorator: make a mixer class ``cls(d_model, **kwargs)`` buildable by backbones as ``mixer=name``.

    Raises ConfigError if another class is already registered under ``name``."""

    def decorate(cls):
        if MIXERS.get(name, cls) is not cls:
            raise ConfigError(f"mixer {name!r} is registered twice ({MIXERS[name].__name__} and {cls.__name__})")
        MIXERS[name] = cls
        return cls

    return decorate


def mixer_factory(mixer: str | Callable[..., nn.Module], d_model: int, mixer_options: dict | None = None,
                  who: str = "backbone", **shared) -> Callable[[], nn.Module]:
    """A zero-argument builder of one mixer layer (call it once per layer).

    Args:
        mixer: a name in ``MIXERS`` or a callable ``factory(d_model, **mixer_options)``.
        d_model: the layer width.
        mixer_options: keyword arguments for the mixer only (e.g. ``{"headdim": 16}`` for "mamba2").
        who: the caller's name for error messages.
        shared: the backbone's hyperparameters; a named mixer receives those its constructor accepts.

    Raises:
        ConfigError: unknown mixer name, or a ``mixer_options`` key the named mixer does not take.
    """
    options = dict(mixer_options or {})
    if callable(mixer) and not isinstance(mixer, str):
        return lambda: mixer(d_model, **options)
    if mixer not in MIXERS:
        raise ConfigError(f"{who}: mixer={mixer!r}; expected one of {sorted(MIXERS)} or a callable")
    cls = MIXERS[mixer]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "d_model"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"{who}: mixer_options {unknown} are not arguments of {cls.__name__}; "
                          f"expected some of {sorted(accepted)}")
    kwargs = {**{k: v for k, v in shared.items() if k in accepted}, **options}
    return lambda: cls(d_model, **kwargs)
