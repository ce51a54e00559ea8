"""Named presets and the builder classes they call.

A builder is a model class whose constructor takes every hyperparameter explicitly; `@builder`
(``mambaverse.configurable``, re-exported here) records the arguments of each instance in `model.config`
so that it can be saved and rebuilt. A preset is a
function `(**overrides) -> model` registered by `@register_model(name)`; configuration never hides in
the name.

Domain packages (genomics, audio, vision, or a third-party package) register their presets and builders
when imported. The registry never imports a domain by name: it loads the modules declared under the
entry-point group ``mambaverse.plugins`` (``[project.entry-points."mambaverse.plugins"]`` in a
package's pyproject.toml, ``name = "package.module"``), and only on demand -- when a preset or builder
name is unknown, or when ``list_models()`` is called. ``create_model("causal_tiny")`` therefore imports
no domain (and none of Lightning, scikit-learn, pyfaidx or timm).
"""
from __future__ import annotations

import fnmatch
import inspect
from importlib.metadata import EntryPoint, distributions
from typing import Callable

from .configurable import BUILDERS as _BUILDERS
from .configurable import builder
from .errors import ConfigError

PLUGIN_GROUP = "mambaverse.plugins"

_PRESETS: dict[str, Callable] = {}
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}


__all__ = ["builder", "create_model", "declared_entry_points", "get_builder", "get_preset", "list_models",
           "load_plugins", "preset", "register_model"]


def get_builder(name: str) -> type:
    """The ``@builder`` class called ``name`` (e.g. ``"CausalBackbone"``).

    Raises:
        ConfigError: no installed package registers a builder of that name.
    """
    return _lookup(_BUILDERS, name, "builder")


def _lookup(table: dict, name: str, what: str):
    """table[name], loading the domain plugins first if the name is unknown; ConfigError if still unknown."""
    if name not in table:
        load_plugins()
    if name not in table:
        close = fnmatch.filter(table, f"*{name.split('_')[0]}*")
        raise ConfigError(f"unknown {what} {name!r}; expected one of {sorted(table)}"
                          + (f" (similar: {sorted(close)})" if close else "") + _failed_plugins())
    return table[name]


def register_model(name: str):
    """Decorator for a preset function `(**overrides) -> nn.Module`."""

    def decorate(fn):
        if name in _PRESETS and _PRESETS[name] is not fn:
            raise ConfigError(f"preset {name!r} is registered twice")
        _PRESETS[name] = fn
        return fn

    return decorate


def declared_entry_points(group: str) -> dict[str, EntryPoint]:
    """``{name: EntryPoint}`` declared under ``group`` by the installed distributions; nothing is imported.

    Every copy of a distribution's metadata on ``sys.path`` is read, the first one winning per name:
    ``importlib.metadata.entry_points`` keeps only the first copy of each distribution, so a stale
    ``*.egg-info`` left in the working directory by an older install would hide newly declared entry points.
    """
    found: dict[str, EntryPoint] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == group:
                found.setdefault(ep.name, ep)
    return found


def load_plugins() -> dict[str, str]:
    """Import every module declared under the ``mambaverse.plugins`` entry-point group, once.

    A plugin that fails to import (a missing optional dependency) is skipped; its error is kept and
    named in the message of a later unknown-name error. Returns ``{plugin name: error}`` of the failures.
    """
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in declared_entry_points(PLUGIN_GROUP).values():
            try:
                ep.load()
            except ImportError as err:
                _plugin_errors[ep.name] = f"{type(err).__name__}: {err}"
    return dict(_plugin_errors)


def _failed_plugins() -> str:
    if not _plugin_errors:
        return ""
    return "; plugins that failed to load: " + ", ".join(f"{k} ({v})" for k, v in sorted(_plugin_errors.items()))


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered presets matching the glob ``pattern``; loads the domain plugins."""
    load_plugins()
    return sorted(name for name in _PRESETS if fnmatch.fnmatch(name, pattern))


def get_preset(name: str) -> Callable:
    """The preset function ``(**overrides) -> nn.Module`` registered as ``name``; its ``__doc__`` describes it.

    Raises:
        ConfigError: no installed package registers a preset of that name.
    """
    return _lookup(_PRESETS, name, "model preset")


def create_model(name: str, **overrides):
    """Build preset ``name``, with any hyperparameter overridden by keyword.

    Domain plugins are imported only if ``name`` is not a core preset.

    Raises:
        ConfigError: unknown preset name, or an override that the preset's builder does not take.
    """
    preset = get_preset(name)
    accepted = inspect.signature(get_builder(preset.builder_name).__init__).parameters if hasattr(preset, "builder_name") else None
    if accepted is not None:
        unknown = sorted(set(overrides) - set(accepted) - {"self"})
        if unknown:
            raise ConfigError(f"create_model({name!r}): unknown override(s) {unknown}; expected hyperparameters of "
                              f"{preset.builder_name}: {sorted(set(accepted) - {'self'})}")
    check_sizes(overrides, f"create_model({name!r})")
    model = preset(**overrides)
    model.config = {**model.config, "preset": name}
    return model


# hyperparameters that size a model: a zero, negative or non-integer value fails deep inside torch otherwise
_POSITIVE_INTS = ("d_model", "n_layer", "d_state", "d_conv", "headdim", "chunk_size", "ngroups", "d_inner")


def check_sizes(hparams: dict, who: str) -> None:
    """Raise a one-line ConfigError if a size hyperparameter (``d_model``, ``n_layer``, ``d_state``, ``d_conv``,
    ...) is not a positive int, ``expand`` is not a positive number, or ``dt_rank`` is neither one nor 'auto'."""
    for key in _POSITIVE_INTS:
        v = hparams.get(key)
        if key in hparams and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{who}: {key}={v!r}; expected a positive integer")
    if "expand" in hparams:
        v = hparams["expand"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v:
            raise ConfigError(f"{who}: expand={v!r}; expected a positive number")
    if "dt_rank" in hparams:
        v = hparams["dt_rank"]
        if v is not None and v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{who}: dt_rank={v!r}; expected a positive integer or 'auto'")


def preset(name: str, builder_cls: type, **defaults):
    """Register preset `name` = builder_cls(**defaults) with overrides; returns the preset function."""

    def make(**overrides):
        return builder_cls(**{**defaults, **overrides})

    make.builder_name = builder_cls.__name__
    make.__doc__ = f"{builder_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in defaults.items())})"
    return register_model(name)(make)
