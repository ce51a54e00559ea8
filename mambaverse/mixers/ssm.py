"""SelectiveSSM: the part of a Mamba-1 block between in_proj and out_proj (Gu & Dao 2023, Algorithm 2)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import MambaCache
from ..ops import causal_conv1d, causal_conv1d_step, selective_scan, state_correction
from .defaults import D_CONV, D_STATE
from .layout import as_sequence, gemm_operand, rows_of
from .state import MixerState, as_state


def conv_backend(backend: str) -> str:
    """The causal_conv1d backend for a block's scan ``backend``: our Triton conv beside the Triton scan, else
    auto (the causal-conv1d package or Triton on CUDA, torch on CPU)."""
    return "triton" if backend == "triton" else "auto"


class SelectiveSSM(nn.Module):
    """Depthwise causal conv + SiLU, x_proj to (dt, B, C), dt_proj, S4D-real A and the D skip, over d_inner channels.

    Args:
        d_inner: channels of the inner stream x (B, d_inner, L).
        d_state: SSM state size N per channel.
        d_conv: width of the depthwise causal conv.
        dt_rank: rank of the dt projection; None = ceil(d_inner / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: initial dt is log-uniform in [dt_min, dt_max] (floored at
            dt_init_floor); dt_proj's weights are uniform in +-dt_scale / sqrt(dt_rank).
        conv_bias: give the conv a bias.
        reverse: the anti-causal mirror (conv and scan run from the end), used by the reverse direction of
            bidirectional mixers without flipping activations.

    Parameters (state_dict keys): conv_weight (d_inner, d_conv), conv_bias (d_inner,), x_proj, dt_proj,
    A_log (d_inner, d_state), D (d_inner,).
    """

    def __init__(self, d_inner: int, d_state: int = D_STATE, d_conv: int = D_CONV, dt_rank: int | None = None,
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

    def scan_args(self, x, conv_state=None, return_conv_state=False, backend="auto", channels=False):
        """Conv + projections for x (B, d_inner, L): (the keyword arguments of selective_scan, conv tail or None).

        channels: x is channel-major (``mixers.layout``); u, delta, B, C then come out channel-major too,
        from GEMMs on (rows, B*L) matrices, with no transposes."""
        conv = causal_conv1d(x, self.conv_weight, self.conv_bias, "silu", reverse=self.reverse,
                             initial_state=conv_state, return_final_state=return_conv_state,
                             backend=conv_backend(backend))
        u, conv_tail = conv if return_conv_state else (conv, None)
        if channels:
            b, _, l = u.shape
            x_dbl = torch.mm(gemm_operand(self.x_proj.weight), rows_of(u))  # (dt_rank + 2N, B*L)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=0)
            delta = as_sequence(torch.mm(gemm_operand(self.dt_proj.weight), dt), b, l)  # bias: in the scan
            B, C = as_sequence(B, b, l), as_sequence(C, b, l)
        else:
            x_dbl = self.x_proj(u.transpose(1, 2))  # (B, L, dt_rank + 2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias goes in as delta_bias, fused in the scan
            B, C = B.transpose(1, 2), C.transpose(1, 2)
        args = dict(u=u, delta=delta, A=-torch.exp(self.A_log.float()), B=B, C=C, D=self.D.float(),
                    delta_bias=self.dt_proj.bias.float())
        return args, conv_tail

    def forward(self, x, z=None, initial_state=None, return_final_state=False, backend="auto", return_decay=False,
                channels=False):
        """x, z (B, d_inner, L) -> y (B, d_inner, L) [, MixerState leaving] [, decay].

        initial_state: a MixerState / (conv_state (B, d_inner, d_conv-1), ssm_state (B, d_inner, N)) pair,
        entering before position 0 (after position L-1 when ``reverse``); either part may be None (zeros).
        return_decay: also return the segment's total decay prod_t exp(dt_t A), (B, d_inner, N) fp32 (the
        state API's ``transfer`` decay), computed from the same dt. channels: x and z are channel-major
        (``mixers.layout``); no transposes then."""
        conv_state, ssm_state = as_state(initial_state) or (None, None)
        args, conv_tail = self.scan_args(x, conv_state, return_final_state, backend, channels)
        out = selective_scan(**args, z=z, delta_softplus=True, initial_state=ssm_state,
                             return_final_state=return_final_state, reverse=self.reverse, backend=backend)
        if return_final_state:
            y, ssm_last = out
            out = (y, MixerState(conv_tail, ssm_last))
        if return_decay:
            return (*out, self._decay(args)) if return_final_state else (out, self._decay(args))
        return out

    @staticmethod
    def _decay(args):
        dt_sum = F.softplus(args["delta"].float() + args["delta_bias"][:, None]).sum(-1)  # (B, d_inner)
        return torch.exp(dt_sum[..., None] * args["A"])

    def correction(self, x, z, h_in, conv_state=None, backend="auto", decay_in=None, channels=False):
        """What ``forward``'s output gains when the SSM state h_in (B, d_inner, N) enters instead of zeros:
        C_t (prod_{s<=t} dA_s) h_in times silu(z_t) (``mambaverse.ops.state_correction``). x, z (B, d_inner, L)
        and conv_state as given to ``forward``; returns (B, d_inner, L). Linear in h_in. ``decay_in``
        (B, d_inner, N): the state entering is decay_in * h_in (lets the op stop where it underflows)."""
        args, _ = self.scan_args(x, conv_state, backend=backend, channels=channels)
        # the correction has its own backends (triton, torch, naive); a scan-only name (mamba_ssm) means auto
        backend = backend if backend in ("triton", "torch", "naive") else "auto"
        return state_correction(args["delta"], args["A"], args["C"], h_in, z=z, delta_bias=args["delta_bias"],
                                delta_softplus=True, reverse=self.reverse, decay_in=decay_in, backend=backend)

    def transfer(self, x, initial_state=None, backend="auto", channels=False):
        """x (B, d_inner, L) -> (decay (B, d_inner, N) fp32, MixerState leaving); see ``mixers.state``."""
        conv_state, ssm_state = as_state(initial_state) or (None, None)
        args, conv_tail = self.scan_args(x, conv_state, True, backend, channels)
        _, ssm_last = selective_scan(**args, delta_softplus=True, initial_state=ssm_state, return_final_state=True,
                                     reverse=self.reverse, backend=backend)
        return self._decay(args), MixerState(conv_tail, ssm_last)

    def conv_state_from(self, x):
        """The conv state leaving a segment whose inputs end (start, if ``reverse``) with x (B, d_inner, >= d_conv-1)."""
        k1 = self.d_conv - 1
        if k1 == 0:
            return None
        return x[..., :k1] if self.reverse else x[..., x.shape[-1] - k1:]

    def step(self, x_t, z_t, cache: MambaCache):
        """One causal decoding step: x_t, z_t (B, d_inner) -> (B, d_inner). Updates cache in place."""
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
