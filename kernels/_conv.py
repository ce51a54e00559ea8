"""Triton depthwise causal conv1d (+ SiLU), forward and backward, with reverse mode and a conv state.

Work in "conv order": step t reads x at steps t-(k-1) .. t. For ``reverse=True`` conv order is time
reversed, so data position = l-1-t (index arithmetic, no flips). Steps before 0 read ``initial_state``
(conv-order index i = t+j for the tap j of step t < 0 ... stored flipped in memory when reversed, which is
what the flip->conv->flip definition of the reverse mode gives).

Layout: x, y, dy and dx are addressed through their own (batch, channel, step) strides, so the Mamba
block's channel-major activations (a (d, b*l) buffer viewed as (b, d, l), what a ``W @ X^T`` in_proj
gives) and channel-last ones ((b, l, d) transposed, Mamba-2's xBC) are read in place, and y / dx take the
layout of x (no copies). The tile is (BLOCK_D, BLOCK_L); its long side follows the unit stride. Offsets are int64 (a channel-last
step stride times L passes 2^31 at L = 2^21).

Backward: one kernel. For its steps t it recomputes the pre-activation at t, t+1, .., t+k-1 (x taps come
from L1/L2), forms dpre = dy * silu'(pre) there, and gathers dx_t = sum_s w_{k-1-s} dpre_{t+s}; dweight /
dbias take one fp32 atomic per channel block and tap. No fp32 dpre round trip through memory. The gradient
of the initial state touches only the first k-1 steps and is done in torch.
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
def _conv_tap(x_base, s0_base, rows, md, t, l, sxd, sxl, ss_d, j,
              K: tl.constexpr, REV: tl.constexpr, HAS_S0: tl.constexpr):
    """fp32 (BLOCK_D, BLOCK_L) input seen by tap j at conv steps t: x, or initial_state before step 0."""
    p = t - (K - 1) + j
    inx = (p >= 0) & (p < l)
    v = tl.load(x_base + rows[:, None] * sxd + _data_pos(p, l, REV).to(tl.int64)[None, :] * sxl,
                mask=md[:, None] & inx[None, :], other=0.0).to(tl.float32)
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
def _conv_pre(x_base, s0_base, w_ptr, bias_ptr, offs_d, rows, md, t, l, sxd, sxl, swd, ss_d,
              K: tl.constexpr, REV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_S0: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """Pre-activation (conv + bias), fp32 (BLOCK_D, BLOCK_L), at conv steps t."""
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(K):
        v = _conv_tap(x_base, s0_base, rows, md, t, l, sxd, sxl, ss_d, j, K, REV, HAS_S0)
        acc += _conv_weight(w_ptr, rows, swd, j, md)[:, None] * v
    if HAS_BIAS:
        acc += _conv_bias(bias_ptr, offs_d, md)
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, s0_ptr, y_ptr, d, l, sxb, sxd, sxl, syb, syd, syl, swd, ss_b, ss_d,
                     K: tl.constexpr, REV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_S0: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pb, offs_d, md, rows, t = _conv_offsets(d, BLOCK_D, BLOCK_L)
    acc = _conv_pre(x_ptr + pb * sxb, s0_ptr + pb * ss_b, w_ptr, bias_ptr, offs_d, rows, md, t, l, sxd, sxl,
                    swd, ss_d, K, REV, HAS_BIAS, HAS_S0, BLOCK_D, BLOCK_L)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    dp = _data_pos(t, l, REV)
    tl.store(y_ptr + pb * syb + rows[:, None] * syd + dp.to(tl.int64)[None, :] * syl, acc.to(y_ptr.dtype.element_ty),
             mask=md[:, None] & (t < l)[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, s0_ptr, dy_ptr, dx_ptr, dw_ptr, dbias_ptr,
                     d, l, sxb, sxd, sxl, sdyb, sdyd, sdyl, sdxb, sdxd, sdxl, swd, ss_b, ss_d,
                     K: tl.constexpr, REV: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_S0: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pb, offs_d, md, rows, t = _conv_offsets(d, BLOCK_D, BLOCK_L)
    x_base = x_ptr + pb * sxb
    s0_base = s0_ptr + pb * ss_b
    dy_base = dy_ptr + pb * sdyb + rows[:, None] * sdyd
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    # dx_t = sum_j w_j dpre_{t+K-1-j} = sum_s w_{K-1-s} dpre_{t+s}: dpre is recomputed at each shift s
    for s in tl.static_range(K):
        q = t + s
        mq = md[:, None] & (q < l)[None, :]
        g = tl.load(dy_base + _data_pos(q, l, REV).to(tl.int64)[None, :] * sdyl, mask=mq, other=0.0).to(tl.float32)
        if SILU:
            pre = _conv_pre(x_base, s0_base, w_ptr, bias_ptr, offs_d, rows, md, q, l, sxd, sxl, swd, ss_d,
                            K, REV, HAS_BIAS, HAS_S0, BLOCK_D, BLOCK_L)
            sg = tl.sigmoid(pre)
            g = g * sg * (1.0 + pre * (1.0 - sg))
        g = tl.where(mq, g, 0.0)
        if s == 0:  # dpre at the block's own steps: the weight and bias gradients
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + offs_d, tl.sum(g, 1), mask=md)
            for j in tl.static_range(K):
                v = _conv_tap(x_base, s0_base, rows, md, t, l, sxd, sxl, ss_d, j, K, REV, HAS_S0)
                tl.atomic_add(dw_ptr + offs_d * K + j, tl.sum(g * v, 1), mask=md)
        acc += _conv_weight(w_ptr, rows, swd, K - 1 - s, md)[:, None] * g
    dp = _data_pos(t, l, REV)
    tl.store(dx_ptr + pb * sdxb + rows[:, None] * sdxd + dp.to(tl.int64)[None, :] * sdxl, acc.to(dx_ptr.dtype.element_ty),
             mask=md[:, None] & (t < l)[None, :])


# (BLOCK_D, BLOCK_L, num_warps) per layout and pass: the long side of the tile along the unit stride, so
# loads and stores are coalesced, and 2-4 elements per thread, which keeps sm_90 registers at 64 (forward)
# and about 90 (backward) instead of 255 with spills for 16 elements per thread (ptxas, compile_check).
_CONFIG = {"time": {"fwd": (4, 128, 4), "bwd": (4, 128, 8)},  # unit step stride: (b, d, l), channel-major
           "channel": {"fwd": (64, 8, 4), "bwd": (64, 8, 8)}}  # unit channel stride: Mamba-2's xBC


def _tiles(x, l, which):
    """(BLOCK_D, BLOCK_L, num_warps) for x's layout; BLOCK_L shrinks to a short sequence."""
    kind = "channel" if (x.stride(1) == 1 and x.stride(2) != 1) else "time"
    bd, bl, w = _CONFIG[kind][which]
    return bd, min(bl, max(8, triton.next_power_of_2(l))), w


