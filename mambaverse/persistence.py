"""save_pretrained / from_pretrained: the hub's folder layout (config.json + model.safetensors), no pickle.

``save_pretrained`` writes ``config.json`` (our builder name and its arguments, plus ``model_type`` and
``architectures`` as the hub expects) and ``model.safetensors``, as a set: both are written under temporary
names first and renamed only when both are complete. ``from_pretrained`` reads such folders, the older ones
with ``config.yaml``, and (through :mod:`mambaverse.pretrained.convert`) mamba-ssm, transformers and Caduceus
checkpoints, recognised by their config.json.
"""
from __future__ import annotations

import contextlib

import inspect
import json
from pathlib import Path

import torch.nn as nn
import yaml
from safetensors.torch import load_file, save_file

from . import atomic as _atomic
from .errors import ConfigError, MambaverseError
from .pretrained import lm as _lm  # noqa: F401  (registers the MambaLM builder that conversions build)
from .registry import get_builder

WEIGHTS, CONFIG, LEGACY_CONFIG = "model.safetensors", "config.json", "config.yaml"


def _plain(value):
    """YAML-safe form of a config value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # numpy scalars: json cannot write them
        return value.item()
    return value


_META_KEYS = ("model_type", "architectures", "mambaverse_version")


def _tied_aliases(model: nn.Module) -> dict:
    """``{name: first name}`` for each parameter registered under more than one name (tied weights)."""
    first, aliases = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def save_pretrained(model: nn.Module, directory) -> Path:
    """Write ``config.json`` (builder name + arguments) and ``model.safetensors`` into ``directory``.

    The pair is written as a set (:func:`write_set`): into a temporary folder beside ``directory``, which
    becomes ``directory`` by one rename, or, if ``directory`` exists, is swapped with it by one atomic exchange
    (other files there are kept, a ``config.yaml`` of an older save is dropped). A kill at any point leaves the
    old pair or the new one, never new weights with an old config; the config is serialised before anything is
    written, so a value json cannot hold fails with the folder untouched. Files get the umask's mode. Raises ConfigError for a model
    that is not a ``@builder`` class (it could not be rebuilt). Returns ``directory`` as a Path.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "builder" not in config:
        raise ConfigError(f"save_pretrained: {type(model).__name__} has no builder config; expected a model made "
                          "by mambaverse.create_model or a @builder class")
    from . import __version__

    directory = Path(directory)
    # a tied parameter (one tensor under several names, e.g. MambaLM's embedding and head) is stored once
    tied = _tied_aliases(model)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k not in tied}
    meta = {"model_type": "mambaverse", "architectures": [config["builder"]], "mambaverse_version": __version__}
    text = json.dumps({**meta, **_plain(config)}, indent=2) + "\n"
    write_set(directory, {WEIGHTS: lambda p: save_file(state, str(p), metadata={"format": "pt"}),
                          CONFIG: lambda p: p.write_text(text)}, stale=(LEGACY_CONFIG,))
    return directory


def write_set(directory, writers: dict, stale=()) -> Path:
    """Write files ``{name: writer(path)}`` into ``directory`` as a set (:func:`mambaverse.atomic.write_set`):
    a reader, or a process killed at any point, sees all old files or all new ones; the ``stale`` names go
    with the old set; other files already in ``directory`` are kept; no temporary file survives (one left by
    a killed writer is removed by the next save). Raises ConfigError if ``directory`` is a file."""
    return _atomic.write_set(directory, writers, stale, error=lambda msg: ConfigError(f"save_pretrained: {msg}"))


def _read_legacy(config_path: Path) -> dict:
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"from_pretrained: {config_path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict) or "builder" not in config:
        raise ConfigError(f"from_pretrained: {config_path} has no 'builder' key; expected a config from save_pretrained")
    return config


@contextlib.contextmanager
def _wrong_types(config_path: Path, what: str, writer: str):
    """A config value of the wrong type (d_model: "16", n_layer: null) fails deep in a builder or in torch with a
    TypeError/ValueError/AttributeError: re-raise it as a one-line ConfigError naming the file. The builders'
    own MambaverseErrors already name the key and pass through."""
    try:
        yield
    except MambaverseError:
        raise
    except (TypeError, ValueError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"from_pretrained: {config_path} {what} ({type(err).__name__}: {first}); expected the types "
                          f"{writer}") from None


