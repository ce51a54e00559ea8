"""Triton selective scan (Mamba-1): forward and backward, one kernel pair for three ops.

One generic kernel pair serves
  * the fused bidirectional scan (``MODE=1``, grid axis 2 = direction, direction 1 walks backwards),
  * the fused 4-route cross-scan (``MODE=2``, grid axis 2 = route; x is read through each route's
    pixel order, delta/B/C in the route's own scan order).

Every big tensor is addressed as ``(dir, batch, row, l)`` with explicit strides, so a tensor shared by all
directions is passed with a direction stride of 0 (no copies), and the reverse/transposed routes only
change the index arithmetic (no flipped or transposed copies).

Layout of the work: program (channel block, batch, direction) walks the sequence in chunks of
``BLOCK_L`` steps with the state ``(BLOCK_D, BLOCK_N)`` in registers.  Inside a chunk the recurrence
``h_s = a_s h_{s-1} + b_s`` runs as ``tl.associative_scan`` over (a, b) pairs.  The forward stores the
state at the start of every backward chunk (``ck``): one ``(d, n)`` state per ``BLOCK_L_bwd`` steps,
never ``(b, d, l, n)``.  The backward walks the chunks in reverse, recomputes the chunk's states from
its checkpoint, runs the adjoint recurrence ``G_s = dy_s C_s + a_{s+1} G_{s+1}`` as a reverse
associative scan, and accumulates dA/dD/d_delta_bias in registers (per-program partials, summed in
torch) and dB/dC with fp32 atomics (one per channel block, not per channel).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier segment, (a2, b2) the later: h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log1p(exp(x)) with torch's threshold (x > 20 -> x); the log1p is the accurate u-1 trick
    e = tl.exp(-tl.abs(x))
    p = 1.0 + e
    lp = tl.where(p == 1.0, e, tl.log(p) * (e / (p - 1.0)))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)


@triton.jit
def _positions(s, r, l, H, W, MODE: tl.constexpr):
    """Scan step s -> (pp, dp): position in the parameter tensors (delta, B, C) and in the data tensors
    (u, z, out) for direction / route r."""
    if MODE == 1:
        pp = tl.where(r == 1, l - 1 - s, s)
        dp = pp
    else:
        pp = s
        q = tl.where(r >= 2, l - 1 - s, s)
        dp = tl.where((r % 2) == 1, (q % H) * W + q // H, q)
    return pp, dp


@triton.jit
def _program_ids(per, FIRST: tl.constexpr):
    """Grid (channel block, batch, direction * per + segment - FIRST) -> (pid_d, batch, r, r as int64, segment)."""
    pid_2 = tl.program_id(2)
    r = pid_2 // per
    sg = pid_2 % per + FIRST
    return tl.program_id(0), tl.program_id(1).to(tl.int64), r, r.to(tl.int64), sg


@triton.jit
def _block_offsets(pid_d, d, n, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Channel / state / step offsets and masks of channel block pid_d."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    rows = offs_d.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mn = offs_n < n
    offs_l = tl.arange(0, BLOCK_L)
    mdn = md[:, None] & mn[None, :]
    return offs_d, md, rows, offs_n, mn, offs_l, mdn


@triton.jit
def _load_A(A_ptr, rr, sA_r, sA_d, rows, offs_n, mdn):
    return tl.load(A_ptr + rr * sA_r + rows[:, None] * sA_d + offs_n[None, :], mask=mdn, other=0.0).to(tl.float32)


@triton.jit
def _load_dvec(ptr, rr, s_r, offs_d, md, HAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A per-channel vector (D, delta_bias) in fp32; zeros (never used) when the input is absent."""
    if HAS:
        v = tl.load(ptr + rr * s_r + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        v = tl.zeros((BLOCK_D,), dtype=tl.float32)
    return v


@triton.jit
def _load_state(ptr, off, mdn, HAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """A (BLOCK_D, BLOCK_N) fp32 state (h0 / dhT), or zeros when absent."""
    if HAS:
        v = tl.load(ptr + off, mask=mdn, other=0.0).to(tl.float32)
    else:
        v = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    return v


@triton.jit
def _row_ptrs(ptr, rr, s_r, pb, s_b, rows, s_d):
    """(1, BLOCK_D) row pointers of a strided (dir, batch, row, l) tensor; add the step position."""
    return ptr + rr * s_r + pb * s_b + rows[None, :] * s_d


@triton.jit
def _dense_ptrs(ptr, rr, nb, pb, d, rows, l):
    """(1, BLOCK_D) row pointers of a contiguous (dir, batch, d, l) tensor (out, dout)."""
    return ptr + ((rr * nb + pb) * d + rows[None, :]) * l


@triton.jit
def _group_ptrs(ptr, rr, s_r, pb, s_b, g, s_g, offs_n, s_n):
    """(1, BLOCK_N) pointers of group g of a (dir, batch, group, n, l) tensor (B, C and their grads)."""
    return ptr + rr * s_r + pb * s_b + g * s_g + offs_n[None, :] * s_n


@triton.jit
def _seg_rows(rr, nseg, sg, nb, pb, d, rows):
    """Row index of segment sg in the (dir, nseg, batch, d) per-segment buffers."""
    return ((rr * nseg + sg) * nb + pb) * d + rows


@triton.jit
def _fold_seg(h, A2, S_ptr, sdt_ptr, so, offs_n, n, md, mdn):
    """Carry h across one whole segment: exp(A * sum dt) h + that segment's E (forward) or Q (backward)."""
    e = tl.load(S_ptr + so[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)
    t = tl.load(sdt_ptr + so, mask=md, other=0.0)
    return tl.exp2(A2 * t[:, None]) * h + e


@triton.jit
def _store_seg(S_ptr, sdt_ptr, so, S, tot, offs_n, n, md, mdn):
    tl.store(S_ptr + so[:, None] * n + offs_n[None, :], S, mask=mdn)
    tl.store(sdt_ptr + so, tot, mask=md)


@triton.jit
def _chunk(c, offs_l, md, r, l, H, W, MODE: tl.constexpr, BLOCK_L: tl.constexpr):
    """Steps of chunk c: (s, step mask, parameter / data positions, (step, channel) mask)."""
    s = c * BLOCK_L + offs_l
    ml = s < l
    pp, dp = _positions(s, r, l, H, W, MODE)
    return s, ml, pp, dp, ml[:, None] & md[None, :]


@triton.jit
def _load_dubc(dt_base, u_base, B_base, C_base, pp, dp, ml, md, mn):
    """The raw dt, u (step, channel) and B, C (step, state) tiles at positions pp / dp, masked by ml."""
    mld = ml[:, None] & md[None, :]
    mln = ml[:, None] & mn[None, :]
    dt = tl.load(dt_base + pp[:, None], mask=mld, other=0.0)
    u = tl.load(u_base + dp[:, None], mask=mld, other=0.0)
    Bt = tl.load(B_base + pp[:, None], mask=mln, other=0.0)
    Ct = tl.load(C_base + pp[:, None], mask=mln, other=0.0)
    return dt, u, Bt, Ct


@triton.jit
def _delta(dt, dbv, mask, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """fp32 dt -> (dt + delta_bias, then softplus and zeroed outside mask); returns both."""
    if HAS_DB:
        dt = dt + dbv[None, :]
    raw = dt
    if SOFTPLUS:
        dt = _softplus(dt)
    return raw, tl.where(mask, dt, 0.0)


# ----------------------------------------------------------------------------- tile layout
# Every (step, channel, state) tile is laid out (BLOCK_L, BLOCK_D, BLOCK_N): Triton's default layout fills
# the lanes from the last axis, so the channel x state pairs sit on lanes/warps and the BLOCK_L steps of a
# chunk sit in each thread's registers.  The scan over the chunk is then a sequential in-register
# recurrence (2 flops/element) instead of a cross-lane shuffle tree (the first version put L last and
# spent ~5 shuffle rounds per element; see kernels/NOTES.md).


# ----------------------------------------------------------------------------- forward
@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, E_ptr, sdt_ptr,
    out_ptr, hT_ptr, ck_ptr,
    su_r, su_b, su_d, sdt_r, sdt_b, sdt_d, sA_r, sA_d,
    sB_r, sB_b, sB_g, sB_n, sC_r, sC_b, sC_g, sC_n,
    sD_r, sdb_r, sz_r, sz_b, sz_d,
    nb, d, l, n, eB, eC, nck, H, W, nseg, seg_chunks,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CK: tl.constexpr, CK_EVERY: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d, pb, r, rr, sg = _program_ids(nseg, 0)
    offs_d, md, rows, offs_n, mn, offs_l, mdn = _block_offsets(pid_d, d, n, BLOCK_D, BLOCK_N, BLOCK_L)

    A2 = _load_A(A_ptr, rr, sA_r, sA_d, rows, offs_n, mdn) * 1.4426950408889634
    Dv = _load_dvec(D_ptr, rr, sD_r, offs_d, md, HAS_D, BLOCK_D)
    dbv = _load_dvec(db_ptr, rr, sdb_r, offs_d, md, HAS_DB, BLOCK_D)

    state_off = ((rr * nb + pb) * d + rows[:, None]) * n + offs_n[None, :]
    h = _load_state(h0_ptr, state_off, mdn, HAS_H0, BLOCK_D, BLOCK_N)
    # sequence parallelism: the state entering segment sg from the (end state, sum dt) of earlier segments
    for sp in range(0, sg):
        h = _fold_seg(h, A2, E_ptr, sdt_ptr, _seg_rows(rr, nseg, sp, nb, pb, d, rows), offs_n, n, md, mdn)

    u_base = _row_ptrs(u_ptr, rr, su_r, pb, su_b, rows, su_d)
    dt_base = _row_ptrs(dt_ptr, rr, sdt_r, pb, sdt_b, rows, sdt_d)
    z_base = _row_ptrs(z_ptr, rr, sz_r, pb, sz_b, rows, sz_d)
    out_base = _dense_ptrs(out_ptr, rr, nb, pb, d, rows, l)
    gB = (pid_d * BLOCK_D) // eB
    gC = (pid_d * BLOCK_D) // eC
    B_base = _group_ptrs(B_ptr, rr, sB_r, pb, sB_b, gB, sB_g, offs_n, sB_n)
    C_base = _group_ptrs(C_ptr, rr, sC_r, pb, sC_b, gC, sC_g, offs_n, sC_n)
    ck_base = ck_ptr + ((rr * nb + pb) * nck * d + rows[:, None]) * n + offs_n[None, :]

    nchunks = tl.cdiv(l, BLOCK_L)
    c0 = sg * seg_chunks
    c1 = tl.minimum(nchunks, c0 + seg_chunks)
    # software prefetch: the raw tiles of chunk c+1 are loaded while chunk c is computed
    s = c0 * BLOCK_L + offs_l
    ml = (s < l) & (c0 < c1)
    pp, dp = _positions(s, r, l, H, W, MODE)
    dt_n, u_n, B_n, C_n = _load_dubc(dt_base, u_base, B_base, C_base, pp, dp, ml, md, mn)
    if HAS_Z:
        z_n = tl.load(z_base + dp[:, None], mask=ml[:, None] & md[None, :], other=0.0)
    for c in range(c0, c1):
        if STORE_CK:
            if c % CK_EVERY == 0:
                tl.store(ck_base + (c // CK_EVERY) * d * n, h, mask=mdn)
        s, ml, pp, dp, mld = _chunk(c, offs_l, md, r, l, H, W, MODE, BLOCK_L)
        dt = dt_n.to(tl.float32)
        u = u_n.to(tl.float32)
        Bt = B_n.to(tl.float32)
        Ct = C_n.to(tl.float32)
        if HAS_Z:
            zz = z_n.to(tl.float32)
        sn = s + BLOCK_L
        mlx = (sn < l) & (c + 1 < c1)
        ppn, dpn = _positions(sn, r, l, H, W, MODE)
        dt_n, u_n, B_n, C_n = _load_dubc(dt_base, u_base, B_base, C_base, ppn, dpn, mlx, md, mn)
        if HAS_Z:
            z_n = tl.load(z_base + dpn[:, None], mask=mlx[:, None] & md[None, :], other=0.0)
        _, dt = _delta(dt, dbv, mld, HAS_DB, SOFTPLUS)
        dA = tl.exp2(dt[:, :, None] * A2[None, :, :])
        dBu = (dt * u)[:, :, None] * Bt[:, None, :]
        aC, bC = tl.associative_scan((dA, dBu), 0, _combine)
        Hs = aC * h[None, :, :] + bC
        y = tl.sum(Hs * Ct[:, None, :], 2)
        # masked steps leave the state unchanged (a=1, b=0), so the last row is the chunk's end state
        h = tl.sum(tl.where(offs_l[:, None, None] == BLOCK_L - 1, Hs, 0.0), 0)
        if HAS_D:
            y = y + Dv[None, :] * u
        if HAS_Z:
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_base + dp[:, None], y.to(out_ptr.dtype.element_ty), mask=mld)
    if STORE_HT:
        if sg == nseg - 1:
            tl.store(hT_ptr + state_off, h, mask=mdn)


@triton.jit
def _seg_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, db_ptr, E_ptr, sdt_ptr,
    su_r, su_b, su_d, sdt_r, sdt_b, sdt_d, sA_r, sA_d, sB_r, sB_b, sB_g, sB_n, sdb_r,
    nb, d, l, n, eB, H, W, nseg, seg_chunks,
    MODE: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Per segment (all but the last): the end state from a zero start, and the sum of dt, without a scan:
    E = sum_t exp(A (T - cum_t)) dBu_t, chunk by chunk."""
    pid_d, pb, r, rr, sg = _program_ids(nseg - 1, 0)
    offs_d, md, rows, offs_n, mn, offs_l, mdn = _block_offsets(pid_d, d, n, BLOCK_D, BLOCK_N, BLOCK_L)
    A2 = _load_A(A_ptr, rr, sA_r, sA_d, rows, offs_n, mdn) * 1.4426950408889634
    dbv = _load_dvec(db_ptr, rr, sdb_r, offs_d, md, HAS_DB, BLOCK_D)
    u_base = _row_ptrs(u_ptr, rr, su_r, pb, su_b, rows, su_d)
    dt_base = _row_ptrs(dt_ptr, rr, sdt_r, pb, sdt_b, rows, sdt_d)
    gB = (pid_d * BLOCK_D) // eB
    B_base = _group_ptrs(B_ptr, rr, sB_r, pb, sB_b, gB, sB_g, offs_n, sB_n)
    E = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    tot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    c0 = sg * seg_chunks
    for c in range(c0, c0 + seg_chunks):
        s, ml, pp, dp, mld = _chunk(c, offs_l, md, r, l, H, W, MODE, BLOCK_L)
        dt = tl.load(dt_base + pp[:, None], mask=mld, other=0.0).to(tl.float32)
        _, dt = _delta(dt, dbv, mld, HAS_DB, SOFTPLUS)
        u = tl.load(u_base + dp[:, None], mask=mld, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + pp[:, None], mask=ml[:, None] & mn[None, :], other=0.0).to(tl.float32)
        cum = tl.cumsum(dt, 0)
        ct = tl.sum(dt, 0)
        w = tl.exp2(A2[None, :, :] * (ct[None, :] - cum)[:, :, None])
        E = E * tl.exp2(A2 * ct[:, None]) + tl.sum(w * ((dt * u)[:, :, None] * Bt[:, None, :]), 0)
        tot += ct
    _store_seg(E_ptr, sdt_ptr, _seg_rows(rr, nseg, sg, nb, pb, d, rows), E, tot, offs_n, n, md, mdn)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _seg_bwd_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, db_ptr, dout_ptr, Q_ptr, sdt_ptr,
    sdt_r, sdt_b, sdt_d, sA_r, sA_d, sC_r, sC_b, sC_g, sC_n, sz_r, sz_b, sz_d, sdb_r,
    nb, d, l, n, eC, H, W, nseg, seg_chunks,
    MODE: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Per segment (all but the first): the adjoint leaving its start with nothing coming in from later,
    Q = sum_t exp(A cum_t) dy_t C_t (cum_t inclusive from the segment start), and the sum of dt."""
    pid_d, pb, r, rr, sg = _program_ids(nseg - 1, 1)
    offs_d, md, rows, offs_n, mn, offs_l, mdn = _block_offsets(pid_d, d, n, BLOCK_D, BLOCK_N, BLOCK_L)
    A2 = _load_A(A_ptr, rr, sA_r, sA_d, rows, offs_n, mdn) * 1.4426950408889634
    dbv = _load_dvec(db_ptr, rr, sdb_r, offs_d, md, HAS_DB, BLOCK_D)
    dt_base = _row_ptrs(dt_ptr, rr, sdt_r, pb, sdt_b, rows, sdt_d)
    z_base = _row_ptrs(z_ptr, rr, sz_r, pb, sz_b, rows, sz_d)
    do_base = _dense_ptrs(dout_ptr, rr, nb, pb, d, rows, l)
    gC = (pid_d * BLOCK_D) // eC
    C_base = _group_ptrs(C_ptr, rr, sC_r, pb, sC_b, gC, sC_g, offs_n, sC_n)
    Q = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    tot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    c0 = sg * seg_chunks
    for c in range(c0, c0 + seg_chunks):
        s, ml, pp, dp, mld = _chunk(c, offs_l, md, r, l, H, W, MODE, BLOCK_L)
        dt = tl.load(dt_base + pp[:, None], mask=mld, other=0.0).to(tl.float32)
        _, dt = _delta(dt, dbv, mld, HAS_DB, SOFTPLUS)
        dy = tl.load(do_base + dp[:, None], mask=mld, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_base + dp[:, None], mask=mld, other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        Ct = tl.load(C_base + pp[:, None], mask=ml[:, None] & mn[None, :], other=0.0).to(tl.float32)
        cum = tl.cumsum(dt, 0) + tot[None, :]
        w = tl.exp2(A2[None, :, :] * cum[:, :, None])
        Q += tl.sum(w * (dy[:, :, None] * Ct[:, None, :]), 0)
        tot += tl.sum(dt, 0)
    _store_seg(Q_ptr, sdt_ptr, _seg_rows(rr, nseg, sg, nb, pb, d, rows), Q, tot, offs_n, n, md, mdn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, ck_ptr, dout_ptr, dhT_ptr, Q_ptr, sdtq_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddb_ptr, dh0_ptr,
    su_r, su_b, su_d, sdt_r, sdt_b, sdt_d, sA_r, sA_d,
    sB_r, sB_b, sB_g, sB_n, sC_r, sC_b, sC_g, sC_n,
    sD_r, sdb_r, sz_r, sz_b, sz_d,
    sdu_r, sdu_b, sdu_d, sddt_r, sddt_b, sddt_d, sdz_r, sdz_b, sdz_d,
    sdB_r, sdB_b, sdB_g, sdB_n, sdC_r, sdC_b, sdC_g, sdC_n,
    nb, d, l, n, eB, eC, nck, H, W, nseg, seg_chunks,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d, pb, r, rr, sg = _program_ids(nseg, 0)
    offs_d, md, rows, offs_n, mn, offs_l, mdn = _block_offsets(pid_d, d, n, BLOCK_D, BLOCK_N, BLOCK_L)

    A = _load_A(A_ptr, rr, sA_r, sA_d, rows, offs_n, mdn)
    A2 = A * 1.4426950408889634
    Dv = _load_dvec(D_ptr, rr, sD_r, offs_d, md, HAS_D, BLOCK_D)
    dbv = _load_dvec(db_ptr, rr, sdb_r, offs_d, md, HAS_DB, BLOCK_D)

    state_off = ((rr * nb + pb) * d + rows[:, None]) * n + offs_n[None, :]
    gcar = _load_state(dhT_ptr, state_off, mdn, HAS_DHT, BLOCK_D, BLOCK_N)
    # sequence parallelism: the adjoint entering the end of segment sg from the later segments
    for si in range(0, nseg - 1 - sg):
        sp = nseg - 1 - si
        gcar = _fold_seg(gcar, A2, Q_ptr, sdtq_ptr, _seg_rows(rr, nseg, sp, nb, pb, d, rows), offs_n, n, md, mdn)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ddb_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    u_base = _row_ptrs(u_ptr, rr, su_r, pb, su_b, rows, su_d)
    dt_base = _row_ptrs(dt_ptr, rr, sdt_r, pb, sdt_b, rows, sdt_d)
    z_base = _row_ptrs(z_ptr, rr, sz_r, pb, sz_b, rows, sz_d)
    do_base = _dense_ptrs(dout_ptr, rr, nb, pb, d, rows, l)
    du_base = _row_ptrs(du_ptr, rr, sdu_r, pb, sdu_b, rows, sdu_d)
    ddt_base = _row_ptrs(ddt_ptr, rr, sddt_r, pb, sddt_b, rows, sddt_d)
    dz_base = _row_ptrs(dz_ptr, rr, sdz_r, pb, sdz_b, rows, sdz_d)
    gB = (pid_d * BLOCK_D) // eB
    gC = (pid_d * BLOCK_D) // eC
    B_base = _group_ptrs(B_ptr, rr, sB_r, pb, sB_b, gB, sB_g, offs_n, sB_n)
    C_base = _group_ptrs(C_ptr, rr, sC_r, pb, sC_b, gC, sC_g, offs_n, sC_n)
    dB_base = _group_ptrs(dB_ptr, rr, sdB_r, pb, sdB_b, gB, sdB_g, offs_n, sdB_n)
    dC_base = _group_ptrs(dC_ptr, rr, sdC_r, pb, sdC_b, gC, sdC_g, offs_n, sdC_n)
    ck_base = ck_ptr + ((rr * nb + pb) * nck * d + rows[:, None]) * n + offs_n[None, :]

    c0 = sg * seg_chunks
    c1 = tl.minimum(nck, c0 + seg_chunks)
    # software prefetch: the raw tiles of chunk c-1 are loaded while chunk c is computed
    c = c1 - 1
    s = c * BLOCK_L + offs_l
    ml = (s < l) & (c >= c0)
    m1_0 = (s + 1 < l) & (c >= c0)
    pp, dp = _positions(s, r, l, H, W, MODE)
    pp1_0, dp1_0 = _positions(s + 1, r, l, H, W, MODE)
    h_n = tl.load(ck_base + c * d * n, mask=mdn & (c >= c0), other=0.0)
    dt_n, u_n, B_n, C_n = _load_dubc(dt_base, u_base, B_base, C_base, pp, dp, ml, md, mn)
    dt1_n = tl.load(dt_base + pp1_0[:, None], mask=m1_0[:, None] & md[None, :], other=0.0)
    do_n = tl.load(do_base + dp[:, None], mask=ml[:, None] & md[None, :], other=0.0)
    if HAS_Z:
        z_n = tl.load(z_base + dp[:, None], mask=ml[:, None] & md[None, :], other=0.0)
    for ci in range(0, c1 - c0):
        c = c1 - 1 - ci
        h = h_n
        s, ml, pp, dp, mld = _chunk(c, offs_l, md, r, l, H, W, MODE, BLOCK_L)
        mln = ml[:, None] & mn[None, :]
        s1 = s + 1
        m1 = (s1 < l)[:, None] & md[None, :]
        dt_raw = dt_n.to(tl.float32)
        dt1 = dt1_n.to(tl.float32)
        u = u_n.to(tl.float32)
        Bt = B_n.to(tl.float32)
        Ct = C_n.to(tl.float32)
        do = do_n.to(tl.float32)
        if HAS_Z:
            zz = z_n.to(tl.float32)
        cp = c - 1
        sp = s - BLOCK_L
        mlp = (cp >= c0) & (sp >= 0)
        ppp, dpp = _positions(sp, r, l, H, W, MODE)
        ppp1, dpp1 = _positions(sp + 1, r, l, H, W, MODE)
        h_n = tl.load(ck_base + cp * d * n, mask=mdn & (cp >= c0), other=0.0)
        mpd = mlp[:, None] & md[None, :]
        dt_n, u_n, B_n, C_n = _load_dubc(dt_base, u_base, B_base, C_base, ppp, dpp, mlp, md, mn)
        dt1_n = tl.load(dt_base + ppp1[:, None], mask=mpd, other=0.0)  # sp + 1 <= s - 1 < l
        do_n = tl.load(do_base + dpp[:, None], mask=mpd, other=0.0)
        if HAS_Z:
            z_n = tl.load(z_base + dpp[:, None], mask=mpd, other=0.0)
        dt_raw, dt = _delta(dt_raw, dbv, mld, HAS_DB, SOFTPLUS)
        dA = tl.exp2(dt[:, :, None] * A2[None, :, :])
        dtu = dt * u
        dBu = dtu[:, :, None] * Bt[:, None, :]
        aC, bC = tl.associative_scan((dA, dBu), 0, _combine)
        Hs = aC * h[None, :, :] + bC
        if HAS_Z:
            y = tl.sum(Hs * Ct[:, None, :], 2)
            if HAS_D:
                y = y + Dv[None, :] * u
            sz = tl.sigmoid(zz)
            dz = do * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_base + dp[:, None], dz.to(dz_ptr.dtype.element_ty), mask=mld)
            dy = do * zz * sz
        else:
            dy = do
        # a_{s+1}: the decay of the next step (1 past the end of the sequence)
        _, dt1 = _delta(dt1, dbv, m1, HAS_DB, SOFTPLUS)
        a1 = tl.exp2(dt1[:, :, None] * A2[None, :, :])
        cc = dy[:, :, None] * Ct[:, None, :]
        cc = cc + tl.where(offs_l[:, None, None] == BLOCK_L - 1, gcar[None, :, :], 0.0)
        _, G = tl.associative_scan((a1, cc), 0, _combine, reverse=True)
        gcar = tl.sum(tl.where(offs_l[:, None, None] == 0, dA * G, 0.0), 0)
        X = G * (Hs - dBu)  # = G_s a_s h_{s-1}: the gradient through log a_s
        dA_acc += tl.sum(X * dt[:, :, None], 0)
        GB = tl.sum(G * Bt[:, None, :], 2)
        ddt = tl.sum(X * A[None, :, :], 2) + GB * u
        du = GB * dt
        if HAS_D:
            du = du + dy * Dv[None, :]
            dD_acc += tl.sum(tl.where(mld, dy * u, 0.0), 0)
        dBt = tl.sum(G * dtu[:, :, None], 1)
        dCt = tl.sum(Hs * dy[:, :, None], 1)
        tl.atomic_add(dB_base + pp[:, None], dBt, mask=mln)
        tl.atomic_add(dC_base + pp[:, None], dCt, mask=mln)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mld, ddt, 0.0)
        if HAS_DB:
            ddb_acc += tl.sum(ddt, 0)
        tl.store(ddt_base + pp[:, None], ddt.to(ddt_ptr.dtype.element_ty), mask=mld)
        tl.store(du_base + dp[:, None], du.to(du_ptr.dtype.element_ty), mask=mld)

    part = _seg_rows(rr, nseg, sg, nb, pb, d, rows)
    tl.store(dA_ptr + part[:, None] * n + offs_n[None, :], dA_acc, mask=mdn)
    if HAS_D:
        tl.store(dD_ptr + part, dD_acc, mask=md)
    if HAS_DB:
        tl.store(ddb_ptr + part, ddb_acc, mask=md)
    if STORE_DH0:
        if sg == 0:
            tl.store(dh0_ptr + state_off, gcar, mask=mdn)


# ----------------------------------------------------------------------------- launch configuration
def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _pow2_divisor(x: int) -> int:
    return x & -x if x > 0 else 1


# (BLOCK_D, BLOCK_L, num_warps) for the forward and the backward kernel; the backward BLOCK_L is also the
# checkpoint interval. Picked on an H100 by benchmarks/kernels.py (see kernels/NOTES.md); override with
# set_config() (tests use tiny blocks so the interpreter walks several chunks).
# Measured best on an H100 (benchmarks/results/kernels_h100.md): fwd (8, 32, 4), bwd (2, 16, 1); split the
# sequence only when fewer than seq_min programs exist, then aim for seq_target programs.
_CONFIG = {"fwd": (8, 32, 4), "bwd": (2, 16, 1), "seq_target": 4224, "seq_min": 528}


def set_config(fwd=None, bwd=None, seq_target=None, seq_min=None):
    """Set (BLOCK_D, BLOCK_L, num_warps) for the forward and/or backward scan kernels, and the number of
    programs below which the sequence is split into segments run in parallel; returns the old settings."""
    old = dict(_CONFIG)
    if fwd is not None:
        _CONFIG["fwd"] = tuple(fwd)
    if bwd is not None:
        _CONFIG["bwd"] = tuple(bwd)
    if seq_target is not None:
        _CONFIG["seq_target"] = int(seq_target)
    if seq_min is not None:
        _CONFIG["seq_min"] = int(seq_min)
    return old


def clamp_blocks(fwd, bwd, d, l, gB, gC):
    """(BLOCK_D, BLOCK_L, warps) of a forward and a backward kernel clamped to the problem: a channel block
    never straddles two B/C groups nor exceeds d, and the forward chunk divides the backward chunk (the
    checkpoint interval). Shared by these kernels and the row-layout ones (``_rows.py``)."""
    limit = _next_pow2(d)
    for g in (gB, gC):
        if g > 1:
            limit = min(limit, _pow2_divisor(d // g))
    (bdf, blf, wf), (bdb, blb, wb) = fwd, bwd
    blb = min(blb, max(2, _next_pow2(l)))
    return (min(bdf, limit), min(blf, blb), wf), (min(bdb, limit), blb, wb)


def _launch_config(d, l, gB, gC):
    return clamp_blocks(_CONFIG["fwd"], _CONFIG["bwd"], d, l, gB, gC)


def _segments(programs: int, nchunks: int):
    """(number of segments, chunks per segment): split the sequence when (batch, channel-block, direction)
    programs alone cannot fill the GPU (the B=1, L=2^20 case)."""
    if programs >= _CONFIG["seq_min"]:
        return 1, max(1, nchunks)
    want = -(-_CONFIG["seq_target"] // max(1, programs))
    S = max(1, min(nchunks, want))
    per = max(1, -(-nchunks // S))
    return max(1, -(-nchunks // per)), per


# ----------------------------------------------------------------------------- autograd wrapper
def _dir_strides(t, per_dir_dim):
    """(dir stride, remaining strides) of a tensor given with or without its leading direction axis."""
    if t.dim() == per_dir_dim:
        return t.stride(0), t.stride()[1:]
    return 0, t.stride()


def _lastdim(t):
    if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
        return t.contiguous()
    return t


class _ScanSpec:
    __slots__ = ("ndir", "mode", "H", "W", "softplus", "want_final", "need_ck")

    def __init__(self, ndir, mode, H=1, W=1, softplus=False, want_final=False, need_ck=True):
        self.ndir, self.mode, self.H, self.W = ndir, mode, H, W
        self.softplus, self.want_final, self.need_ck = softplus, want_final, need_ck


class _ScanFn(torch.autograd.Function):
    """Inputs come per direction (leading axis R) or shared by all R directions (no leading axis):
    u, delta, z (b, d, l); A (d, n); B, C (b, g, n, l); D, delta_bias (d,); h0 always (R, b, d, n) or None.
    Returns out (R, b, d, l) in u's dtype and the final state (R, b, d, n) fp32 (or None)."""

    @staticmethod
    def forward(ctx, spec, u, delta, A, B, C, D, z, db, h0):
        R = spec.ndir
        u, delta, A, B, C, z = (_lastdim(t) for t in (u, delta, A, B, C, z))
        b, d, l = u.shape[-3:]
        if spec.mode == 2:
            d, l = delta.shape[-2:]
            b = delta.shape[-3]
        n = A.shape[-1]
        gB, gC = B.shape[-3], C.shape[-3]
        (bdf, blf, wf), (bdb, blb, wb) = _launch_config(d, l, gB, gC)
        BLOCK_N = max(2, _next_pow2(n))
        dev = u.device
        f32 = torch.float32
        out = torch.empty(R, b, d, l, device=dev, dtype=u.dtype)
        hT = torch.empty(R, b, d, n, device=dev, dtype=f32) if spec.want_final else out
        nck = triton.cdiv(l, blb)
        ck = (torch.empty(R, b, nck, d, n, device=dev, dtype=f32) if spec.need_ck else out)
        su_r, su = _dir_strides(u, 4)
        sdt_r, sdt = _dir_strides(delta, 4)
        sA_r, sA = _dir_strides(A, 3)
        sB_r, sB = _dir_strides(B, 5)
        sC_r, sC = _dir_strides(C, 5)
        sD_r = _dir_strides(D, 2)[0] if D is not None else 0
        sdb_r = _dir_strides(db, 2)[0] if db is not None else 0
        sz_r, sz = _dir_strides(z, 4) if z is not None else (0, (0, 0, 0))
        dummy = out
        nseg, seg_chunks = _segments(b * R * triton.cdiv(d, bdf), triton.cdiv(l, blf))
        E = sdt_seg = dummy
        if nseg > 1:
            E = torch.empty(R, nseg, b, d, n, device=dev, dtype=f32)
            sdt_seg = torch.empty(R, nseg, b, d, device=dev, dtype=f32)
            _seg_fwd_kernel[(triton.cdiv(d, bdf), b, R * (nseg - 1))](
                u, delta, A, B, db if db is not None else dummy, E, sdt_seg,
                su_r, su[0], su[1], sdt_r, sdt[0], sdt[1], sA_r, sA[0], sB_r, sB[0], sB[1], sB[2], sdb_r,
                b, d, l, n, d // gB, spec.H, spec.W, nseg, seg_chunks,
                MODE=spec.mode, HAS_DB=db is not None, SOFTPLUS=spec.softplus,
                BLOCK_D=bdf, BLOCK_N=BLOCK_N, BLOCK_L=blf, num_warps=wf,
            )
        grid = (triton.cdiv(d, bdf), b, R * nseg)
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            db if db is not None else dummy, h0 if h0 is not None else dummy, E, sdt_seg,
            out, hT, ck,
            su_r, su[0], su[1], sdt_r, sdt[0], sdt[1], sA_r, sA[0],
            sB_r, sB[0], sB[1], sB[2], sC_r, sC[0], sC[1], sC[2],
            sD_r, sdb_r, sz_r, sz[0], sz[1],
            b, d, l, n, d // gB, d // gC, nck, spec.H, spec.W, nseg, seg_chunks,
            MODE=spec.mode, HAS_D=D is not None, HAS_Z=z is not None, HAS_DB=db is not None,
            SOFTPLUS=spec.softplus, HAS_H0=h0 is not None, STORE_HT=spec.want_final, STORE_CK=spec.need_ck,
            CK_EVERY=blb // blf, BLOCK_D=bdf, BLOCK_N=BLOCK_N, BLOCK_L=blf, num_warps=wf,
        )
        ctx.spec = spec
        ctx.dims = (b, d, l, n, gB, gC, nck, bdb, blb, wb, BLOCK_N)
        ctx.has = (D is not None, z is not None, db is not None, h0 is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, db, ck)
        return out, (hT if spec.want_final else None)

    @staticmethod
    def backward(ctx, dout, dhT):
        spec = ctx.spec
        u, delta, A, B, C, D, z, db, ck = ctx.saved_tensors
        b, d, l, n, gB, gC, nck, bdb, blb, wb, BLOCK_N = ctx.dims
        has_D, has_z, has_db, has_h0 = ctx.has
        R = spec.ndir
        dev = u.device
        f32 = torch.float32
        dout = torch.zeros(R, b, d, l, device=dev, dtype=u.dtype) if dout is None else dout.contiguous()

        def dir_buffer(t, per_dir_dim):
            # gradient of a direct-stored (b, d, l) tensor: per direction, summed afterwards when shared
            if t.dim() == per_dir_dim:
                return torch.empty(t.shape, device=dev, dtype=t.dtype), False
            if R == 1:
                return torch.empty(t.shape, device=dev, dtype=t.dtype), False
            return torch.empty((R,) + tuple(t.shape), device=dev, dtype=f32), True

        du, du_red = dir_buffer(u, 4)
        ddt, ddt_red = dir_buffer(delta, 4)
        dz, dz_red = dir_buffer(z, 4) if has_z else (dout, False)
        dB = torch.zeros(B.shape, device=dev, dtype=f32)
        dC = torch.zeros(C.shape, device=dev, dtype=f32)
        nseg, seg_chunks = _segments(b * R * triton.cdiv(d, bdb), nck)
        dA_part = torch.empty(R, nseg, b, d, n, device=dev, dtype=f32)
        dD_part = torch.empty(R, nseg, b, d, device=dev, dtype=f32) if has_D else dA_part
        ddb_part = torch.empty(R, nseg, b, d, device=dev, dtype=f32) if has_db else dA_part
        dh0 = torch.empty(R, b, d, n, device=dev, dtype=f32) if has_h0 else dA_part
        has_dhT = dhT is not None and spec.want_final
        dhT = dhT.float().contiguous() if has_dhT else dA_part

        def rs(t, per_dir_dim, red):
            if red:  # the buffer carries R even though the input is shared
                return t.stride(0), t.stride()[1:]
            return _dir_strides(t, per_dir_dim)

        su_r, su = _dir_strides(u, 4)
        sdt_r, sdt = _dir_strides(delta, 4)
        sA_r, sA = _dir_strides(A, 3)
        sB_r, sB = _dir_strides(B, 5)
        sC_r, sC = _dir_strides(C, 5)
        sD_r = _dir_strides(D, 2)[0] if has_D else 0
        sdb_r = _dir_strides(db, 2)[0] if has_db else 0
        sz_r, sz = _dir_strides(z, 4) if has_z else (0, (0, 0, 0))
        sdu_r, sdu = rs(du, 4, du_red)
        sddt_r, sddt = rs(ddt, 4, ddt_red)
        sdz_r, sdz = rs(dz, 4, dz_red) if has_z else (0, (0, 0, 0))
        sdB_r, sdB = _dir_strides(dB, 5)
        sdC_r, sdC = _dir_strides(dC, 5)
        dummy = dA_part
        Q = sdt_seg = dummy
        if nseg > 1:
            Q = torch.empty(R, nseg, b, d, n, device=dev, dtype=f32)
            sdt_seg = torch.empty(R, nseg, b, d, device=dev, dtype=f32)
            _seg_bwd_kernel[(triton.cdiv(d, bdb), b, R * (nseg - 1))](
                delta, A, C, z if has_z else dummy, db if has_db else dummy, dout, Q, sdt_seg,
                sdt_r, sdt[0], sdt[1], sA_r, sA[0], sC_r, sC[0], sC[1], sC[2], sz_r, sz[0], sz[1], sdb_r,
                b, d, l, n, d // gC, spec.H, spec.W, nseg, seg_chunks,
                MODE=spec.mode, HAS_Z=has_z, HAS_DB=has_db, SOFTPLUS=spec.softplus,
                BLOCK_D=bdb, BLOCK_N=BLOCK_N, BLOCK_L=blb, num_warps=wb,
            )
        grid = (triton.cdiv(d, bdb), b, R * nseg)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D if has_D else dummy, z if has_z else dummy, db if has_db else dummy,
            ck, dout, dhT, Q, sdt_seg,
            du, ddt, dz, dA_part, dB, dC, dD_part, ddb_part, dh0,
            su_r, su[0], su[1], sdt_r, sdt[0], sdt[1], sA_r, sA[0],
            sB_r, sB[0], sB[1], sB[2], sC_r, sC[0], sC[1], sC[2],
            sD_r, sdb_r, sz_r, sz[0], sz[1],
            sdu_r, sdu[0], sdu[1], sddt_r, sddt[0], sddt[1], sdz_r, sdz[0], sdz[1],
            sdB_r, sdB[0], sdB[1], sdB[2], sdC_r, sdC[0], sdC[1], sdC[2],
            b, d, l, n, d // gB, d // gC, nck, spec.H, spec.W, nseg, seg_chunks,
            MODE=spec.mode, HAS_D=has_D, HAS_Z=has_z, HAS_DB=has_db, SOFTPLUS=spec.softplus,
            HAS_DHT=has_dhT, STORE_DH0=has_h0, BLOCK_D=bdb, BLOCK_N=BLOCK_N, BLOCK_L=blb, num_warps=wb,
        )

        def finish(buf, red, like):
            return (buf.sum(0) if red else buf).to(like.dtype)

        du = finish(du, du_red, u)
        ddt = finish(ddt, ddt_red, delta)
        dz = finish(dz, dz_red, z) if has_z else None
        dA = dA_part.sum((1, 2))
        dA = (dA if A.dim() == 3 else dA.sum(0)).to(A.dtype)
        dD = ddb = None
        if has_D:
            dD = dD_part.sum((1, 2))
            dD = (dD if D.dim() == 2 else dD.sum(0)).to(D.dtype)
        if has_db:
            ddb = ddb_part.sum((1, 2))
            ddb = (ddb if db.dim() == 2 else ddb.sum(0)).to(db.dtype)
        return (None, du, ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, ddb,
                dh0 if has_h0 else None)


def _needs_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)
