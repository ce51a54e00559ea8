"""Heads for dense prediction on a backbone's feature pyramid.

`FPNDecoder` is a light UPerNet (Xiao et al. 2018, "Unified Perceptual Parsing"): a pyramid pooling
module on the coarsest level, a top-down FPN (Lin et al. 2017) with 3x3 smoothing, and a fusion of all
levels at the finest resolution, then a 1x1 classifier. Plain (single-stride) backbones such as Vim give
maps of one stride; they are first resampled to a 2x pyramid (as ViTDet's simple feature pyramid and
the ViT/Vim UperNet necks do), so one decoder serves Vim, VMamba and any timm CNN.

`SegmentationModel` = timm ``features_only`` backbone + `FPNDecoder`, logits upsampled to the input.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaverse.errors import ConfigError


def _conv_norm_act(cin: int, cout: int, k: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the pooled 1x1 PPM branch and small segmentation batches break batch statistics
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.GroupNorm(min(32, max(1, cout // 4)), cout), nn.ReLU(inplace=True))


class FPNDecoder(nn.Module):
    """UPerNet-style decoder: features [(B, C_i, H_i, W_i)] -> logits (B, num_classes, H_0', W_0') at the finest
    level's resolution (after resampling, see below).

    Args:
        in_channels: channels of each input level, finest first.
        reductions: stride of each input level (e.g. timm ``feature_info.reduction()``). When all are equal
            (a plain backbone), level i is resampled by 2^(offset - i) with offset = min(2, n - 2), giving
            strides r/4, r/2, r, 2r for four maps of stride r.
        num_classes: output classes.
        dim: decoder width.
        pool_scales: PPM bin sizes on the coarsest level (empty = no PPM).
        dropout: dropout before the classifier.
    Raises:
        ConfigError: in_channels and reductions differ in length or are empty.
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int, dim: int = 128,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        if not in_channels or len(in_channels) != len(reductions):
            raise ConfigError(f"FPNDecoder: in_channels {list(in_channels)} and reductions {list(reductions)} "
                              "must be non-empty and of the same length")
        n = len(in_channels)
        if len(set(reductions)) == 1 and n > 1:
            offset = min(2, n - 2)
            self.scales = [2.0 ** (offset - i) for i in range(n)]
        else:
            self.scales = [1.0] * n
        self.lateral = nn.ModuleList(_conv_norm_act(c, dim, 1) for c in in_channels)
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_norm_act(dim, dim, 1)) for s in pool_scales)
        self.ppm_fuse = _conv_norm_act(dim * (1 + len(pool_scales)), dim, 3) if pool_scales else nn.Identity()
        self.smooth = nn.ModuleList(_conv_norm_act(dim, dim, 3) for _ in range(n - 1))
        self.fuse = _conv_norm_act(dim * n, dim, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    @staticmethod
    def _resample(x, scale):
        if scale > 1:
            return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        if scale < 1:
            k = int(round(1 / scale))
            return F.avg_pool2d(x, k, ceil_mode=True)
        return x

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [lat(self._resample(f, s)) for f, s, lat in zip(features, self.scales, self.lateral)]
        top = levels[-1]
        if len(self.ppm):
            pooled = [F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for p in self.ppm]
            levels[-1] = self.ppm_fuse(torch.cat([top, *pooled], dim=1))
        for i in range(len(levels) - 2, -1, -1):  # top-down pathway
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="bilinear",
                                                  align_corners=False)
        outs = [self.smooth[i](levels[i]) for i in range(len(levels) - 1)] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                                                  for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class SegmentationModel(nn.Module):
    """A timm feature-pyramid backbone (``features_only=True``) with an `FPNDecoder`.

    Input (B, C, H, W) float -> logits (B, num_classes, H, W) (bilinear upsampling of the decoder output).
    `backbone` is any module returning a list of maps with timm's ``feature_info`` (channels(), reduction())."""

    def __init__(self, backbone: nn.Module, num_classes: int, dim: int = 128, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        info = backbone.feature_info
        self.decoder = FPNDecoder(info.channels(), info.reduction(), num_classes, dim, pool_scales, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
