"""Helpers shared by the SSD backends."""
from __future__ import annotations

import torch


def _heads(t, h):
    """B or C (b, l, g, n) repeated to one group per head, (b, l, h, n)."""
    return t.repeat_interleave(h // t.shape[2], dim=2)


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32 (the state is never below fp32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