def _build_ours(config: dict, config_path: Path, weights_path: Path, overrides: dict) -> nn.Module:
    if not weights_path.is_file():
        raise ConfigError(f"from_pretrained: {weights_path} is missing; expected {WEIGHTS} beside {config_path.name}")
    config = {k: v for k, v in config.items() if k not in _META_KEYS}
    if not isinstance(config.get("builder"), str):
        raise ConfigError(f"from_pretrained: {config_path} has builder={config.get('builder')!r}; expected the name "
                          f"of a builder class, e.g. 'CausalBackbone'")
    cls = get_builder(config.pop("builder"))
    preset_name = config.pop("preset", None)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ConfigError(f"from_pretrained: {config_path} has unknown key(s) {unknown} for {cls.__name__}; "
                          f"expected some of {sorted(accepted)}")
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ConfigError(f"from_pretrained: unknown override(s) {unknown} for {cls.__name__}; "
                          f"expected some of {sorted(accepted)}")
    with _wrong_types(config_path, f"cannot build {cls.__name__} from its values", "save_pretrained writes"):
        model = cls(**{**config, **overrides})
    if preset_name:
        model.config["preset"] = preset_name
    try:
        weights = load_file(str(weights_path))
        own = model.state_dict()
        shapes = [f"{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)} in the model" for k, v in weights.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if shapes:  # name every mismatched tensor with both shapes (load_state_dict's error names none on line 1)
            raise ConfigError(f"from_pretrained: {weights_path} cannot be loaded into {cls.__name__} built from {config_path.name}"
                              f" and the overrides: {len(shapes)} shape mismatch(es): {', '.join(shapes[:12])}"
                              + (f" and {len(shapes) - 12} more" if len(shapes) > 12 else ""))
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except ConfigError:
        raise
    except Exception as err:  # a truncated or foreign file, or tensors of other shapes
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"from_pretrained: {weights_path} cannot be loaded into {cls.__name__} ({first[:200]})") from None
    tied = _tied_aliases(model)
    missing = [k for k in missing if tied.get(k) not in weights]  # a tied copy is filled by its first name
    if missing or unexpected:
        raise ConfigError(f"from_pretrained: {weights_path} does not match the config: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    return model


def from_pretrained(path, **overrides) -> nn.Module:
    """Load a model from a local folder (or a file in it), whichever of these it holds:

    - ours: ``config.json`` with a ``builder`` key (or an older ``config.yaml``) + ``model.safetensors``;
    - mamba-ssm ``MambaLMHeadModel`` or transformers ``MambaForCausalLM``/``Mamba2ForCausalLM`` -> MambaLM;
    - Caduceus PS / Ph -> RCPSBackbone / BidirectionalBackbone (the embedding and LM head are not kept).

    ``overrides`` replace constructor arguments (e.g. ``backend="torch"``). Raises ConfigError (one line) for a
    missing, unreadable or unrecognised config, unknown keys or overrides, and weights that do not fit.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if (folder / CONFIG).is_file():
        from .pretrained.convert import detect, load_foreign, read_config

        config = read_config(folder)
        kind = detect(config)
        if kind == "mambaverse":
            return _build_ours(config, folder / CONFIG, folder / WEIGHTS, overrides)
        if not kind:
            raise ConfigError(f"from_pretrained: {folder / CONFIG} is of no format we read (keys {sorted(config)[:8]}); "
                              "expected a mambaverse, mamba-ssm, transformers Mamba/Mamba2 or Caduceus config")
        with _wrong_types(folder / CONFIG, f"({kind} format) holds a value of the wrong type", "that format writes"):
            return load_foreign(folder, config, kind, overrides)
    if (folder / LEGACY_CONFIG).is_file():
        return _build_ours(_read_legacy(folder / LEGACY_CONFIG), folder / LEGACY_CONFIG, folder / WEIGHTS, overrides)
    raise ConfigError(f"from_pretrained: {folder / CONFIG} is missing; expected a folder from save_pretrained or a "
                      "mamba-ssm, transformers or Caduceus checkpoint folder")
