"""MambaLM: token embedding -> CausalBackbone -> LM head, the layout of every released Mamba language model.

It is the target of the mamba-ssm ``MambaLMHeadModel`` and transformers ``MambaForCausalLM`` /
``Mamba2ForCausalLM`` conversions (see :mod:`mambaverse.pretrained.convert`), and a model of its own for
causal LM training on any token vocabulary.
"""
from __future__ import annotations

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
        d_model, n_layer, mixer, d_state, d_conv, expand, dt_rank, headdim, norm_eps, backend, mixer_options:
            those of :class:`CausalBackbone` (dt_rank None = ceil(d_inner / 16) there; conversions set it
            explicitly, since mamba-ssm and transformers use ceil(d_model / 16)). ``mixer_options`` carries the
            mixer's own settings, e.g. ``{"chunk_size": 256, "norm_eps": 1e-5}`` for Mamba-2 (its SSD chunk and
            gated-RMSNorm epsilon) or ``{"bias": True}``.
        tie_embeddings: share one (vocab_size, d_model) matrix between ``embedding`` and ``lm_head``.

    forward: ``input_ids`` (B, L) int64 -> logits (B, L, vocab_size) in the parameters' dtype.
    Decoding: ``generate`` (greedy, or sampling with temperature / top-k) runs the prompt once to fill the
    recurrent state, then one ``step`` per new token, in O(1) memory per token.
    Raises ConfigError for a bad hyperparameter (as CausalBackbone does) and ShapeError for input that is
    not a 2-D integer tensor.
    """

    def __init__(self, vocab_size: int = 256, d_model: int = 128, n_layer: int = 4, mixer: str = "mamba",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
                 headdim: int | None = None, norm_eps: float = 1e-5, tie_embeddings: bool = True,
                 backend: str = "auto", mixer_options: dict | None = None):
        super().__init__()
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"MambaLM: vocab_size={vocab_size!r}; expected a positive int")
        if not isinstance(mixer, str):
            raise ConfigError(f"MambaLM: mixer={mixer!r}; expected a registered mixer name (a config stores names)")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.backbone = CausalBackbone(d_model=d_model, n_layer=n_layer, mixer=mixer, d_state=d_state, d_conv=d_conv,
                                       expand=expand, dt_rank=dt_rank, headdim=headdim, norm_eps=norm_eps,
                                       backend=backend, mixer_options=mixer_options)
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

    def allocate_cache(self, batch: int, device=None, dtype=torch.float32):
        """Zeroed recurrent state of every layer (see :meth:`CausalBackbone.allocate_cache`)."""
        return self.backbone.allocate_cache(batch, device, dtype)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, cache) -> torch.Tensor:
        """token_ids (B,) at the next position -> logits (B, vocab_size); advances ``cache``."""
        return self.lm_head(self.backbone.step(self.embedding(token_ids), cache))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``input_ids`` (B, L) by ``max_new_tokens`` tokens -> (B, L + max_new_tokens) int64.

        temperature 0 = greedy (argmax); otherwise sample from softmax(logits / temperature), restricted to the
        ``top_k`` most likely tokens when top_k > 0. The prompt is fed through the recurrent ``step`` so that
        every layer's state is exact (any mixer with a ``step``)."""
        if input_ids.dim() != 2 or input_ids.shape[1] < 1 or input_ids.is_floating_point():
            raise ShapeError(f"MambaLM.generate: input_ids has shape {tuple(input_ids.shape)}, expected (batch, length >= 1) "
                             "integer token ids")
        if max_new_tokens < 0 or temperature < 0 or top_k < 0:
            raise ConfigError(f"MambaLM.generate: max_new_tokens={max_new_tokens}, temperature={temperature}, "
                              f"top_k={top_k}; expected non-negative values")
        cache = self.allocate_cache(input_ids.shape[0], input_ids.device, self.embedding.weight.dtype)
        for t in range(input_ids.shape[1]):
            logits = self.step(input_ids[:, t], cache)
        out = [input_ids]
        for _ in range(max_new_tokens):
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                scaled = logits.float() / temperature
                if top_k:
                    kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                token = torch.multinomial(scaled.softmax(-1), 1, generator=generator)[:, 0]
            out.append(token[:, None])
            logits = self.step(token, cache)
        return torch.cat(out, dim=1)