def _readable(x):
    """x itself when one of its step / channel strides is 1 (read in place), else a contiguous copy."""
    return x if (x.stride(2) == 1 or x.stride(1) == 1) else x.contiguous()


def _dense(t):
    """t covers its memory span exactly (a permutation of a contiguous tensor): empty_like keeps its strides."""
    expected = 1
    for i in sorted(range(t.dim()), key=t.stride):
        if t.shape[i] != 1 and t.stride(i) != expected:
            return False
        expected *= t.shape[i]
    return True


def _like(x):
    """An empty tensor of x's shape in x's layout when x is dense (a slice of a wider buffer is not)."""
    if _dense(x):
        return torch.empty_like(x)
    if x.stride(1) == 1 and x.stride(2) != 1:
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], device=x.device, dtype=x.dtype).transpose(1, 2)
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, s0, silu, reverse):
        x = _readable(x)
        b, d, l = x.shape
        K = weight.shape[1]
        has_s0 = s0 is not None and K > 1
        if has_s0 and s0.stride(-1) != 1:
            s0 = s0.contiguous()
        y = _like(x)
        BD, BL, warps = _tiles(x, l, "fwd")
        grid = (triton.cdiv(l, BL), triton.cdiv(d, BD), b)
        ss = (s0.stride(0), s0.stride(1)) if has_s0 else (0, 0)
        _conv_fwd_kernel[grid](x, weight, bias if bias is not None else x, s0 if has_s0 else x, y,
                               d, l, *x.stride(), *y.stride(), weight.stride(0), ss[0], ss[1],
                               K=K, REV=reverse, HAS_BIAS=bias is not None, HAS_S0=has_s0, SILU=silu,
                               BLOCK_D=BD, BLOCK_L=BL, num_warps=warps)
        ctx.save_for_backward(x, weight, bias, s0 if has_s0 else None)
        ctx.cfg = (silu, reverse, has_s0)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, s0 = ctx.saved_tensors
        silu, reverse, has_s0 = ctx.cfg
        b, d, l = x.shape
        K = weight.shape[1]
        dy = _readable(dy)
        f32 = torch.float32
        dw = torch.zeros(d, K, device=x.device, dtype=f32)
        dbias = torch.zeros(d, device=x.device, dtype=f32) if bias is not None else dw
        dx = _like(x)
        BD, BL, warps = _tiles(x, l, "bwd")
        grid = (triton.cdiv(l, BL), triton.cdiv(d, BD), b)
        ss = (s0.stride(0), s0.stride(1)) if has_s0 else (0, 0)
        _conv_bwd_kernel[grid](x, weight, bias if bias is not None else x, s0 if has_s0 else x, dy, dx, dw, dbias,
                               d, l, *x.stride(), *dy.stride(), *dx.stride(), weight.stride(0), ss[0], ss[1],
                               K=K, REV=reverse, HAS_BIAS=bias is not None, HAS_S0=has_s0, SILU=silu,
                               BLOCK_D=BD, BLOCK_L=BL, num_warps=warps)
        ds0 = None
        if has_s0 and ctx.needs_input_grad[3]:
            ds0 = _state_grad(x, weight, bias, s0, dy, silu, reverse)
        return (dx, dw.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else None, ds0, None, None)


