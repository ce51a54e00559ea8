"""Triton depthwise causal conv1d (+ SiLU), forward and backward, with reverse mode and a conv state.

Work in "conv order": step t reads x at steps t-(k-1) .. t. For ``reverse=True`` conv order is time
reversed, so data position = l-1-t (index arithmetic, no flips). Steps before 0 read ``initial_state``
(conv-order index i = t+j for the tap j of step t < 0 ... stored flipped in memory when reversed, which is
what the flip->conv->flip definition of the reverse mode gives).

Backward: kernel 1 recomputes the pre-activation, writes dpre = dy * silu'(pre) (fp32) and accumulates
dweight / dbias with one atomic per channel block and tap; kernel 2 gathers dx_t = sum_j w_j dpre_{t+k-1-j}.
The gradient of the initial state touches only the first k-1 steps and is done in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _conv_offsets(d, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """Grid (l block, channel block, batch) -> (batch, channels, channel mask, int64 rows, conv steps t)."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    rows = offs_d.to(tl.int64)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    return pb, offs_d, md, rows, t


@triton.jit
def _data_pos(t, l, REV: tl.constexpr):
    """Conv-order step -> data position (time reversed for reverse=True)."""
    if REV:
        dp = l - 1 - t
    else:
        dp = t
    return dp


@triton.jit
def _conv_weight(w_ptr, rows, swd, j, md):
    return tl.load(w_ptr + rows * swd + j, mask=md, other=0.0).to(tl.float32)


