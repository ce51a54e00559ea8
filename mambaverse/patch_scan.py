"""Patch-scan backbones for images (B, C, H, W), with timm's model interface.

- VimBackbone: Vim — patches in raster order with a class token in the middle, bidirectional
  (v2) Mamba blocks, the class token's features as the image representation.
- VMambaBackbone: VMamba — hierarchical stages of VSS blocks whose SS2D mixer scans the feature map
  along four routes (cross-scan) with per-route parameters and merges them back.

Both follow timm: `forward_features(x)`, `forward_head(features, pre_logits=False)`,
`reset_classifier(num_classes)`, `num_classes`, `num_features`; `forward_spatial(x)` returns the
feature map (B, C', H', W') that segmentation heads use.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ShapeError
from .mixers import BidirectionalMamba, RMSNorm
from .ops import cross_selective_scan
from .ops.cross_scan import ROUTES
from .registry import builder


def _check_image(x, in_chans, patch_size, who):
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[2] % patch_size or x.shape[3] % patch_size:
        raise ShapeError(f"{who}: input has shape {tuple(x.shape)}, expected (batch, {in_chans}, H, W) "
                         f"with H and W multiples of patch_size={patch_size}")


class _TimmHead:
    """timm's classifier interface, shared by both backbones."""

    def _init_head(self, num_classes):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None):
        self._init_head(num_classes)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@builder
class VimBackbone(_TimmHead, nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 depth: int = 24, d_state: int = 16, expand: int = 2, num_classes: int = 1000,
                 norm_eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.num_features = embed_dim
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.norms = nn.ModuleList(RMSNorm(embed_dim, norm_eps) for _ in range(depth))
        self.mixers = nn.ModuleList(BidirectionalMamba(embed_dim, d_state, expand=expand, variant="vim_v2",
                                                       backend=backend) for _ in range(depth))
        self.norm_f = RMSNorm(embed_dim, norm_eps)
        self._init_head(num_classes)

    def _pos_embed(self, gh, gw):
        """Position embeddings for a (gh, gw) grid: bicubic resize of the patch part when it differs."""
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (gh, gw) != self.grid:
            grid = patch_pos.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return cls_pos, patch_pos

    def forward_features(self, x):
        """(B, C, H, W) -> tokens (B, 1 + N, D) after the final norm; the class token is at `self.cls_index`."""
        _check_image(x, self.in_chans, self.patch_size, "VimBackbone")
        patches = self.patch_embed(x)
        b, d, gh, gw = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        cls_pos, patch_pos = self._pos_embed(gh, gw)
        tokens = tokens + patch_pos
        middle = tokens.shape[1] // 2
        cls = (self.cls_token + cls_pos).expand(b, -1, -1)
        hidden = torch.cat([tokens[:, :middle], cls, tokens[:, middle:]], dim=1)
        self.cls_index, self.feature_grid = middle, (gh, gw)
        for norm, mixer in zip(self.norms, self.mixers):
            hidden = hidden + mixer(norm(hidden))
        return self.norm_f(hidden)

    def forward_head(self, features, pre_logits: bool = False):
        pooled = features[:, self.cls_index]
        return pooled if pre_logits else self.head(pooled)

    def forward_spatial(self, x):
        features = self.forward_features(x)
        patches = torch.cat([features[:, :self.cls_index], features[:, self.cls_index + 1:]], dim=1)
        gh, gw = self.feature_grid
        return patches.transpose(1, 2).reshape(x.shape[0], self.embed_dim, gh, gw)


class SS2D(nn.Module):
    """VMamba's 2D selective scan on channels-last maps (B, H, W, C): in_proj -> depthwise 3x3 conv ->
    four-route cross selective scan with per-route x_proj/dt_proj/A/D -> LayerNorm -> SiLU gate -> out_proj."""

    def __init__(self, d_model: int, d_state: int = 16, expand: float = 2.0, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, backend: str = "auto"):
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.d_state, self.backend = d_state, backend
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, 3, padding=1, groups=self.d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(ROUTES, self.dt_rank + 2 * d_state, self.d_inner))
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        self.dt_proj_weight = nn.Parameter(torch.empty(ROUTES, self.d_inner, self.dt_rank).uniform_(
            -self.dt_rank ** -0.5, self.dt_rank ** -0.5))
        dt = torch.exp(torch.rand(ROUTES * self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(ROUTES * self.d_inner, 1)))
        self.D = nn.Parameter(torch.ones(ROUTES * self.d_inner))
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x):
        b, h, w, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv2d(u.permute(0, 3, 1, 2)))  # (B, d_inner, H, W)
        # project in pixel layout (no copies of u per route), then put the small projections in route order
        proj = torch.einsum("bchw,kmc->bkmhw", u, self.x_proj_weight)
        proj = route_order(proj)  # (B, 4, R + 2N, L)
        dt, B, C = torch.split(proj, [self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrl,kcr->bkcl", dt, self.dt_proj_weight)
        y = cross_selective_scan(u, delta, -torch.exp(self.A_log.float()), B.contiguous(), C.contiguous(), self.D,
                                 self.dt_bias, delta_softplus=True, backend=self.backend)
        y = self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z)
        return self.out_proj(y)


def route_order(t: torch.Tensor) -> torch.Tensor:
    """t (B, 4, m, H, W), one slice per route -> (B, 4, m, H*W), slice k read in route k's order."""
    b, k, m, h, w = t.shape
    rows = t[:, 0].reshape(b, m, h * w)
    cols = t[:, 1].transpose(2, 3).reshape(b, m, h * w)
    rows_rev = t[:, 2].reshape(b, m, h * w).flip(-1)
    cols_rev = t[:, 3].transpose(2, 3).reshape(b, m, h * w).flip(-1)
    return torch.stack([rows, cols, rows_rev, cols_rev], dim=1)


class VSSBlock(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float, mlp_ratio: float, backend: str):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state, ssm_ratio, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) if hidden else None

    def forward(self, x):
        x = x + self.ss2d(self.norm(x))
        return x + self.mlp(self.norm2(x)) if self.mlp is not None else x


