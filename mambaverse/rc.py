"""Reverse-complement (RC) symmetry for DNA models, on features.

A feature tensor h (B, L, 2k) is laid out so that RC acts as `rc_features(h) = h.flip(1).flip(-1)`:
the sequence is reversed and the channels are mirrored, which also swaps the two halves.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def rc_features(h: torch.Tensor) -> torch.Tensor:
    """The reverse complement of features h (B, L, 2k): length and channels flipped."""
    return h.flip(1).flip(-1)


class RCEquivariant(nn.Module):
    """Parameter sharing (Caduceus-PS): run `module` (B, L, k) -> (B, L, k) on the first half of the
    channels and on the RC of the second half, then put the second result back in RC frame.
    The result satisfies f(rc_features(h)) == rc_features(f(h)) for any `module`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, h, **kwargs):
        """h (B, L, 2k) -> (B, L, 2k); keyword arguments go to ``module`` (e.g. a backbone's ``chunking``)."""
        k = h.shape[-1] // 2
        both = torch.cat([h[..., :k], rc_features(h[..., k:])], dim=0)  # one pass, batch 2B
        out = self.module(both, **kwargs)
        fwd, rev = out.chunk(2, dim=0)
        return torch.cat([fwd, rc_features(rev)], dim=-1)


class PostHocConjoin(nn.Module):
    """Post-hoc conjoining: average a model's output on x and, mapped back, on the RC of x.

    `rc_input` maps an input to its reverse complement (e.g. tokens: complement then flip);
    `rc_output` maps an output computed on RC(x) back to x's frame (identity for sequence-level logits,
    a flip of the length for per-position outputs)."""

    def __init__(self, model: nn.Module, rc_input, rc_output=lambda y: y):
        super().__init__()
        self.model, self.rc_input, self.rc_output = model, rc_input, rc_output

    def forward(self, x):
        return 0.5 * (self.model(x) + self.rc_output(self.model(self.rc_input(x))))