def _state_grad(x, weight, bias, s0, dy, silu, reverse):
    """d initial_state (b, d, k-1): state index i (conv order) feeds step t = i - j through tap j; only the
    first k-1 conv steps see the state, so dpre is recomputed there in torch (a few columns)."""
    b, d, l = x.shape
    K = weight.shape[1]
    m = min(K - 1, l)
    f32 = torch.float32
    xs = (x.flip(-1) if reverse else x)[..., :m].float()  # conv order
    sc = (s0.flip(-1) if reverse else s0).float()
    win = torch.cat([sc, xs], -1)  # conv-order inputs of steps 0 .. m-1
    wf = weight.float()
    pre = torch.stack([(win[..., t:t + K] * wf).sum(-1) for t in range(m)], -1)
    if bias is not None:
        pre = pre + bias.float()[:, None]
    g = (dy.flip(-1) if reverse else dy)[..., :m].float()
    if silu:
        sg = torch.sigmoid(pre)
        g = g * sg * (1.0 + pre * (1.0 - sg))
    ds0c = torch.zeros(b, d, K - 1, device=x.device, dtype=f32)
    for i in range(K - 1):
        for j in range(i + 1):
            if i - j < m:
                ds0c[:, :, i] += wf[:, j] * g[:, :, i - j]
    return (ds0c.flip(-1) if reverse else ds0c).to(s0.dtype)


def causal_conv1d_triton(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                         return_final_state=False):
    """Depthwise causal conv1d (+ SiLU) on Triton; same contract as ``mambaverse.ops.causal_conv1d``.

    x (b, d, l) in any layout with a unit step or channel stride is read in place; y has x's layout."""
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
