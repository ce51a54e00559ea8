"""Sequence mixers: the Mamba-1 block, its bidirectional forms, and the Mamba-2 (SSD) block.

All mixers map hidden states (B, L, d_model) -> (B, L, d_model). They ask ops for scans and convs,
never kernels, so every backend serves every mixer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import MambaCache
from .errors import ConfigError, ShapeError
from .ops import bidirectional_scan, causal_conv1d, causal_conv1d_step, selective_scan
from .ops.ssd import ssd_scan


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


def _check_hidden(x, d_model, who):
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ShapeError(f"{who}: input has shape {tuple(x.shape)}, expected (batch, length, d_model={d_model})")


class SelectiveSSM(nn.Module):
    """The part of a Mamba-1 block between in_proj and out_proj, for d_inner channels:
    depthwise causal conv + SiLU, x_proj to (dt, B, C), dt_proj, S4D-real A, and the D skip.

    ``reverse=True`` makes it the anti-causal mirror (conv and scan run from the end), used by the
    reverse direction of bidirectional mixers without flipping activations.
    """

    def __init__(self, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 conv_bias: bool = True, reverse: bool = False):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv, self.reverse = d_inner, d_state, d_conv, reverse
        self.dt_rank = dt_rank or math.ceil(d_inner / 16)
        self.conv_weight = nn.Parameter(torch.empty(d_inner, d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner)) if conv_bias else None
        nn.init.kaiming_uniform_(self.conv_weight.unsqueeze(1), a=math.sqrt(5))  # what nn.Conv1d does
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        # dt_proj: weights so that dt starts near dt_init; bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max]
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_weight_decay = True
        # S4D-real: A[:, k] = -(k + 1), stored as log so that A stays negative
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

    def scan_args(self, x, conv_state=None, return_conv_state=False):
        """Conv + projections for x (B, d_inner, L): the arguments of selective_scan, as a dict."""
        conv = causal_conv1d(x, self.conv_weight, self.conv_bias, "silu", reverse=self.reverse,
                             initial_state=conv_state, return_final_state=return_conv_state)
        u, conv_tail = conv if return_conv_state else (conv, None)
        b, _, l = u.shape
        x_dbl = self.x_proj(u.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias goes in as delta_bias, fused in the scan
        args = dict(u=u, delta=delta, A=-torch.exp(self.A_log.float()), B=B.transpose(1, 2), C=C.transpose(1, 2),
                    D=self.D.float(), delta_bias=self.dt_proj.bias.float())
        return args, conv_tail

    def forward(self, x, z=None, initial_state=None, return_final_state=False, backend="auto"):
        """x, z (B, d_inner, L). initial_state: (conv_state (B, d_inner, d_conv-1), ssm_state (B, d_inner, N))."""
        conv_state, ssm_state = initial_state if initial_state is not None else (None, None)
        args, conv_tail = self.scan_args(x, conv_state, return_final_state)
        out = selective_scan(**args, z=z, delta_softplus=True, initial_state=ssm_state,
                             return_final_state=return_final_state, reverse=self.reverse, backend=backend)
        if return_final_state:
            y, ssm_last = out
            return y, (conv_tail, ssm_last)
        return out

    def step(self, x_t, z_t, cache: MambaCache):
        """One causal decoding step: x_t, z_t (B, d_inner). Updates cache in place."""
        u = causal_conv1d_step(x_t, cache.conv_state, self.conv_weight, self.conv_bias, "silu")
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias).float())  # (B, d_inner)
        A = -torch.exp(self.A_log.float())
        state = cache.ssm_state
        state.mul_(torch.exp(delta[..., None] * A)).add_((delta * u.float())[..., None] * B.float()[:, None, :])
        y = (state * C.float()[:, None, :]).sum(-1) + self.D.float() * u.float()
        if z_t is not None:
            y = y * F.silu(z_t.float())
        return y.to(x_t.dtype)


class Mamba(nn.Module):
    """Mamba-1 block: in_proj -> (x, z); SelectiveSSM(x) gated by SiLU(z); out_proj."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
                 bias: bool = False, conv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.d_model, self.d_inner, self.backend = d_model, expand * d_model, backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.ssm = SelectiveSSM(self.d_inner, d_state, d_conv, dt_rank, conv_bias=conv_bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden, initial_state=None, return_final_state=False):
        _check_hidden(hidden, self.d_model, "Mamba")
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        out = self.ssm(x, z, initial_state, return_final_state, self.backend)
        y, state = out if return_final_state else (out, None)
        y = self.out_proj(y.transpose(1, 2))
        return (y, state) if return_final_state else y

    def allocate_cache(self, batch: int, device=None, dtype=torch.float32) -> MambaCache:
        return MambaCache(batch, self.d_inner, self.ssm.d_conv, (self.d_inner, self.ssm.d_state), device, dtype)

    def step(self, hidden_t, cache: MambaCache):
        """hidden_t (B, d_model) -> (B, d_model), advancing cache by one position."""
        x, z = self.in_proj(hidden_t).chunk(2, dim=-1)
        return self.out_proj(self.ssm.step(x, z, cache))


