"""DNA-specific modules around the core backbones: token embeddings, a k-mer stem, heads, presets.

Reverse-complement (RC) conventions (those of :mod:`mambaverse.rc`): a feature tensor ``h`` of
shape (B, L, 2k) transforms under RC as ``rc_features(h) = h.flip(1).flip(-1)``; token ids
transform as ``rc_tokens(x) = complement_map[x].flip(-1)``.

* :class:`RCTokenEmbedding` is RC-equivariant: ``embed(rc_tokens(x)) == rc_features(embed(x))``.
* :class:`RCPatchStem` is RC-equivariant (any module wrapped in core's ``RCEquivariant`` is).
* :class:`SequenceHead` with ``rc=True`` is RC-invariant: ``head(rc_features(h)) == head(h)``.
* :class:`LMHead` with ``rc=True`` is RC-equivariant on the vocabulary:
  ``head(rc_features(h)) == complement(head(h)).flip(1)``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from mambaverse.backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from mambaverse.errors import ConfigError, ShapeError
from mambaverse.rc import RCEquivariant, rc_features
from mambaverse.registry import preset

from .tokenizer import CLS_ID, DNATokenizer

Pooling = Literal["mean", "last", "cls"]


def is_rc_equivariant(backbone: nn.Module) -> bool:
    return isinstance(backbone, RCPSBackbone)


def is_causal(backbone: nn.Module) -> bool:
    return isinstance(backbone, CausalBackbone)


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


class RCTokenEmbedding(nn.Module):
    """embed(x) = cat[E(x), rc_features(E(rc_tokens(x)))] with E: vocab -> d_model // 2."""

    def __init__(self, vocab_size: int, d_model: int, complement_map: list[int] | None = None):
        super().__init__()
        if d_model % 2:
            raise ConfigError(f"RCTokenEmbedding: d_model={d_model}; expected an even number (two RC-paired halves)")
        self.embed = nn.Embedding(vocab_size, d_model // 2)
        comp = complement_map if complement_map is not None else DNATokenizer().complement_map
        self.register_buffer("complement_map", torch.tensor(comp, dtype=torch.long), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rc_ids = self.complement_map[ids].flip(-1)
        return torch.cat([self.embed(ids), rc_features(self.embed(rc_ids))], dim=-1)


class _Conv(nn.Module):
    """(B, L, c_in) -> (B, L // s, c_out) with a non-overlapping conv of width and stride s."""

    def __init__(self, c_in: int, c_out: int, s: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size=s, stride=s)

    def forward(self, h):
        return self.conv(h.transpose(1, 2)).transpose(1, 2)


class _KmerPool(nn.Module):
    """(B, L, c) -> (B, L // s, c): a same-padded conv of width k to 2c channels, GELU, a 1x1 conv back to c,
    then mean pooling over non-overlapping groups of s positions -- a learned, position-free k-mer counter."""

    def __init__(self, c: int, s: int, k: int):
        super().__init__()
        self.s = s
        self.conv = nn.Conv1d(c, 2 * c, kernel_size=k, padding=k // 2)
        self.mix = nn.Conv1d(2 * c, c, kernel_size=1)

    def forward(self, h):
        x = self.mix(torch.nn.functional.gelu(self.conv(h.transpose(1, 2))))
        if self.s > 1:
            x = torch.nn.functional.avg_pool1d(x, self.s, self.s)
        return x.transpose(1, 2)


class RCPatchStem(nn.Module):
    """Shortens the sequence s-fold before the backbone; RC-equivariant if ``rc``.

    ``kind="patch"``: one linear conv of width and stride s (non-overlapping k-mer patches).
    ``kind="conv"``: :class:`_KmerPool` (conv of width ``kernel`` at every base, GELU, mean over s bases).
    With ``rc`` the module runs on each half of the channels in the core ``RCEquivariant`` way, so
    stem(rc_features(h)) == rc_features(stem(h)); L must be a multiple of s (ShapeError otherwise: dropping
    the tail bases would break that identity).
    """

    def __init__(self, d_model: int, patch_size: int, rc: bool, kind: str = "patch", kernel: int = 9):
        super().__init__()
        if kind not in ("patch", "conv"):
            raise ConfigError(f"RCPatchStem: kind={kind!r}; expected 'patch' or 'conv'")
        self.patch_size = patch_size
        c = d_model // 2 if rc else d_model
        inner = _Conv(c, c, patch_size) if kind == "patch" else _KmerPool(c, patch_size, kernel)
        self.net = RCEquivariant(inner) if rc else inner

    def forward(self, h):
        """h (B, L, d_model) -> (B, L // patch_size, d_model)."""
        if h.shape[1] % self.patch_size or h.shape[1] == 0:
            raise ShapeError(f"RCPatchStem: length {h.shape[1]} is not a positive multiple of patch_size="
                             f"{self.patch_size}; pad or crop the window to a multiple")
        return self.net(h)


def _halves(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = h.shape[-1] // 2
    return h[..., :k], h[..., k:]


def pool(h: torch.Tensor, pooling: str, rc: bool, cls_index: int | None = None) -> torch.Tensor:
    """Sequence features (B, L, d) -> (B, d) or, RC-invariantly, (B, d // 2)."""
    L = h.shape[1]
    if not rc:
        if pooling == "mean":
            return h.mean(1)
        if pooling == "last":
            return h[:, -1]
        return h[:, cls_index]
    a, b = _halves(h)
    if pooling == "mean":
        return a.mean(1) + b.mean(1).flip(-1)
    if pooling == "last":  # the last base of x is the first of RC(x): read both ends
        return a[:, -1] + b[:, 0].flip(-1)
    return a[:, cls_index] + b[:, L - 1 - cls_index].flip(-1)


class SequenceHead(nn.Module):
    """Pooling (mean, last token or class token) then a linear classifier; RC-invariant if ``rc``."""

    def __init__(self, d_model: int, num_classes: int, pooling: Pooling = "mean", rc: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if pooling not in ("mean", "last", "cls"):
            raise ConfigError(f"SequenceHead: pooling={pooling!r}; expected 'mean', 'last' or 'cls'")
        self.pooling, self.rc = pooling, rc
        self.features_dim = d_model // 2 if rc else d_model
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.features_dim, num_classes)

    def features(self, h: torch.Tensor, cls_index: int | None = None) -> torch.Tensor:
        return pool(h, self.pooling, self.rc, cls_index)

    def forward(self, h: torch.Tensor, cls_index: int | None = None) -> torch.Tensor:
        return self.fc(self.dropout(self.features(h, cls_index)))


class LMHead(nn.Module):
    """Per-position vocabulary logits. With ``rc``: W a + complement(W flip(b)), RC-equivariant."""

    def __init__(self, d_model: int, vocab_size: int, rc: bool = False, complement_map: list[int] | None = None):
        super().__init__()
        self.rc = rc
        self.proj = nn.Linear(d_model // 2 if rc else d_model, vocab_size)
        comp = complement_map if complement_map is not None else DNATokenizer().complement_map
        self.register_buffer("complement_map", torch.tensor(comp, dtype=torch.long), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.rc:
            return self.proj(h)
        a, b = _halves(h)
        return self.proj(a) + self.proj(b.flip(-1))[..., self.complement_map]


def insert_cls(ids: torch.Tensor, causal: bool) -> tuple[torch.Tensor, int]:
    """Insert a [CLS] token: at the end for causal models, in the middle otherwise (RC-symmetric for even L)."""
    L = ids.shape[1]
    pos = L if causal else L // 2
    cls = torch.full((ids.shape[0], 1), CLS_ID, dtype=ids.dtype, device=ids.device)
    return torch.cat([ids[:, :pos], cls, ids[:, pos:]], dim=1), pos


# ---------------------------------------------------------------------------------- presets
# Explicit hyperparameters; configuration never hides in the name.
preset("caduceus_ps_dna_small", RCPSBackbone, d_model=64, n_layer=2, variant="caduceus", combine="add",
       tie_projections=True, d_state=16, d_conv=4, expand=2)
preset("caduceus_ps_dna", RCPSBackbone, d_model=256, n_layer=8, variant="caduceus", combine="add",
       tie_projections=True, d_state=16, d_conv=4, expand=2)
preset("caduceus_ph_dna", BidirectionalBackbone, d_model=128, n_layer=8, variant="caduceus", combine="add",
       tie_projections=True, d_state=16, d_conv=4, expand=2)
preset("mamba_dna_paper", CausalBackbone, d_model=256, n_layer=8, mixer="mamba", d_state=16, d_conv=4, expand=2)
# The Mamba paper's context-length scaling model (Gu & Dao 2023, sec. 4.3.2 and Figure 5 right): "6 layers by
# width 128, about 1.3M-1.4M parameters". The paper counts two Mamba blocks per Transformer-style layer, so that is
# 12 Mamba blocks of d_model 128 (1.45M parameters with a DNA embedding and next-base head).
preset("mamba_dna_paper_small", CausalBackbone, d_model=128, n_layer=12, mixer="mamba", d_state=16, d_conv=4, expand=2)
