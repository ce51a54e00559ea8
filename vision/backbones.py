"""Vim and VMamba image backbones, (B, C, H, W) -> features, with timm's whole model interface.

- `VimBackbone` follows Vim (Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning
  with Bidirectional State Space Model"): patches in raster order, a class token in the middle of the
  sequence, learned absolute position embeddings, pre-norm residual blocks of bidirectional (v2)
  Mamba mixers with RMSNorm.
- `VMambaBackbone` follows VMamba (Liu et al. 2024, "VMamba: Visual State Space Model"): hierarchical
  stages of VSS blocks whose SS2D mixer (core, `mambaverse.patch_scan`) scans the map along four routes.

timm interface (as timm's own ViT and Swin): ``forward_features``, ``forward_head(x, pre_logits=...)``,
``reset_classifier(num_classes, global_pool)``, ``get_classifier``, ``forward_intermediates`` and
``prune_intermediate_layers`` (which timm's ``features_only=True`` wrapper uses), ``feature_info``,
``set_grad_checkpointing``, ``pretrained_cfg``/``default_cfg``, ``num_classes``, ``num_features``.
Any input resolution works: Vim resamples its position embeddings to the new patch grid with timm's
``resample_abs_pos_embed`` (and does the same when loading weights trained at another size).
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath, resample_abs_pos_embed, to_2tuple
from timm.models._features import feature_take_indices

from mambaverse.errors import ConfigError, ShapeError
from mambaverse.mixers import BidirectionalMamba, RMSNorm
from mambaverse.backbones.stack import check_input_dtype
from mambaverse.patch_scan import SS2D, check_image, pad_to_multiple
from mambaverse.registry import builder
from mambaverse.validation import check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)


def check_image_dtype(x: torch.Tensor, expected: torch.dtype, who: str) -> None:
    """Raise a one-line ShapeError for an integer image (e.g. uint8 pixels) or a float image of another dtype than
    the weights outside autocast; images are never cast silently (``ImageFolderDataModule`` already yields
    normalised float32)."""
    if not x.is_floating_point():
        raise ShapeError(f"{who}: input image has dtype {x.dtype}; expected a normalised float image of dtype "
                         f"{expected} (e.g. (x.float() / 255 - mean) / std, as the vision data modules do)")
    check_input_dtype(x, expected, who, "input image")
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_cfg(in_chans: int, img_size, num_classes: int, **extra) -> dict:
    """timm's pretrained_cfg for a model without pretrained weights: input size, normalisation, names."""
    h, w = to_2tuple(img_size)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,) * in_chans, (0.5,) * in_chans)
    return {"url": "", "num_classes": num_classes, "input_size": (in_chans, h, w), "pool_size": None,
            "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": False, "mean": mean, "std": std,
            "first_conv": "patch_embed", "classifier": "head", "license": "apache-2.0", **extra}


def _run(block, x, checkpointing: bool):
    """block(x), recomputed in backward when gradient checkpointing is on (saves activation memory)."""
    if checkpointing and torch.is_grad_enabled() and x.requires_grad:
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    return block(x)


