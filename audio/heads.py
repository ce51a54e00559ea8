"""Output side of waveform models: the 256-way mu-law head, NLL in bits per sample, and sampling."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class QuantizedHead(nn.Module):
    """Features (..., d_model) -> logits (..., n_classes) over mu-law codes (a linear map; the backbone's final
    RMSNorm precedes it, as in SaShiMi's output layer)."""

    def __init__(self, d_model: int, n_classes: int = 256):
        super().__init__()
        self.proj = nn.Linear(d_model, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


def nll_bits_per_sample(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per sample: logits (B, L, C) float, targets (B, L) int64 in [0, C).
    The SC09 figure of merit of SaShiMi and Mamba (cross-entropy in nats / ln 2)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)) / math.log(2)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one code per row from logits (B, C) -> (B,) int64.

    ``temperature`` 0 is greedy (argmax). ``top_p`` < 1 keeps the smallest set of codes whose probability
    reaches top_p (nucleus sampling, Holtzman et al. 2020). Sampling is Gumbel-max (argmax of logits/T plus
    Gumbel noise), which needs no host synchronisation and so can run inside a CUDA graph.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # the first code is always kept
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(min=1e-10)
    return (logits - torch.log(-torch.log(u))).argmax(-1)
