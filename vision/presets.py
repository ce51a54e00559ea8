"""The vision domain's named presets (registered in mambaverse's registry on import, and in timm's as
``mambaverse_<name>`` by `timm_registry`).

Paper sizes: Vim-Ti / Vim-S (Zhu et al. 2024, Table 1: d=192 / 384, 24 blocks, patch 16, about 7M / 26M
parameters) and VMamba-T / VMamba-S (Liu et al. 2024, the v2 "VMamba-T/S" rows: dims 96..768, depths
2-2-5-2 / 2-2-15-2, ssm_ratio 1, MLP ratio 4; 26M / 43M parameters here against the paper's 30M / 50M,
which include its 3x3 downsampling convs and two-conv stem; our SSM state is 16 where v2 uses 1).
Tiny presets serve CPU tests and demos.
"""
from __future__ import annotations

from mambaverse.registry import preset

from .backbones import VimBackbone, VMambaBackbone

# name -> (builder, defaults); timm_registry builds each model's pretrained_cfg from the same table
PRESETS: dict[str, tuple[type, dict]] = {
    # tiny, for CPU tests and demos
    "vim_tiny": (VimBackbone, dict(img_size=32, patch_size=4, in_chans=3, embed_dim=64, depth=2, num_classes=10)),
    "vmamba_tiny": (VMambaBackbone, dict(img_size=32, in_chans=3, patch_size=4, dims=(32, 64), depths=(1, 1),
                                         num_classes=10)),
    # paper-sized
    "vim_t": (VimBackbone, dict(img_size=224, patch_size=16, embed_dim=192, depth=24)),
    "vim_s": (VimBackbone, dict(img_size=224, patch_size=16, embed_dim=384, depth=24, drop_path_rate=0.05)),
    "vmamba_t": (VMambaBackbone, dict(dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), mlp_ratio=4.0, ssm_ratio=1.0,
                                      drop_path_rate=0.2)),
    "vmamba_s": (VMambaBackbone, dict(dims=(96, 192, 384, 768), depths=(2, 2, 15, 2), mlp_ratio=4.0,
                                      ssm_ratio=1.0, drop_path_rate=0.3)),
}

for _name, (_builder, _defaults) in PRESETS.items():
    preset(_name, _builder, **_defaults)