class BidirectionalMamba(nn.Module):
    """A forward and a reverse selective scan over the same sequence.

    variant="caduceus": each direction is a whole Mamba block (in_proj, SSM, out_proj); with
        ``tie_projections`` the two share in_proj and out_proj. Outputs combine after out_proj by
        ``strategy`` "add" or "ew_multiply" (Caduceus' BiMamba).
    variant="vim_v2": one shared in_proj and out_proj; separate conv and SSM per direction; the two
        gated scan outputs are averaged before out_proj (Vim's bimamba v2).
    The reverse direction never flips activations: its conv and scan run from the end.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
                 variant: str = "caduceus", strategy: str = "add", tie_projections: bool = True,
                 bias: bool = False, backend: str = "auto"):
        super().__init__()
        if variant not in ("caduceus", "vim_v2"):
            raise ConfigError(f"BidirectionalMamba: variant={variant!r}; expected 'caduceus' or 'vim_v2'")
        if strategy not in ("add", "ew_multiply"):
            raise ConfigError(f"BidirectionalMamba: strategy={strategy!r}; expected 'add' or 'ew_multiply'")
        if variant == "vim_v2" and strategy != "add":
            raise ConfigError("BidirectionalMamba: variant 'vim_v2' combines by averaging; expected strategy='add'")
        self.d_model, self.d_inner = d_model, expand * d_model
        self.variant, self.strategy, self.backend = variant, strategy, backend
        self.tie_projections = tie_projections or variant == "vim_v2"
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        if not self.tie_projections:
            self.in_proj_rev = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
            self.out_proj_rev = nn.Linear(self.d_inner, d_model, bias=bias)
        self.ssm_fwd = SelectiveSSM(self.d_inner, d_state, d_conv, dt_rank)
        self.ssm_rev = SelectiveSSM(self.d_inner, d_state, d_conv, dt_rank, reverse=True)

    def direction(self, hidden, reverse: bool, initial_state=None, return_final_state=False):
        """One direction's contribution (B, L, d_model), ready for `combine`, with state carrying.

        Forward direction: ``initial_state`` (conv_state, ssm_state) enters before position 0 and the final
        state leaves after position L-1. Reverse direction: it enters after position L-1 and leaves before
        position 0, so chunks of a long sequence are visited right to left. With tied projections and "add",
        the reverse contribution has no out_proj bias (the bias enters once, with the forward one), so that
        ``combine(direction(h, False), direction(h, True)) == forward(h)``."""
        _check_hidden(hidden, self.d_model, "BidirectionalMamba")
        proj = self.in_proj_rev if (reverse and not self.tie_projections) else self.in_proj
        x, z = proj(hidden).transpose(1, 2).chunk(2, dim=1)
        ssm = self.ssm_rev if reverse else self.ssm_fwd
        out = ssm(x, z, initial_state, return_final_state, self.backend)
        y, state = out if return_final_state else (out, None)
        y = y.transpose(1, 2)
        if not self.tie_projections:
            y = (self.out_proj_rev if reverse else self.out_proj)(y)
        elif self.variant == "vim_v2" or self.strategy == "add":
            y = F.linear(y, self.out_proj.weight, None if reverse else self.out_proj.bias)
        else:
            y = self.out_proj(y)
        return (y, state) if return_final_state else y

    def combine(self, fwd, rev):
        """Merge the two contributions of `direction` into the block's output."""
        if self.strategy == "ew_multiply":
            return fwd * rev
        return 0.5 * (fwd + rev) if self.variant == "vim_v2" else fwd + rev

    def forward(self, hidden, initial_state=None, return_final_state=False):
        """hidden (B, L, d_model). initial_state: (forward-direction state, reverse-direction state), each a
        (conv_state, ssm_state) pair or None; the reverse one enters at the end of the sequence (see
        `direction`). With return_final_state, also returns the pair of states leaving each direction."""
        if initial_state is not None or return_final_state:
            init_f, init_r = initial_state if initial_state is not None else (None, None)
            f = self.direction(hidden, False, init_f, return_final_state)
            r = self.direction(hidden, True, init_r, return_final_state)
            if return_final_state:
                return self.combine(f[0], r[0]), (f[1], r[1])
            return self.combine(f, r)
        _check_hidden(hidden, self.d_model, "BidirectionalMamba")
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        fwd, _ = self.ssm_fwd.scan_args(x)
        if self.tie_projections:  # one gate for both directions: a single fused bidirectional scan
            rev, _ = self.ssm_rev.scan_args(x)
            combine = "add" if self.variant == "vim_v2" or self.strategy == "add" else "stack"
            pair = {k: (fwd[k], rev[k]) for k in fwd}
            y = bidirectional_scan(**pair, z=z, delta_softplus=True, combine=combine, backend=self.backend)
            if combine == "add":
                y = self.out_proj(y.transpose(1, 2))
                return 0.5 * y if self.variant == "vim_v2" else y
            return self.out_proj(y[0].transpose(1, 2)) * self.out_proj(y[1].transpose(1, 2))
        x_r, z_r = self.in_proj_rev(hidden).transpose(1, 2).chunk(2, dim=1)
        rev, _ = self.ssm_rev.scan_args(x_r)
        y_f = self.out_proj(selective_scan(**fwd, z=z, delta_softplus=True, backend=self.backend).transpose(1, 2))
        y_r = self.out_proj_rev(selective_scan(**rev, z=z_r, delta_softplus=True, reverse=True,
                                               backend=self.backend).transpose(1, 2))
        return y_f + y_r if self.strategy == "add" else y_f * y_r


class Mamba2(nn.Module):
    """Mamba-2 block: in_proj -> (z, x, B, C, dt); conv over (x, B, C); SSD scan with a scalar decay per
    head; gated RMSNorm; out_proj. Pure-PyTorch chunked SSD, or mamba-ssm's kernels when installed."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 32,
                 ngroups: int = 1, chunk_size: int = 64, dt_min: float = 1e-3, dt_max: float = 0.1,
                 A_init_range: tuple[float, float] = (1.0, 16.0), bias: bool = False, backend: str = "auto"):
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
        self.norm = RMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden):
        _check_hidden(hidden, self.d_model, "Mamba2")
        b, l, _ = hidden.shape
        z, xBC, dt = torch.split(self.in_proj(hidden), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = causal_conv1d(xBC.transpose(1, 2), self.conv_weight, self.conv_bias, "silu").transpose(1, 2)
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
