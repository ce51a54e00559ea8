"""The Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs": the SSD layer)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import MambaCache
from ..errors import ConfigError
from ..ops import causal_conv1d, causal_conv1d_step
from ..ops.ssd import ssd_scan
from .base import check_hidden
from .defaults import CHUNK_SIZE, D_CONV, D_STATE_MAMBA2, EXPAND, HEADDIM
from .layout import LAYOUTS, project_rows, use_channels
from .norm import RMSNorm
from .ssm import conv_backend


class Mamba2(nn.Module):
    """in_proj -> (z, x, B, C, dt); conv over (x, B, C); SSD scan with a scalar decay per head; gated RMSNorm;
    out_proj.  (B, L, d_model) -> (B, L, d_model). Pure-PyTorch chunked SSD, or mamba-ssm's kernels when installed.

    Args:
        d_model: model width.
        d_state: SSM state size N per head.
        d_conv: width of the depthwise causal conv over (x, B, C).
        expand: d_inner = expand * d_model.
        headdim: channels per head; nheads = d_inner / headdim.
        ngroups: groups of heads sharing B and C.
        chunk_size: positions per block of the chunked SSD algorithm (the kernel's chunk; memory and speed
            only, never the result).
        dt_min, dt_max: initial dt per head is log-uniform in [dt_min, dt_max].
        A_init_range: initial -A per head is uniform in this range.
        bias: biases on in_proj and out_proj.
        norm_eps: epsilon of the gated RMSNorm (mamba-ssm uses 1e-5).
        backend: the ops backend.

    Decoding: ``allocate_cache``/``step``. It does not carry state across calls (``carries_state = False``).
    Raises ConfigError when d_inner is not divisible by headdim or nheads by ngroups; ShapeError for an input
    that is not (B, L, d_model).
    """

    carries_state = False
    directions = (False,)
    #: "auto": on CUDA, in_proj as one GEMM per part (z, xBC, dt), so the conv reads and writes xBC
    #: channel-last in place and x, B, C reach the SSD scan as views; "channels" forces that, "rows" the
    #: single nn.Linear (the CPU default).
    layout: str = "auto"

    def __init__(self, d_model: int, d_state: int = D_STATE_MAMBA2, d_conv: int = D_CONV, expand: int = EXPAND,
                 headdim: int = HEADDIM, ngroups: int = 1, chunk_size: int = CHUNK_SIZE, dt_min: float = 1e-3,
                 dt_max: float = 0.1, A_init_range: tuple[float, float] = (1.0, 16.0), bias: bool = False,
                 backend: str = "auto", norm_eps: float = 1e-5):
        super().__init__()
        self.d_model, self.d_inner = d_model, expand * d_model
        if self.d_inner % headdim:
            raise ConfigError(f"Mamba2: d_inner={self.d_inner} is not divisible by headdim={headdim}")
        self.headdim, self.nheads, self.ngroups, self.d_state = headdim, self.d_inner // headdim, ngroups, d_state
        if self.nheads % ngroups:
            raise ConfigError(f"Mamba2: nheads={self.nheads} is not divisible by ngroups={ngroups}")
        self.chunk_size, self.backend = chunk_size, backend
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim))
        nn.init.kaiming_uniform_(self.conv_weight.unsqueeze(1), a=math.sqrt(5))
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNorm(self.d_inner, norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden):
        check_hidden(hidden, self.d_model, "Mamba2")
        b, l, _ = hidden.shape
        if self.layout not in LAYOUTS:
            raise ConfigError(f"Mamba2: layout={self.layout!r}; expected one of {LAYOUTS}")
        splits = [self.d_inner, self.conv_dim, self.nheads]
        if use_channels(self.layout, hidden):
            z, xBC, dt = project_rows(hidden, self.in_proj.weight, self.in_proj.bias, splits)
        else:
            z, xBC, dt = torch.split(self.in_proj(hidden), splits, dim=-1)
        xBC = causal_conv1d(xBC.transpose(1, 2), self.conv_weight, self.conv_bias, "silu",
                            backend=conv_backend(self.backend)).transpose(1, 2)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        y = ssd_scan(x.reshape(b, l, self.nheads, self.headdim), F.softplus(dt + self.dt_bias),
                     -torch.exp(self.A_log.float()), B.reshape(b, l, self.ngroups, self.d_state),
                     C.reshape(b, l, self.ngroups, self.d_state), self.D, chunk_size=self.chunk_size,
                     backend=self.backend)
        y = self.norm(y.reshape(b, l, self.d_inner) * F.silu(z))
        return self.out_proj(y)

    def allocate_cache(self, batch: int, device=None, dtype=torch.float32) -> MambaCache:
        return MambaCache(batch, self.conv_dim, self.conv_weight.shape[1], (self.nheads, self.headdim, self.d_state),
                          device, dtype)

    def step(self, hidden_t, cache: MambaCache):
        """hidden_t (B, d_model) -> (B, d_model), advancing cache by one position (the SSD recurrence)."""
        b = hidden_t.shape[0]
        z, xBC, dt = torch.split(self.in_proj(hidden_t), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = causal_conv1d_step(xBC, cache.conv_state, self.conv_weight, self.conv_bias, "silu")
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        per_group = self.nheads // self.ngroups
        B = B.float().reshape(b, self.ngroups, self.d_state).repeat_interleave(per_group, dim=1)  # (B, H, N)
        C = C.float().reshape(b, self.ngroups, self.d_state).repeat_interleave(per_group, dim=1)
        x = x.float().reshape(b, self.nheads, self.headdim)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, H)
        decay = torch.exp(dt * -torch.exp(self.A_log.float()))
        state = cache.ssm_state
        state.mul_(decay[..., None, None]).add_((dt[..., None] * x)[..., None] * B[:, :, None, :])
        y = (state * C[:, :, None, :]).sum(-1) + self.D.float()[:, None] * x
        y = self.norm(y.reshape(b, self.d_inner).to(hidden_t.dtype) * F.silu(z))
        return self.out_proj(y)
