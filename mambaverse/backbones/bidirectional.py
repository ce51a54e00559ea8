"""Bidirectional backbones: Caduceus-PH / BiMamba and Vim-v2 stacks, and the RC-equivariant Caduceus-PS."""
from __future__ import annotations

import inspect

import torch.nn as nn

from ..configurable import builder
from ..errors import ConfigError
from ..mixers import D_CONV, D_STATE, EXPAND
from ..mixers.bidirectional import resolve_combine
from ..rc import RCEquivariant
from .stack import MixerStack, check_hidden, weight_dtype

_ARGS_DOC = """
    Args:
        d_model: width.
        n_layer: number of residual blocks.
        variant: "caduceus" (two Mamba blocks, optionally tied) or "vim_v2" (shared projections, averaged).
        combine: "add" or "multiply" (Caduceus' ew_multiply; caduceus only): how the directions combine.
        tie_projections: share in_proj/out_proj between the directions.
        d_state, d_conv, expand, dt_rank: the mixer's SSM state size, conv width, expansion and dt rank.
        norm_eps: RMSNorm epsilon.
        checkpoint_layers: activation checkpointing per block in training.
        backend: the ops backend.
        chunk_len: run sequences longer than this in state-carrying chunks, layer-major, with exact gradients
            (``backbones.sweep``); None/0 = off.
        strategy: deprecated name of ``combine`` ("add" / "ew_multiply").
        mixer: "bimamba" (:class:`~mambaverse.mixers.BidirectionalMamba`), another registered name, or a
            callable ``factory(d_model, **mixer_options)``.
        mixer_options: further keyword arguments of the named mixer.
"""


@builder
class BidirectionalBackbone(MixerStack):
    __doc__ = """Bidirectional stack (B, L, d_model) -> (B, L, d_model) of pre-norm residual BidirectionalMamba
    blocks (Caduceus' BiMamba, Schiff et al. 2024; or Vim's bimamba v2, Zhu et al. 2024) and a final RMSNorm.
""" + _ARGS_DOC + """
    Raises ConfigError for an unknown variant, combine, mixer or chunk_len; ShapeError for a wrong input shape.
    """

    def __init__(self, d_model: int = 128, n_layer: int = 4, variant: str = "caduceus", combine: str = "add",
                 tie_projections: bool = True, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND,
                 dt_rank: int | None = None, norm_eps: float = 1e-5, checkpoint_layers: bool = False,
                 backend: str = "auto", chunk_len: int | None = None, strategy: str | None = None,
                 mixer="bimamba", mixer_options: dict | None = None):
        super().__init__()
        combine = resolve_combine(combine, strategy, "BidirectionalBackbone")
        self._build(d_model, n_layer, mixer, mixer_options, norm_eps, checkpoint_layers, chunk_len,
                    variant=variant, combine=combine, tie_projections=tie_projections, d_state=d_state,
                    d_conv=d_conv, expand=expand, dt_rank=dt_rank, backend=backend)


@builder
class RCPSBackbone(nn.Module):
    __doc__ = """Reverse-complement equivariant backbone (Caduceus-PS): channels split in two halves of d_model // 2
    that share one :class:`BidirectionalBackbone`; f(rc_features(h)) == rc_features(f(h)), with rc_features
    flipping length and channels. Token embeddings and heads that respect RC live in the genomics package.
""" + _ARGS_DOC.replace("d_model: width.", "d_model: width (even; each half gets d_model // 2).") + """
    Raises ConfigError for an odd d_model (and as BidirectionalBackbone); ShapeError for a wrong input shape.
    The RC flip crosses any split of the length, so it supports chunking but not context parallel.
    """

    supports_context_parallel = False

    def __init__(self, d_model: int = 128, **stack_args):
        super().__init__()
        if d_model % 2:
            raise ConfigError(f"RCPSBackbone: d_model={d_model} must be even (two RC-paired halves)")
        self.d_model = d_model
        self.rc = RCEquivariant(BidirectionalBackbone(d_model // 2, **stack_args))

    # the hyperparameters are exactly BidirectionalBackbone's (what @builder records and create_model checks)
    __init__.__signature__ = inspect.signature(BidirectionalBackbone.__init__)

    @property
    def checkpoint_layers(self) -> bool:
        return self.rc.module.checkpoint_layers

    def chunking(self, chunking=None):
        """The Chunking its inner stack would use (see ``MixerStack.chunking``)."""
        return self.rc.module.chunking(chunking)

    def forward(self, hidden, chunking=None):
        """hidden (B, L, d_model) -> (B, L, d_model); ``chunking`` (a Chunking or chunk_len) overrides chunk_len."""
        check_hidden(hidden, self.d_model, "RCPSBackbone", weight_dtype(self))
        return self.rc(hidden, chunking=chunking)
