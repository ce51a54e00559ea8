"""Register the core's patch-scan presets in timm's registry as ``mambaverse_<preset>``, so that
``timm.create_model("mambaverse_vim_tiny", num_classes=5)`` builds our model.

There are no pretrained weights to download: ``pretrained=True`` is refused with a one-line error.
"""
from __future__ import annotations

from timm.models import register_model

from ..errors import ConfigError
from ..registry import create_model

PATCH_SCAN_PRESETS = ("vim_tiny", "vim_t", "vim_s", "vmamba_tiny", "vmamba_t")


def _entrypoint(preset: str):
    def build(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ConfigError(f"timm model mambaverse_{preset}: no pretrained weights exist; expected pretrained=False")
        for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(timm_only, None)
        return create_model(preset, **kwargs)

    build.__name__ = f"mambaverse_{preset}"
    build.__qualname__ = build.__name__
    build.__module__ = __name__
    build.__doc__ = f"mambaverse preset {preset!r} (see `mambaverse models`)."
    return build


for _preset in PATCH_SCAN_PRESETS:
    globals()[f"mambaverse_{_preset}"] = register_model(_entrypoint(_preset))