class _Classifier:
    """timm's classifier half, shared by both backbones: pooling + linear head."""

    _pools: tuple[str, ...] = ()

    def _init_head(self, num_classes: int, global_pool: str):
        check_int(f"{type(self).__name__}: num_classes", num_classes, 0)  # 0 = no head; -1 gave no head silently
        if global_pool not in self._pools:
            raise ConfigError(f"{type(self).__name__}: global_pool={global_pool!r}; expected one of {self._pools}")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.head_hidden_size = self.num_features
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        """New (randomly initialised) head for `num_classes` (0 = none, features out); optionally a new pooling."""
        self._init_head(num_classes, self.global_pool if global_pool is None else global_pool)
        if isinstance(getattr(self, "config", None), dict):  # save_pretrained must rebuild the new head
            self.config = {**self.config, "num_classes": num_classes, "global_pool": self.global_pool}

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits (or pooled features when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


def _check_sizes(where: str, **sizes) -> None:
    """Each size must be an integer >= 1 (patch_size 0 divided by zero, in_chans 0 built an empty stem)."""
    for key, value in sizes.items():
        check_int(f"{where}: {key}", value, 1)


@builder
class VimBackbone(_Classifier, nn.Module):
    """Vim: a plain (isotropic) bidirectional-Mamba encoder over image patches.

    Input (B, in_chans, H, W) float; H, W multiples of patch_size (any size: position embeddings are
    resampled bicubically from the `img_size` grid; with ``dynamic_img_pad`` other sizes are padded).
    ``forward_features`` -> (B, 1 + N, embed_dim) tokens after the final norm, the class token at index
    N // 2 (``cls_index``); ``forward_head`` pools the class token ("token") or the patch tokens ("avg").
    Feature pyramid (``features_only``): the patch tokens of chosen blocks as (B, embed_dim, H/p, W/p) maps,
    all at stride `patch_size` (a decoder resamples them, as ViT segmenters do).

    Args:
        img_size: the training resolution (int or (H, W)); sets the position-embedding grid.
        patch_size: patch side in pixels (stride of the features).
        in_chans: image channels.
        embed_dim: d_model of the blocks.
        depth: number of blocks.
        d_state, expand: SSM state size and inner expansion of each BidirectionalMamba (variant "vim_v2").
        num_classes: classes of the linear head (0 = no head).
        norm_eps: RMSNorm epsilon.
        backend: scan backend (see `mambaverse.selective_scan`).
        global_pool: "token" (the middle class token, Vim's choice), "avg" (mean of patch tokens) or "".
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, linearly increasing over blocks (Vim-Ti 0.0, Vim-S 0.05 in the paper).
        dynamic_img_pad: zero-pad inputs whose sides are not multiples of patch_size instead of refusing them.
    Raises:
        ShapeError: input not (B, in_chans, H, W), or sides not multiples of patch_size without padding.
        ConfigError: unknown global_pool.
    """

    _pools = ("token", "avg", "")

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 192, depth: int = 24, d_state: int = 16, expand: int = 2, num_classes: int = 1000,
                 norm_eps: float = 1e-5, backend: str = "auto", global_pool: str = "token", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dynamic_img_pad: bool = False):
        super().__init__()
        _check_sizes("VimBackbone", patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth)
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.num_features = embed_dim
        self.dynamic_img_pad, self.grad_checkpointing = dynamic_img_pad, False
        img_size = to_2tuple(img_size)
        # the position table is a grid of img_size // patch_size: a side that is no multiple would build a model
        # that refuses its own default input (or, below one patch, a grid of 0 positions)
        if not all(isinstance(side, int) and not isinstance(side, bool) and side >= patch_size
                   and (dynamic_img_pad or side % patch_size == 0) for side in img_size):
            raise ConfigError(f"VimBackbone: img_size={tuple(img_size)}; expected sides that are positive multiples of "
                              f"patch_size={patch_size} (or dynamic_img_pad=True)")
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.norms = nn.ModuleList(RMSNorm(embed_dim, norm_eps) for _ in range(depth))
        self.mixers = nn.ModuleList(BidirectionalMamba(embed_dim, d_state, expand=expand, variant="vim_v2",
                                                       backend=backend) for _ in range(depth))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear stochastic depth
        self.drop_paths = nn.ModuleList(DropPath(r) if r > 0 else nn.Identity() for r in rates)  # no weights
        self.norm_f = RMSNorm(embed_dim, norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.cls_index = self.grid[0] * self.grid[1] // 2
        self.feature_info = [{"num_chs": embed_dim, "reduction": patch_size, "module": f"mixers.{i}"}
                             for i in range(depth)]
        self._init_head(num_classes, global_pool)
        self.pretrained_cfg = self.default_cfg = default_cfg(in_chans, img_size, num_classes)

    # -- embedding ---------------------------------------------------------------------------------
    def _embed(self, x):
        x = check_image(x, self.in_chans, self.patch_size, "VimBackbone", pad=self.dynamic_img_pad)
        check_image_dtype(x, self.patch_embed.weight.dtype, "VimBackbone")
        patches = self.patch_embed(x)
        b, d, gh, gw = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        # timm's bicubic resampling of the patch part (the class position stays); identity at the native grid
        pos = self.pos_embed if (gh, gw) == self.grid else resample_abs_pos_embed(
            self.pos_embed, new_size=(gh, gw), old_size=self.grid, num_prefix_tokens=1)
        tokens = tokens + pos[:, 1:]
        middle = tokens.shape[1] // 2
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
        self.cls_index, self.feature_grid = middle, (gh, gw)
        return torch.cat([tokens[:, :middle], cls, tokens[:, middle:]], dim=1), (gh, gw)

    @staticmethod
    def _patch_tokens(hidden):
        middle = (hidden.shape[1] - 1) // 2
        return torch.cat([hidden[:, :middle], hidden[:, middle + 1:]], dim=1)

    def _to_map(self, hidden, grid, output_fmt):
        patches = self._patch_tokens(hidden)
        if output_fmt == "NLC":
            return patches
        return patches.transpose(1, 2).reshape(hidden.shape[0], -1, *grid)

    def _block(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        """Block i, pre-norm residual: hidden + drop_path(mixer(norm(hidden)))."""
        return hidden + self.drop_paths[i](self.mixers[i](self.norms[i](hidden)))

    def _blocks_run(self, hidden, stop: int | None = None):
        for i in range(len(self.mixers))[:stop]:
            hidden = _run(functools.partial(self._block, i), hidden, self.grad_checkpointing and self.training)
            yield hidden

    # -- timm interface ----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, 1 + N, D) after the final norm; the class token sits at N // 2."""
        hidden, _ = self._embed(x)
        for hidden in self._blocks_run(hidden):
            pass
        return self.norm_f(hidden)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, 1 + N, D) -> (B, num_classes) logits, or (B, D) pooled features with pre_logits."""
        if self.global_pool == "token":
            pooled = features[:, (features.shape[1] - 1) // 2]
        elif self.global_pool == "avg":
            pooled = self._patch_tokens(features).mean(dim=1)
        else:
            pooled = features
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Patch tokens after the blocks in `indices` (an int n = the last n blocks), as (B, D, H/p, W/p) maps
        ("NCHW") or (B, N, D) ("NLC"); `norm` applies the final norm to each. Returns the list, or
        (final tokens, list) unless intermediates_only."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"VimBackbone: output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'")
        take, max_index = feature_take_indices(len(self.mixers), indices)
        hidden, grid = self._embed(x)
        stop = max_index + 1 if (stop_early or intermediates_only) else None
        outs = []
        for i, hidden in enumerate(self._blocks_run(hidden, stop)):
            if i in take:
                outs.append(self._to_map(self.norm_f(hidden) if norm else hidden, grid, output_fmt))
        return outs if intermediates_only else (self.norm_f(hidden), outs)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of `indices` (and the final norm / head); returns the absolute indices."""
        take, max_index = feature_take_indices(len(self.mixers), indices)
        self.norms, self.mixers = self.norms[:max_index + 1], self.mixers[:max_index + 1]
        self.drop_paths = self.drop_paths[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last block's normed patch tokens as a map (B, D, H/p, W/p)."""
        features = self.forward_features(x)
        return self._to_map(features, self.feature_grid, "NCHW")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights trained at another resolution: resample their position embeddings to this grid
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            state_dict[key] = resample_abs_pos_embed(state_dict[key], new_size=self.grid, num_prefix_tokens=1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class VSSBlock(nn.Module):
    """VMamba's VSS block on channels-last maps (B, H, W, dim): x + SS2D(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, mlp_ratio: float, backend: str,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state, ssm_ratio, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) if hidden else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.ss2d(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x))) if self.mlp is not None else x


@builder
class VMambaBackbone(_Classifier, nn.Module):
    """VMamba: hierarchical stages of VSS blocks, each stage halving the map and widening the channels.

    Input (B, in_chans, H, W) float with H, W multiples of patch_size (or padded with ``dynamic_img_pad``);
    odd maps are padded before each 2x downsampling. ``forward_features`` -> (B, dims[-1], H/(p*2^(S-1)),
    W/...) after the final LayerNorm; ``forward_head`` averages it. Feature pyramid: one map per stage,
    (B, dims[i], H/(p*2^i), W/(p*2^i)).

    Args:
        in_chans: image channels.
        patch_size: stem stride (4 in the paper).
        dims, depths: channels and number of VSS blocks of each stage.
        d_state: SSM state size N of SS2D (VMamba v2 uses 1; v0 used 16).
        ssm_ratio: SS2D inner expansion.
        mlp_ratio: MLP hidden / dim after each SS2D (0 = no MLP).
        num_classes: classes of the linear head (0 = none).
        backend: scan backend.
        global_pool: "avg" or "" (no pooling: forward_head returns the map).
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth over all blocks (VMamba-T 0.2, -S 0.3 in the paper).
        dynamic_img_pad: zero-pad inputs whose sides are not multiples of patch_size.
    Raises:
        ShapeError: dims/depths lengths differ, or a bad input shape.
    """

    _pools = ("avg", "")

    def __init__(self, in_chans: int = 3, patch_size: int = 4, dims: Sequence[int] = (96, 192, 384, 768),
                 depths: Sequence[int] = (2, 2, 9, 2), d_state: int = 16, ssm_ratio: float = 2.0,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, backend: str = "auto", global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, dynamic_img_pad: bool = False,
                 img_size: int | Sequence[int] = 224):
        super().__init__()
        dims, depths = tuple(dims), tuple(depths)
        if len(dims) != len(depths):
            raise ShapeError(f"VMambaBackbone: dims {dims} and depths {depths} must have the same length")
        _check_sizes("VMambaBackbone", patch_size=patch_size, in_chans=in_chans)
        self.in_chans, self.patch_size = in_chans, patch_size
        self.num_features = dims[-1]
        self.dynamic_img_pad, self.grad_checkpointing = dynamic_img_pad, False
        self.patch_embed = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, patch_size))
        self.embed_norm = nn.LayerNorm(dims[0])
        rates = iter([drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))])
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            self.stages.append(nn.ModuleList(VSSBlock(dim, d_state, ssm_ratio, mlp_ratio, backend, next(rates))
                                             for _ in range(depth)))
            if i + 1 < len(dims):
                self.downsamples.append(nn.Conv2d(dim, dims[i + 1], 2, 2))
        self.norm_f = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.feature_info = [{"num_chs": dim, "reduction": patch_size * 2 ** i, "module": f"stages.{i}"}
                             for i, dim in enumerate(dims)]
        self._init_head(num_classes, global_pool)
        self.pretrained_cfg = self.default_cfg = default_cfg(in_chans, img_size, num_classes)

    def _stage_maps(self, x, stop: int | None = None):
        """Yield each stage's output map (B, C_i, H_i, W_i), before the final norm."""
        x = check_image(x, self.in_chans, self.patch_size, "VMambaBackbone", pad=self.dynamic_img_pad)
        check_image_dtype(x, self.patch_embed[0].weight.dtype, "VMambaBackbone")
        h = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        checkpointing = self.grad_checkpointing and self.training
        for i, blocks in enumerate(self.stages[:stop]):
            for block in blocks:
                h = _run(block, h, checkpointing)
            out = h.permute(0, 3, 1, 2)
            yield out
            if i < len(self.downsamples) and (stop is None or i + 1 < stop):
                h = self.downsamples[i](pad_to_multiple(out, 2)).permute(0, 2, 3, 1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every stage, each (B, dims[i], H_i, W_i): the pyramid for segmentation."""
        return list(self._stage_maps(x))

    def _final_norm(self, last):
        return self.norm_f(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> last stage map (B, C', H', W') after the final norm."""
        for last in self._stage_maps(x):
            pass
        return self._final_norm(last)

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """map (B, C', H', W') -> (B, num_classes) logits, or pooled (B, C') with pre_logits."""
        pooled = features.mean(dim=(2, 3)) if self.global_pool == "avg" else features
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage maps for the stages in `indices` as (B, C_i, H_i, W_i) ("NCHW") or (B, H_i, W_i, C_i)
        ("NHWC"); `norm` applies the final norm to the last stage's map. Returns the list, or
        (final normed map, list) unless intermediates_only."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ConfigError(f"VMambaBackbone: output_fmt={output_fmt!r}; expected 'NCHW' or 'NHWC'")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stop = max_index + 1 if (stop_early or intermediates_only) else None
        outs = []
        last_stage = len(self.stages) - 1
        for i, out in enumerate(self._stage_maps(x, stop)):
            if i in take:
                out_i = self._final_norm(out) if norm and i == last_stage else out
                outs.append(out_i.permute(0, 2, 3, 1) if output_fmt == "NHWC" else out_i)
        return outs if intermediates_only else (self._final_norm(out), outs)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of `indices` (and the final norm / head); returns the absolute indices."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.downsamples = self.downsamples[:max_index]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take
