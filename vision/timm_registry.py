"""Register the vision presets in timm's registry as ``mambaverse_<preset>``, so that
``timm.create_model("mambaverse_vim_tiny", num_classes=5)`` builds our model, and
``timm.create_model("mambaverse_vmamba_tiny", features_only=True, out_indices=(0, 1))`` a feature
pyramid (timm's `FeatureGetterNet` over the backbone's ``forward_intermediates``).

Each entry goes through timm's ``build_model_with_cfg``: the model gets its ``pretrained_cfg``
(input size, mean/std, classifier name) and timm's feature wrapper. There are no pretrained weights to
download: ``pretrained=True`` is refused with a one-line error.
"""
from __future__ import annotations

import functools

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from mambaverse.errors import ConfigError
from mambaverse.registry import create_model

from .backbones import VimBackbone, default_cfg
from .presets import PRESETS


def default_out_indices(builder: type, defaults: dict) -> tuple[int, ...]:
    """Blocks or stages a feature pyramid takes by default: every VMamba stage; for Vim four evenly spaced
    blocks ending with the last (blocks 5, 11, 17, 23 of 24, as ViT segmenters take), or every block if fewer."""
    if builder is VimBackbone:
        depth = defaults.get("depth", 24)
        return tuple(range(depth)) if depth <= 4 else tuple(depth * (i + 1) // 4 - 1 for i in range(4))
    return tuple(range(len(defaults.get("depths", (2, 2, 9, 2)))))


def _cfg_of(builder: type, defaults: dict) -> dict:
    cfg = default_cfg(defaults.get("in_chans", 3), defaults.get("img_size", 224), defaults.get("num_classes", 1000))
    cfg.pop("url")
    return cfg


default_cfgs = generate_default_cfgs({f"mambaverse_{name}": _cfg_of(*entry) for name, entry in PRESETS.items()})


def _entrypoint(preset: str):
    builder, defaults = PRESETS[preset]

    def build(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ConfigError(f"timm model mambaverse_{preset}: no pretrained weights exist; expected pretrained=False")
        kwargs.pop("cache_dir", None)
        return build_model_with_cfg(
            functools.partial(create_model, preset), f"mambaverse_{preset}", pretrained=False,
            feature_cfg={"feature_cls": "getter", "out_indices": default_out_indices(builder, defaults)}, **kwargs)

    build.__name__ = f"mambaverse_{preset}"
    build.__qualname__ = build.__name__
    build.__module__ = __name__
    build.__doc__ = f"mambaverse preset {preset!r}: {builder.__name__}({defaults})."
    return build


for _preset in PRESETS:
    globals()[f"mambaverse_{_preset}"] = register_model(_entrypoint(_preset))
