"""Named presets and the builder classes they call.

A builder is a model class whose constructor takes every hyperparameter explicitly; `@builder` records
the arguments of each instance in `model.config` so that it can be saved and rebuilt. A preset is a
function `(**overrides) -> model` registered by `@register_model(name)`; configuration never hides in
the name.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
from typing import Callable

from .errors import ConfigError

_BUILDERS: dict[str, type] = {}
_PRESETS: dict[str, Callable] = {}
_PLUGIN_PACKAGES = ("mambaverse.genomics", "mambaverse.audio", "mambaverse.vision")
_plugins_loaded = False


def builder(cls):
    """Class decorator: record constructor arguments in `self.config` and allow `from_pretrained` to rebuild it."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        # tuples become lists so that the config equals its YAML round trip
        self.config = {"builder": cls.__name__,
                       **{k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}}

    cls.__init__ = recording_init
    _BUILDERS[cls.__name__] = cls
    return cls


def get_builder(name: str) -> type:
    _load_plugins()
    if name not in _BUILDERS:
        raise ConfigError(f"unknown builder {name!r}; expected one of {sorted(_BUILDERS)}")
    return _BUILDERS[name]


def register_model(name: str):
    """Decorator for a preset function `(**overrides) -> nn.Module`."""

    def decorate(fn):
        if name in _PRESETS and _PRESETS[name] is not fn:
            raise ConfigError(f"preset {name!r} is registered twice")
        _PRESETS[name] = fn
        return fn

    return decorate


def _load_plugins():
    """Domain packages register their own presets when imported; import those that are installed."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for package in _PLUGIN_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:
            pass


def list_models(pattern: str = "*") -> list[str]:
    _load_plugins()
    return sorted(name for name in _PRESETS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **overrides):
    """Build preset `name`, with any hyperparameter overridden by keyword."""
    _load_plugins()
    if name not in _PRESETS:
        close = fnmatch.filter(_PRESETS, f"*{name.split('_')[0]}*")
        raise ConfigError(f"unknown model preset {name!r}; expected one of {sorted(_PRESETS)}"
                          + (f" (similar: {sorted(close)})" if close else ""))
    preset = _PRESETS[name]
    accepted = inspect.signature(get_builder(preset.builder_name).__init__).parameters if hasattr(preset, "builder_name") else None
    if accepted is not None:
        unknown = sorted(set(overrides) - set(accepted) - {"self"})
        if unknown:
            raise ConfigError(f"create_model({name!r}): unknown override(s) {unknown}; expected hyperparameters of "
                              f"{preset.builder_name}: {sorted(set(accepted) - {'self'})}")
    model = preset(**overrides)
    model.config = {**model.config, "preset": name}
    return model


def preset(name: str, builder_cls: type, **defaults):
    """Register preset `name` = builder_cls(**defaults) with overrides; returns the preset function."""

    def make(**overrides):
        return builder_cls(**{**defaults, **overrides})

    make.builder_name = builder_cls.__name__
    make.__doc__ = f"{builder_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in defaults.items())})"
    return register_model(name)(make)
