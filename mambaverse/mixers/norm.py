"""RMSNorm, the normalisation of every Mamba block."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, computed in fp32, returned in x's dtype.

    Args:
        dim: size of the last dimension of the input (..., dim).
        eps: added to the mean square.

    On CUDA it runs as ``F.rms_norm`` on the fp32 input (the same formula, PyTorch's fused kernel).
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.is_cuda:  # the same fp32 formula as one fused op (fewer passes over x than the expression below)
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)