@triton.jit
def _conv_bias(bias_ptr, offs_d, md):
    return tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _conv_tap(x_base, s0_base, rows, md, t, l, ss_d, j,
              K: tl.constexpr, REV: tl.constexpr, HAS_S0: tl.constexpr):
    """fp32 (BLOCK_D, BLOCK_L) input seen by tap j at conv steps t: x, or initial_state before step 0."""
    p = t - (K - 1) + j
    inx = (p >= 0) & (p < l)
    v = tl.load(x_base + rows[:, None] * l + _data_pos(p, l, REV)[None, :], mask=md[:, None] & inx[None, :], other=0.0).to(tl.float32)
    if HAS_S0:
        i = p + (K - 1)
        ins = (p < 0) & (i >= 0)
        if REV:
            si = K - 2 - i
        else:
            si = i
        v += tl.load(s0_base + rows[:, None] * ss_d + si[None, :], mask=md[:, None] & ins[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _conv_pre(x_base, s0_base, w_ptr, rows, md, t, l, swd, ss_d,
              K: tl.constexpr, REV: tl.constexpr, HAS_S0: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(K):
        v = _conv_tap(x_base, s0_base, rows, md, t, l, ss_d, j, K, REV, HAS_S0)
        acc += _conv_weight(w_ptr, rows, swd, j, md)[:, None] * v
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, s0_ptr, y_ptr, d, l, swd, ss_b, ss_d,
                     K: tl.constexpr, REV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_S0: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pb, offs_d, md, rows, t = _conv_offsets(d, BLOCK_D, BLOCK_L)
    x_base = x_ptr + pb * d * l
    acc = _conv_pre(x_base, s0_ptr + pb * ss_b, w_ptr, rows, md, t, l, swd, ss_d, K, REV, HAS_S0, BLOCK_D, BLOCK_L)
    if HAS_BIAS:
        acc += _conv_bias(bias_ptr, offs_d, md)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    dp = _data_pos(t, l, REV)
    tl.store(y_ptr + pb * d * l + rows[:, None] * l + dp[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=md[:, None] & (t < l)[None, :])


@triton.jit
def _conv_bwd_dpre_kernel(x_ptr, w_ptr, bias_ptr, s0_ptr, dy_ptr, dpre_ptr, dw_ptr, dbias_ptr,
                          d, l, swd, ss_b, ss_d,
                          K: tl.constexpr, REV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_S0: tl.constexpr,
                          SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pb, offs_d, md, rows, t = _conv_offsets(d, BLOCK_D, BLOCK_L)
    mt = md[:, None] & (t < l)[None, :]
    x_base = x_ptr + pb * d * l
    s0_base = s0_ptr + pb * ss_b
    dp = _data_pos(t, l, REV)
    g = tl.load(dy_ptr + pb * d * l + rows[:, None] * l + dp[None, :], mask=mt, other=0.0).to(tl.float32)
    if SILU:
        pre = _conv_pre(x_base, s0_base, w_ptr, rows, md, t, l, swd, ss_d, K, REV, HAS_S0, BLOCK_D, BLOCK_L)
        if HAS_BIAS:
            pre += _conv_bias(bias_ptr, offs_d, md)
        sg = tl.sigmoid(pre)
        g = g * sg * (1.0 + pre * (1.0 - sg))
    g = tl.where(mt, g, 0.0)
    tl.store(dpre_ptr + pb * d * l + rows[:, None] * l + t[None, :], g, mask=mt)  # conv order
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, tl.sum(g, 1), mask=md)
    for j in tl.static_range(K):
        v = _conv_tap(x_base, s0_base, rows, md, t, l, ss_d, j, K, REV, HAS_S0)
        tl.atomic_add(dw_ptr + offs_d * K + j, tl.sum(g * v, 1), mask=md)


@triton.jit
def _conv_bwd_dx_kernel(dpre_ptr, w_ptr, dx_ptr, d, l, swd,
                        K: tl.constexpr, REV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pb, offs_d, md, rows, t = _conv_offsets(d, BLOCK_D, BLOCK_L)
    base = pb * d * l + rows[:, None] * l
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(K):
        q = t + (K - 1) - j
        g = tl.load(dpre_ptr + base + q[None, :], mask=md[:, None] & (q < l)[None, :], other=0.0)
        acc += _conv_weight(w_ptr, rows, swd, j, md)[:, None] * g
    dp = _data_pos(t, l, REV)
    tl.store(dx_ptr + base + dp[None, :], acc.to(dx_ptr.dtype.element_ty), mask=md[:, None] & (t < l)[None, :])


_BLOCK_D, _BLOCK_L = 16, 128


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, s0, silu, reverse):
        x = x.contiguous()
        b, d, l = x.shape
        K = weight.shape[1]
        has_s0 = s0 is not None and K > 1
        if has_s0 and s0.stride(-1) != 1:
            s0 = s0.contiguous()
        y = torch.empty_like(x)
        BD, BL = _BLOCK_D, min(_BLOCK_L, max(16, triton.next_power_of_2(l)))
        grid = (triton.cdiv(l, BL), triton.cdiv(d, BD), b)
        ss = (s0.stride(0), s0.stride(1)) if has_s0 else (0, 0)
        _conv_fwd_kernel[grid](x, weight, bias if bias is not None else x, s0 if has_s0 else x, y,
                               d, l, weight.stride(0), ss[0], ss[1],
                               K=K, REV=reverse, HAS_BIAS=bias is not None, HAS_S0=has_s0, SILU=silu,
                               BLOCK_D=BD, BLOCK_L=BL, num_warps=4)
        ctx.save_for_backward(x, weight, bias, s0 if has_s0 else None)
        ctx.cfg = (silu, reverse, has_s0, BD, BL)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, s0 = ctx.saved_tensors
        silu, reverse, has_s0, BD, BL = ctx.cfg
        b, d, l = x.shape
        K = weight.shape[1]
        dy = dy.contiguous()
        f32 = torch.float32
        dpre = torch.empty(b, d, l, device=x.device, dtype=f32)
        dw = torch.zeros(d, K, device=x.device, dtype=f32)
        dbias = torch.zeros(d, device=x.device, dtype=f32) if bias is not None else dw
        grid = (triton.cdiv(l, BL), triton.cdiv(d, BD), b)
        ss = (s0.stride(0), s0.stride(1)) if has_s0 else (0, 0)
        _conv_bwd_dpre_kernel[grid](x, weight, bias if bias is not None else x, s0 if has_s0 else x, dy, dpre,
                                    dw, dbias, d, l, weight.stride(0), ss[0], ss[1],
                                    K=K, REV=reverse, HAS_BIAS=bias is not None, HAS_S0=has_s0, SILU=silu,
                                    BLOCK_D=BD, BLOCK_L=BL, num_warps=4)
        dx = torch.empty_like(x)
        _conv_bwd_dx_kernel[grid](dpre, weight, dx, d, l, weight.stride(0),
                                  K=K, REV=reverse, BLOCK_D=BD, BLOCK_L=BL, num_warps=4)
        ds0 = None
        if has_s0 and ctx.needs_input_grad[3]:
            # conv-order index i of the state feeds step t = i - j through tap j (0 <= t < l)
            wf = weight.float()
            ds0c = torch.zeros(b, d, K - 1, device=x.device, dtype=f32)
            for i in range(K - 1):
                for j in range(i + 1):
                    if i - j < l:
                        ds0c[:, :, i] += wf[:, j] * dpre[:, :, i - j]
            ds0 = (ds0c.flip(-1) if reverse else ds0c).to(s0.dtype)
        return (dx, dw.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else None, ds0, None, None)


def causal_conv1d_triton(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                         return_final_state=False):
    """Depthwise causal conv1d (+ SiLU) on Triton; same contract as ``mambaverse.ops.causal_conv1d``."""
    from .ops import check_device

    check_device("causal_conv1d_triton", x)
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d_triton: activation {activation!r} is unknown; expected None or 'silu'")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d_triton: x {tuple(x.shape)} / weight {tuple(weight.shape)}; expected (b, d, l) and (d, k)")
    b, d, l = x.shape
    K = weight.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (b, d, K - 1):
        raise ValueError(f"causal_conv1d_triton: initial_state has shape {tuple(initial_state.shape)}, expected {(b, d, K - 1)}")
    y = _ConvFn.apply(x, weight, bias, initial_state, activation == "silu", bool(reverse))
    if not return_final_state:
        return y
    if K == 1:
        return y, x.new_zeros(b, d, 0)
    if l >= K - 1:
        final = x[..., :K - 1] if reverse else x[..., l - (K - 1):]
    else:
        s0 = x.new_zeros(b, d, K - 1) if initial_state is None else initial_state.to(x.dtype)
        final = torch.cat([x, s0], -1)[..., :K - 1] if reverse else torch.cat([s0, x], -1)[..., -(K - 1):]
    return y, final
