"""MambaLM: token embedding -> CausalBackbone -> LM head, the layout of every released Mamba language model.

It is the target of the mamba-ssm ``MambaLMHeadModel`` and transformers ``MambaForCausalLM`` /
``Mamba2ForCausalLM`` conversions (see :mod:`mambaverse.pretrained.convert`), and a model of its own for
causal LM training on any token vocabulary.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from ..backbones import CausalBackbone
from ..errors import ConfigError, ShapeError
from ..registry import builder


@builder
class MambaLM(nn.Module):
    """Causal language model: ``embedding`` (vocab_size, d_model) -> :class:`CausalBackbone` (pre-norm residual
    Mamba or Mamba-2 blocks, final RMSNorm) -> ``lm_head`` (d_model -> vocab_size, no bias; tied to the embedding
    when ``tie_embeddings``), as in Gu & Dao 2023 (Mamba) and Dao & Gu 2024 (Mamba-2).

    Args:
        vocab_size: rows of the embedding (a converted checkpoint keeps its padded size, e.g. 50280).
        d_model, n_layer, mixer, d_state, d_conv, expand, dt_rank, headdim, chunk_size, norm_eps, backend:
            those of :class:`CausalBackbone` (dt_rank None = ceil(d_inner / 16) there; conversions set it
            explicitly, since mamba-ssm and transformers use ceil(d_model / 16)).
        tie_embeddings: share one (vocab_size, d_model) matrix between ``embedding`` and ``lm_head``.
        mixer_norm_eps: epsilon of the gated RMSNorm inside each Mamba-2 mixer (mamba-ssm uses 1e-5;
            transformers' Mamba2 uses ``layer_norm_epsilon``).

    forward: ``input_ids`` (B, L) int64 -> logits (B, L, vocab_size) in the parameters' dtype.
    Raises ShapeError for input that is not a 2-D integer tensor.
    """

    def __init__(self, vocab_size: int = 256, d_model: int = 128, n_layer: int = 4, mixer: str = "mamba",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None, headdim: int = 32,
                 chunk_size: int = 64, norm_eps: float = 1e-5, tie_embeddings: bool = True,
                 mixer_norm_eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        if vocab_size < 1:
            raise ConfigError(f"MambaLM: vocab_size={vocab_size}; expected a positive int")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        shared = dict(d_model=d_model, n_layer=n_layer, mixer=mixer, d_state=d_state, d_conv=d_conv, expand=expand,
                      dt_rank=dt_rank, norm_eps=norm_eps, backend=backend)
        if "mixer_options" in inspect.signature(CausalBackbone.__init__).parameters:
            options = dict(headdim=headdim, chunk_size=chunk_size, norm_eps=mixer_norm_eps) if mixer == "mamba2" else {}
            self.backbone = CausalBackbone(**shared, mixer_options=options)
        else:  # a CausalBackbone without mixer_options: the gated norm's eps is set on each mixer
            self.backbone = CausalBackbone(**shared, headdim=headdim, chunk_size=chunk_size)
            for layer in self.backbone.layers if mixer == "mamba2" and mixer_norm_eps != 1e-5 else ():
                layer.mixer.norm.eps = mixer_norm_eps
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        # mamba-ssm's initialisation of the embedding (normal, std 0.02)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ShapeError(f"MambaLM: input_ids has shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}, "
                             "expected (batch, length) integer token ids")
        return self.lm_head(self.backbone(self.embedding(input_ids)))
