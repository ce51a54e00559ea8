"""Small pieces shared by the Triton kernel families (scan, state correction): jit math helpers and the
launch-size arithmetic."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the segment scanned first, (a2, b2) the one after it: h -> a2 (a1 h + b1) + b2. With
    # reverse=True, Triton passes the later positions' segment first, so the same function scans backwards.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log1p(exp(x)) with torch's threshold (x > 20 -> x); the log1p is the accurate u-1 trick
    e = tl.exp(-tl.abs(x))
    p = 1.0 + e
    lp = tl.where(p == 1.0, e, tl.log(p) * (e / (p - 1.0)))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)


@triton.jit
def _load_state(ptr, off, mdn, HAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """A (BLOCK_D, BLOCK_N) fp32 state (h0 / dhT), or zeros when absent."""
    if HAS:
        v = tl.load(ptr + off, mask=mdn, other=0.0).to(tl.float32)
    else:
        v = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    return v


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _pow2_divisor(x: int) -> int:
    return x & -x if x > 0 else 1


def clamp_blocks(fwd, bwd, d, l, gB, gC):
    """(BLOCK_D, BLOCK_L, warps) of a forward and a backward kernel clamped to the problem: a channel block
    never straddles two B/C groups nor exceeds d, and the forward chunk divides the backward chunk (the
    checkpoint interval)."""
    limit = _next_pow2(d)
    for g in (gB, gC):
        if g > 1:
            limit = min(limit, _pow2_divisor(d // g))
    (bdf, blf, wf), (bdb, blb, wb) = fwd, bwd
    blb = min(blb, max(2, _next_pow2(l)))
    return (min(bdf, limit), min(blf, blb), wf), (min(bdb, limit), blb, wb)


def _needs_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)
