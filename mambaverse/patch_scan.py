"""Patch-scan pieces for 2D inputs that any domain can use (images, spectrograms, maps).

- `check_image` / `pad_to_multiple`: the patch-embedding input contract, (B, C, H, W) with H and W
  multiples of the patch size (or padded to them at the bottom and right).
- `SS2D`: VMamba's 2D selective-scan mixer (Liu et al. 2024, "VMamba: Visual State Space Model"): the
  feature map is read along four routes (rows, columns, and both reversed) by one cross selective
  scan with per-route parameters, and the routes are merged back onto the map.
- `route_order`: puts per-pixel tensors into the four routes' reading orders.

The image backbones built on these (Vim, VMamba) live in the vision domain, ``mambaverse.vision``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ShapeError
from .ops import cross_selective_scan
from .ops.cross_scan import ROUTES


def check_image(x: torch.Tensor, in_chans: int, patch_size: int, who: str, pad: bool = False) -> torch.Tensor:
    """Check that x is (B, in_chans, H, W) with H, W multiples of patch_size; return x.

    With ``pad=True`` sizes that are not multiples are zero-padded at the bottom and right instead
    (timm's ``dynamic_img_pad``). Raises ShapeError (one line, naming `who` and the shape) otherwise.
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ShapeError(f"{who}: input has shape {tuple(x.shape)}, expected (batch, {in_chans}, H, W) "
                         f"with H and W multiples of patch_size={patch_size}")
    if pad:
        return pad_to_multiple(x, patch_size)
    if x.shape[2] % patch_size or x.shape[3] % patch_size:
        raise ShapeError(f"{who}: input has shape {tuple(x.shape)}, expected (batch, {in_chans}, H, W) "
                         f"with H and W multiples of patch_size={patch_size}")
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two dims of x (..., H, W) at the bottom/right up to multiples of `multiple`."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class SS2D(nn.Module):
    """VMamba's 2D selective scan on channels-last maps: (B, H, W, d_model) -> (B, H, W, d_model).

    in_proj -> depthwise 3x3 conv + SiLU -> four-route cross selective scan with per-route
    x_proj/dt_proj/A/D -> LayerNorm -> SiLU(z) gate -> out_proj.

    Args:
        d_model: channels of the map.
        d_state: SSM state size N.
        expand: d_inner = expand * d_model (VMamba's ``ssm_ratio``).
        dt_rank: rank of the dt projection (default ceil(d_model / 16)).
        dt_min, dt_max: range of the initial step sizes (log-uniform), as in Mamba.
        backend: scan backend for `cross_selective_scan` ("auto", "torch", "triton", "naive").
    """

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