@builder
class VMambaBackbone(_TimmHead, nn.Module):
    def __init__(self, in_chans: int = 3, patch_size: int = 4, dims: tuple[int, ...] = (96, 192, 384, 768),
                 depths: tuple[int, ...] = (2, 2, 9, 2), d_state: int = 16, ssm_ratio: float = 2.0,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, backend: str = "auto"):
        super().__init__()
        dims, depths = tuple(dims), tuple(depths)
        if len(dims) != len(depths):
            raise ShapeError(f"VMambaBackbone: dims {dims} and depths {depths} must have the same length")
        self.in_chans, self.patch_size = in_chans, patch_size
        self.num_features = dims[-1]
        self.patch_embed = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, patch_size))
        self.embed_norm = nn.LayerNorm(dims[0])
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            self.stages.append(nn.ModuleList(VSSBlock(dim, d_state, ssm_ratio, mlp_ratio, backend) for _ in range(depth)))
            if i + 1 < len(dims):
                self.downsamples.append(nn.Conv2d(dim, dims[i + 1], 2, 2))
        self.norm_f = nn.LayerNorm(dims[-1])
        self._init_head(num_classes)

    def forward_stages(self, x):
        """Feature maps of every stage, each (B, C_i, H_i, W_i): the pyramid for segmentation."""
        _check_image(x, self.in_chans, self.patch_size, "VMambaBackbone")
        h = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        maps = []
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h)
            maps.append(h.permute(0, 3, 1, 2))
            if i < len(self.downsamples):
                h = self.downsamples[i](maps[-1]).permute(0, 2, 3, 1)
        return maps

    def forward_features(self, x):
        """(B, C, H, W) -> last stage map (B, C', H', W') after the final norm."""
        last = self.forward_stages(x)[-1]
        return self.norm_f(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_spatial(self, x):
        return self.forward_features(x)

    def forward_head(self, features, pre_logits: bool = False):
        pooled = features.mean(dim=(2, 3))
        return pooled if pre_logits else self.head(pooled)
