"""save_pretrained / from_pretrained: safetensors weights + a YAML config, no pickle anywhere."""
from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path

import torch.nn as nn
import yaml
from safetensors.torch import load_file, save_file

from .errors import ConfigError
from .registry import get_builder

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


def _atomic(path: Path, write):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _plain(value):
    """YAML-safe form of a config value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_pretrained(model: nn.Module, directory) -> Path:
    """Write `model.safetensors` and `config.yaml` (builder name + arguments) into `directory`."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "builder" not in config:
        raise ConfigError(f"save_pretrained: {type(model).__name__} has no builder config; expected a model made "
                          "by mambaverse.create_model or a @builder class")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # tied parameters appear once in safetensors; clone so that shared storage is allowed
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic(directory / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _atomic(directory / CONFIG, lambda tmp: Path(tmp).write_text(yaml.safe_dump(_plain(config), sort_keys=False)))
    return directory


def from_pretrained(directory, **overrides) -> nn.Module:
    """Rebuild the model recorded in `directory/config.yaml` and load its safetensors weights."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG, directory / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ConfigError(f"from_pretrained: {path} is missing; expected {CONFIG} and {WEIGHTS} from save_pretrained")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"from_pretrained: {config_path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict) or "builder" not in config:
        raise ConfigError(f"from_pretrained: {config_path} has no 'builder' key; expected a config from save_pretrained")
    config = dict(config)
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
    model = cls(**{**config, **overrides})
    if preset_name:
        model.config["preset"] = preset_name
    try:
        weights = load_file(str(weights_path))
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except Exception as err:  # a truncated or foreign file, or tensors of other shapes
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"from_pretrained: {weights_path} cannot be loaded into {cls.__name__} ({first[:200]})") from None
    if missing or unexpected:
        raise ConfigError(f"from_pretrained: {weights_path} does not match the config: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    return model
