"""Triton state correction: the output a selective scan gains when a state h_in enters it after the fact.

    y_t = sum_n C_t[n] * P0[:, n] * (prod_{s<=t} exp(dt_s A[:, n])) * h_in[:, n]   (times silu(z_t) if gated)

with P0 (``decay_in``) a decay accumulated before the segment (ones when absent).

Context parallel scans each rank's slice from a zero state and adds this once the true incoming state is
known (``mambaverse.ops.state_correction``). It is no recurrence: per step only a running sum of dt and an
exponential, so a program (channel block, batch) walks time in chunks of ``BLOCK_L`` with the carried
decay P = P0 * prod exp(dt A) of the chunks before, a ``(BLOCK_D, BLOCK_N)`` tile in registers. Once P has
underflowed to exactly zero for the whole block (dt >= 0, A <= 0 keep it there), every later output and
gradient of that block is exactly zero and the program stops: a decaying state reaches only a bounded
stretch of a long slice, so the correction costs that stretch, not the slice.

Backward walks the same way and writes, per step, q_t = d out / d cum_t (dt's gradient is then a suffix
sum of q, done in torch), dz, and dC with fp32 atomics (one per channel block); dA and
G = d out / d (P0 h_in) are per-program register sums (dh_in = P0 G, dP0 = h_in G).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import _next_pow2, _pow2_divisor, _softplus

LOG2E = 1.4426950408889634

# (BLOCK_D, BLOCK_L, num_warps) of the forward and backward kernels; see set_correction_config. Small
# channel blocks: with batch 1 and d_inner 512 they give 256 programs. Not yet tuned on a GPU; compiled for
# sm_90 without spills (fwd 95 registers, bwd 208; bwd with 2 warps would use all 255).
_CONFIG = {"fwd": (2, 64, 2), "bwd": (2, 64, 4)}


def set_correction_config(fwd=None, bwd=None):
    """Set (BLOCK_D, BLOCK_L, num_warps) of the correction kernels; returns the old settings."""
    old = dict(_CONFIG)
    if fwd is not None:
        _CONFIG["fwd"] = tuple(fwd)
    if bwd is not None:
        _CONFIG["bwd"] = tuple(bwd)
    return old


@triton.jit
def _setup(A_ptr, h_ptr, db_ptr, p0_ptr, pid_d, pb, d, n, HAS_DB: tl.constexpr, HAS_P0: tl.constexpr,
           BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    rows = offs_d.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mn = offs_n < n
    mdn = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + rows[:, None] * n + offs_n[None, :], mask=mdn, other=0.0).to(tl.float32)
    state_off = (pb * d + rows[:, None]) * n + offs_n[None, :]
    h = tl.load(h_ptr + state_off, mask=mdn, other=0.0).to(tl.float32)
    if HAS_DB:
        dbv = tl.load(db_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        dbv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # the decay entering: zero in masked lanes, so that they never keep a program walking
    if HAS_P0:
        P0 = tl.load(p0_ptr + state_off, mask=mdn, other=0.0).to(tl.float32)
    else:
        P0 = tl.where(mdn, 1.0, 0.0)
    return offs_d, md, rows, offs_n, mn, mdn, A, h, dbv, P0


@triton.jit
def _step_tiles(dt_base, C_base, c, l, offs_l, md, mn, dbv,
                REV: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_L: tl.constexpr):
    """Chunk c: positions, masks, raw and processed dt (step, channel) and C (step, state)."""
    s = c * BLOCK_L + offs_l
    ml = s < l
    if REV:
        pos = l - 1 - s
    else:
        pos = s
    mld = ml[:, None] & md[None, :]
    raw = tl.load(dt_base + pos[:, None], mask=mld, other=0.0).to(tl.float32)
    if HAS_DB:
        raw = raw + dbv[None, :]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(mld, dt, 0.0)
    Ct = tl.load(C_base + pos[:, None], mask=ml[:, None] & mn[None, :], other=0.0).to(tl.float32)
    return pos, ml, mld, dt, Ct


@triton.jit
def _corr_fwd_kernel(
    dt_ptr, A_ptr, C_ptr, h_ptr, z_ptr, db_ptr, p0_ptr, out_ptr,
    sdt_b, sdt_d, sC_b, sC_g, sC_n, sz_b, sz_d,
    d, l, n, eC,
    REV: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_P0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    offs_d, md, rows, offs_n, mn, mdn, A, h, dbv, P = _setup(A_ptr, h_ptr, db_ptr, p0_ptr, pid_d, pb, d, n,
                                                            HAS_DB, HAS_P0, BLOCK_D, BLOCK_N, BLOCK_L)
    A2 = A * 1.4426950408889634
    offs_l = tl.arange(0, BLOCK_L)
    dt_base = dt_ptr + pb * sdt_b + rows[None, :] * sdt_d
    z_base = z_ptr + pb * sz_b + rows[None, :] * sz_d
    out_base = out_ptr + (pb * d + rows[None, :]) * l
    g = (pid_d * BLOCK_D) // eC
    C_base = C_ptr + pb * sC_b + g * sC_g + offs_n[None, :] * sC_n
    nchunks = tl.cdiv(l, BLOCK_L)
    c = pid_d * 0
    go = (nchunks > 0) & (tl.max(tl.max(P, 1), 0) > 0.0)
    while go:
        pos, ml, mld, dt, Ct = _step_tiles(dt_base, C_base, c, l, offs_l, md, mn, dbv, REV, HAS_DB, SOFTPLUS,
                                           BLOCK_L)
        cum = tl.cumsum(dt, 0)
        W = tl.exp2(A2[None, :, :] * cum[:, :, None]) * P[None, :, :]
        y = tl.sum(W * h[None, :, :] * Ct[:, None, :], 2)
        if HAS_Z:
            zz = tl.load(z_base + pos[:, None], mask=mld, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_base + pos[:, None], y.to(out_ptr.dtype.element_ty), mask=mld)
        P = P * tl.exp2(A2 * tl.sum(dt, 0)[:, None])
        c += 1
        go = (c < nchunks) & (tl.max(tl.max(P, 1), 0) > 0.0)


@triton.jit
def _corr_bwd_kernel(
    dt_ptr, A_ptr, C_ptr, h_ptr, z_ptr, db_ptr, p0_ptr, dout_ptr,
    q_ptr, dz_ptr, dC_ptr, G_ptr, dA_ptr,
    sdt_b, sdt_d, sC_b, sC_g, sC_n, sz_b, sz_d, sdC_b, sdC_g, sdC_n,
    d, l, n, eC,
    REV: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_P0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    offs_d, md, rows, offs_n, mn, mdn, A, h, dbv, P0 = _setup(A_ptr, h_ptr, db_ptr, p0_ptr, pid_d, pb, d, n,
                                                             HAS_DB, HAS_P0, BLOCK_D, BLOCK_N, BLOCK_L)
    h0 = P0 * h  # the state entering
    R = tl.where(mdn, 1.0, 0.0)  # the decay since the segment's start
    A2 = A * 1.4426950408889634
    offs_l = tl.arange(0, BLOCK_L)
    dt_base = dt_ptr + pb * sdt_b + rows[None, :] * sdt_d
    z_base = z_ptr + pb * sz_b + rows[None, :] * sz_d
    dense = (pb * d + rows[None, :]) * l  # dout, q, dz: contiguous (b, d, l)
    g = (pid_d * BLOCK_D) // eC
    C_base = C_ptr + pb * sC_b + g * sC_g + offs_n[None, :] * sC_n
    dC_base = dC_ptr + pb * sdC_b + g * sdC_g + offs_n[None, :] * sdC_n
    G = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    before = tl.zeros((BLOCK_D,), dtype=tl.float32)  # sum of dt over the chunks already walked
    nchunks = tl.cdiv(l, BLOCK_L)
    c = pid_d * 0
    go = (nchunks > 0) & (tl.max(tl.max(P0, 1), 0) > 0.0)
    while go:
        pos, ml, mld, dt, Ct = _step_tiles(dt_base, C_base, c, l, offs_l, md, mn, dbv, REV, HAS_DB, SOFTPLUS,
                                           BLOCK_L)
        cum = tl.cumsum(dt, 0)
        Wr = tl.exp2(A2[None, :, :] * cum[:, :, None]) * R[None, :, :]  # decay since the segment's start
        hw = Wr * h0[None, :, :]
        do = tl.load(dout_ptr + dense + pos[:, None], mask=mld, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_base + pos[:, None], mask=mld, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            y = tl.sum(hw * Ct[:, None, :], 2)
            dz = do * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + dense + pos[:, None], dz.to(dz_ptr.dtype.element_ty), mask=mld)
            dy = do * zz * sz
        else:
            dy = do
        er = dy[:, :, None] * Ct[:, None, :] * Wr  # d out / d (state entering), per (step, channel, state)
        G += tl.sum(er, 0)
        eh = er * h0[None, :, :]
        tl.store(q_ptr + dense + pos[:, None], tl.sum(eh * A[None, :, :], 2), mask=mld)
        dA_acc += tl.sum(eh * (before[None, :] + cum)[:, :, None], 0)
        dC = tl.sum(dy[:, :, None] * hw, 1)
        tl.atomic_add(dC_base + pos[:, None], dC, mask=ml[:, None] & mn[None, :])
        tot = tl.sum(dt, 0)
        before += tot
        R = R * tl.exp2(A2 * tot[:, None])
        c += 1
        go = (c < nchunks) & (tl.max(tl.max(P0 * R, 1), 0) > 0.0)
    off = (pb * d + rows[:, None]) * n + offs_n[None, :]
    tl.store(G_ptr + off, G, mask=mdn)
    tl.store(dA_ptr + off, dA_acc, mask=mdn)


def _lastdim(t):
    if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
        return t.contiguous()
    return t


def _blocks(which, d, g):
    bd, bl, w = _CONFIG[which]
    if g > 1:  # a channel block never straddles two C groups
        bd = min(bd, _pow2_divisor(d // g))
    return bd, bl, w


class _CorrectionFn(torch.autograd.Function):
    """delta, z (b, d, l); A (d, n); C (b, g, n, l); h_in, p0 (b, d, n); delta_bias (d,) -> out (b, d, l)."""

    @staticmethod
    def forward(ctx, rev, softplus, delta, A, C, h_in, z, db, p0):
        delta, C, z = _lastdim(delta), _lastdim(C), _lastdim(z)
        ctx.dtypes = (A.dtype, h_in.dtype, None if p0 is None else p0.dtype)
        A, h_in = A.float().contiguous(), h_in.float().contiguous()
        p0 = None if p0 is None else p0.float().contiguous()
        b, d, l = delta.shape
        n, g = A.shape[1], C.shape[1]
        BLOCK_N = max(2, _next_pow2(n))
        bd, bl, w = _blocks("fwd", d, g)
        out = torch.zeros(b, d, l, device=delta.device, dtype=delta.dtype)  # positions never reached stay 0
        sz = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
        _corr_fwd_kernel[(triton.cdiv(d, bd), b)](
            delta, A, C, h_in, z if z is not None else out, db if db is not None else out,
            p0 if p0 is not None else out, out,
            delta.stride(0), delta.stride(1), C.stride(0), C.stride(1), C.stride(2), sz[0], sz[1],
            d, l, n, d // g, REV=rev, HAS_Z=z is not None, HAS_DB=db is not None, SOFTPLUS=softplus,
            HAS_P0=p0 is not None, BLOCK_D=bd, BLOCK_N=BLOCK_N, BLOCK_L=bl, num_warps=w)
        ctx.flags = (rev, softplus, z is not None, db is not None)
        ctx.save_for_backward(delta, A, C, h_in, z, db, p0)
        return out

    @staticmethod
    def backward(ctx, dout):
        rev, softplus, has_z, has_db = ctx.flags
        delta, A, C, h_in, z, db, p0 = ctx.saved_tensors
        b, d, l = delta.shape
        n, g = A.shape[1], C.shape[1]
        dev, f32 = delta.device, torch.float32
        dout = dout.contiguous()
        BLOCK_N = max(2, _next_pow2(n))
        bd, bl, w = _blocks("bwd", d, g)
        q = torch.zeros(b, d, l, device=dev, dtype=f32)
        dz = torch.zeros(b, d, l, device=dev, dtype=z.dtype) if has_z else q
        dC = torch.zeros(C.shape, device=dev, dtype=f32)
        G = torch.empty(b, d, n, device=dev, dtype=f32)
        dA = torch.empty(b, d, n, device=dev, dtype=f32)
        sz = (z.stride(0), z.stride(1)) if has_z else (0, 0)
        _corr_bwd_kernel[(triton.cdiv(d, bd), b)](
            delta, A, C, h_in, z if has_z else q, db if has_db else q, p0 if p0 is not None else q, dout,
            q, dz, dC, G, dA,
            delta.stride(0), delta.stride(1), C.stride(0), C.stride(1), C.stride(2), sz[0], sz[1],
            dC.stride(0), dC.stride(1), dC.stride(2),
            d, l, n, d // g, REV=rev, HAS_Z=has_z, HAS_DB=has_db, SOFTPLUS=softplus, HAS_P0=p0 is not None,
            BLOCK_D=bd, BLOCK_N=BLOCK_N, BLOCK_L=bl, num_warps=w)
        dh = G if p0 is None else G * p0
        dp0 = None if p0 is None else (G * h_in).to(ctx.dtypes[2])
        # dt_s feeds cum_t for every t at or after s in scan order: a suffix sum of q (a prefix sum reversed)
        ddt = q.cumsum(-1) if rev else q.flip(-1).cumsum(-1).flip(-1)
        ddb = None
        if softplus:
            raw = delta.float() + (db.float()[:, None] if has_db else 0.0)
            ddt = ddt * torch.sigmoid(raw)
        if has_db:
            ddb = ddt.sum((0, 2)).to(db.dtype)
        return (None, None, ddt.to(delta.dtype), dA.sum(0).to(ctx.dtypes[0]), dC.to(C.dtype), dh.to(ctx.dtypes[1]),
                dz if has_z else None, ddb, dp0)


def state_correction_triton(delta, A, C, h_in, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                            decay_in=None):
    """Same contract as ``mambaverse.ops.state_correction``, C given grouped (b, g, n, l); real A only."""
    from .ops import check_device

    check_device("state_correction_triton", delta)
    return _CorrectionFn.apply(bool(reverse), bool(delta_softplus), delta, A, C, h_in, z, delta_bias, decay_in)
