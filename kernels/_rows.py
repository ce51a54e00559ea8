"""Triton selective scan (Mamba-1) in the row layout, forward and backward: one kernel pair for the plain
scan, the fused bidirectional scan and the fused 4-route cross-scan.

Layout of the work (the one mamba-ssm's CUDA kernel uses, ``csrc/selective_scan``): one program per
(block of ``BLOCK_D`` channels, batch row).  The sequence runs along the threads: a chunk of ``BLOCK_L``
steps is a ``(BLOCK_D, BLOCK_L)`` tile with about 16 consecutive steps in each thread's registers, loaded
and stored coalesced.  The states are a loop: for each state index n the chunk's recurrence
``h_t = a_t h_{t-1} + b_t`` is one ``tl.associative_scan`` along the steps (in-thread, then across lanes
and warps), ``y += C_n h`` accumulates in registers, and the state leaving the chunk is carried into the
next chunk in a small ``(BLOCK_D, BLOCK_N)`` register tile.  No thread holds a state axis, so the per-step
work has no reduction over N.

Directions: a program runs ``NDIR`` scans of its rows one after the other (``tl.static_range``, the same
code): 1 for the plain scan, 2 for the bidirectional scan (the second walks backwards), 4 for the cross-scan
routes.  Every tensor is addressed as ``(direction, batch, row, l)`` with explicit strides, so a tensor
shared by the directions has direction stride 0 (no copies).  A scan that walks backwards keeps its chunks
aligned to memory (chunk j holds positions ``j*BLOCK_L ..``, so loads stay contiguous and vectorised) and
runs the chunk's scan with ``reverse=True``.  For the cross-scan, delta/B/C are read in the route's own
order and x at the route's pixel (``_tile``).  Outputs of later directions are added to the earlier ones'
in the same buffer (``ACC_*``: the bidirectional "add" and the cross-scan merge), and so are the gradients
of shared inputs (u, delta, z), so no per-direction buffers, flips or sums follow.

Backward: the forward stores the state entering every backward chunk (``ck``, one fp32 ``(d, n)`` state per
``BLOCK_L_bwd`` steps).  The backward walks the chunks in reverse scan order; for each n it recomputes the
chunk's states from the checkpoint, runs the adjoint ``G_t = dy_t C_t + a_{t+1} G_{t+1}`` (``t+1`` in scan
order) as a scan in the other direction (``a_{t+1}`` from a shifted load of dt) and accumulates du, d_dt,
dA, dD, d_delta_bias in registers.  dB and dC are summed over the program's channels and added with fp32
atomics along the steps, so every atomic instruction of a warp hits consecutive addresses.  The carry
between chunks is ``a_first * G_first``; after the last chunk it is the initial state's gradient.

Kernels import nothing of the core: bad arguments raise ValueError / RuntimeError.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import _combine, _load_state, _next_pow2, _softplus, clamp_blocks

LOG2E = 1.4426950408889634


@triton.jit
def _dt_of(raw, dbv, mask, HAS_DB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """fp32 dt tile -> (dt + delta_bias before softplus, dt after softplus zeroed outside mask)."""
    if HAS_DB:
        raw = raw + dbv[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return raw, tl.where(mask, dt, 0.0)


@triton.jit
def _column(t, offs_n, k):
    """Column k of a (BLOCK_D, BLOCK_N) tile, as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(offs_n[None, :] == k, t, 0.0), 1)


@triton.jit
def _at_step(t, offs_l, j):
    """Step j of a (BLOCK_D, BLOCK_L) tile, as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(offs_l[None, :] == j, t, 0.0), 1)


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.constexpr_function  # a compile-time bool: Triton 3.6 takes only those as scan's ``reverse``
def _flip(r, MODE, REV):
    """Does direction r walk its memory-aligned chunks backwards (a compile-time bool)? The plain scan when
    REV, the bidirectional scan's direction 1 (against REV); cross-scan routes read their parameters in
    their own order and never do."""
    return (MODE == 0) & (REV != (r == 1))


@triton.constexpr_function  # a compile-time bool: Triton 3.6 takes only those as scan's ``reverse``
def _adjoint_reverse(r, MODE, REV):
    """The backward's adjoint scan runs against the direction's scan: ``not _flip(r, MODE, REV)``."""
    return (MODE != 0) | (REV == (r == 1))


@triton.jit
def _tile(j, offs, l, H, W, r: tl.constexpr, MODE: tl.constexpr, BLOCK_L: tl.constexpr):
    """Chunk j's steps t = j*BLOCK_L + offs -> (mask, parameter positions, data positions).

    MODE 0: both are t (a backward scan walks the chunks from the last, see ``_flipped``).
    MODE 1 (cross-scan route r): delta/B/C are stored in the route's scan order (position t); x and the
    output at the route's pixel: row-major (r=0), column-major (r=1), and those reversed (r=2, 3)."""
    t = j * BLOCK_L + offs
    q = t
    if MODE == 1:
        if r >= 2:
            q = l - 1 - t
        if r % 2 == 1:
            q = (q % H) * W + q // H
    return t < l, t, q


@triton.jit
def _add_steps(ptr, v, j, l, BLOCK_L: tl.constexpr, NT: tl.constexpr, STRIPED: tl.constexpr):
    """fp32 atomic add of a (BLOCK_L,) step vector at chunk j's positions. STRIPED re-lays it out as
    (BLOCK_L / NT, NT) so that each warp instruction adds 32 consecutive floats (one 128-byte line, the
    block exchange mamba-ssm does before its atomics) instead of every thread's own run of steps."""
    if STRIPED:
        t = j * BLOCK_L + tl.arange(0, BLOCK_L // NT)[:, None] * NT + tl.arange(0, NT)[None, :]
        tl.atomic_add(ptr + t, tl.reshape(v, (BLOCK_L // NT, NT)), mask=t < l, sem="relaxed")
    else:
        t = j * BLOCK_L + tl.arange(0, BLOCK_L)
        tl.atomic_add(ptr + t, v, mask=t < l, sem="relaxed")


@triton.jit
def _program(d, n, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Program (channel block, batch row) -> its channel offsets and masks, state offsets and step offsets."""
    pid_d = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    rows = offs_d.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mdn = md[:, None] & (offs_n[None, :] < n)
    return pid_d, pb, offs_d, md, rows, offs_n, mdn, tl.arange(0, BLOCK_L)


@triton.jit
def _dvec(ptr, offs_d, md, HAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A per-channel vector (D, delta_bias) in fp32; zeros (never used) when the input is absent."""
    if HAS:
        v = tl.load(ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        v = tl.zeros((BLOCK_D,), dtype=tl.float32)
    return v


@triton.jit
def _rows_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, out_ptr, hT_ptr, ck_ptr,
    su_r, su_b, su_d, su_l, sdt_r, sdt_b, sdt_d, sdt_l, sA_r, sA_d, sA_n,
    sB_r, sB_b, sB_g, sB_n, sB_l, sC_r, sC_b, sC_g, sC_n, sC_l, sD_r, sdb_r,
    sz_b, sz_d, sz_l, so_r, so_b, so_d, so_l,
    nb, d, l, n, eB, eC, nck, H, W,
    NDIR: tl.constexpr, MODE: tl.constexpr, REV: tl.constexpr, ACC_OUT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CK: tl.constexpr,
    CK_EVERY: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d, pb, offs_d, md, rows, offs_n, mdn, offs_l = _program(d, n, BLOCK_D, BLOCK_N, BLOCK_L)
    nt = tl.cdiv(l, BLOCK_L)
    z_row = z_ptr + pb * sz_b + rows[:, None] * sz_d  # z is shared by the directions
    for r in tl.static_range(NDIR):
        Dv = _dvec(D_ptr + r * sD_r, offs_d, md, HAS_D, BLOCK_D)
        dbv = _dvec(db_ptr + r * sdb_r, offs_d, md, HAS_DB, BLOCK_D)
        state_off = ((r * nb + pb) * d + rows[:, None]) * n + offs_n[None, :]
        h = _load_state(h0_ptr, state_off, mdn, HAS_H0, BLOCK_D, BLOCK_N)
        u_row = u_ptr + r * su_r + pb * su_b + rows[:, None] * su_d
        dt_row = dt_ptr + r * sdt_r + pb * sdt_b + rows[:, None] * sdt_d
        out_row = out_ptr + r * so_r + pb * so_b + rows[:, None] * so_d
        A_row = A_ptr + r * sA_r + rows * sA_d
        # every channel of the block is in one B/C group (the launcher guarantees it)
        B_row = B_ptr + r * sB_r + pb * sB_b + ((pid_d * BLOCK_D) // eB) * sB_g
        C_row = C_ptr + r * sC_r + pb * sC_b + ((pid_d * BLOCK_D) // eC) * sC_g
        ck_row = ck_ptr + ((r * nb + pb) * nck * d + rows[:, None]) * n + offs_n[None, :]
        for c in range(0, nt):
            if _flip(r, MODE, REV):
                j = nt - 1 - c
                if STORE_CK:  # the state entering backward chunk j // CK_EVERY, which is walked from its top
                    if (j % CK_EVERY == CK_EVERY - 1) | (j == nt - 1):
                        tl.store(ck_row + (j // CK_EVERY) * d * n, h, mask=mdn)
            else:
                j = c
                if STORE_CK:
                    if j % CK_EVERY == 0:
                        tl.store(ck_row + (j // CK_EVERY) * d * n, h, mask=mdn)
            ml, pp, dp = _tile(j, offs_l, l, H, W, r, MODE, BLOCK_L)
            mld = md[:, None] & ml[None, :]
            u = tl.load(u_row + dp[None, :] * su_l, mask=mld, other=0.0).to(tl.float32)
            raw = tl.load(dt_row + pp[None, :] * sdt_l, mask=mld, other=0.0).to(tl.float32)
            _, dt = _dt_of(raw, dbv, mld, HAS_DB, SOFTPLUS)
            dtu = dt * u
            if HAS_D:
                y = Dv[:, None] * u
            else:
                y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
            h_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
            for k in range(0, n):
                Bk = tl.load(B_row + k * sB_n + pp * sB_l, mask=ml, other=0.0).to(tl.float32)
                Ck = tl.load(C_row + k * sC_n + pp * sC_l, mask=ml, other=0.0).to(tl.float32)
                A2k = tl.load(A_row + k * sA_n, mask=md, other=0.0).to(tl.float32) * 1.4426950408889634
                a = tl.exp2(dt * A2k[:, None])
                aC, bC = tl.associative_scan((a, dtu * Bk[None, :]), 1, _combine, reverse=_flip(r, MODE, REV))
                hs = aC * _column(h, offs_n, k)[:, None] + bC
                y += hs * Ck[None, :]
                # masked steps are (a=1, b=0), so the chunk's last step in scan order holds its end state
                if _flip(r, MODE, REV):
                    h_end = _at_step(hs, offs_l, 0)
                else:
                    h_end = _at_step(hs, offs_l, BLOCK_L - 1)
                h_next = tl.where(offs_n[None, :] == k, h_end[:, None], h_next)
            h = h_next
            if HAS_Z:
                zz = tl.load(z_row + dp[None, :] * sz_l, mask=mld, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            if ACC_OUT:
                if r > 0:  # the earlier directions' sum, stored at these positions
                    y += tl.load(out_row + dp[None, :] * so_l, mask=mld, other=0.0).to(tl.float32)
            tl.store(out_row + dp[None, :] * so_l, y.to(out_ptr.dtype.element_ty), mask=mld)
        if STORE_HT:
            tl.store(hT_ptr + state_off, h, mask=mdn)
        if NDIR > 1:
            tl.debug_barrier()  # a route that reads other threads' sums (cross-scan pixels) sees them stored


@triton.jit
def _rows_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, ck_ptr, dout_ptr, dhT_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddb_ptr, dh0_ptr,
    su_r, su_b, su_d, su_l, sdt_r, sdt_b, sdt_d, sdt_l, sA_r, sA_d, sA_n,
    sB_r, sB_b, sB_g, sB_n, sB_l, sC_r, sC_b, sC_g, sC_n, sC_l, sD_r, sdb_r, sz_b, sz_d, sz_l,
    sdB_r, sdB_b, sdB_g, sdB_n, sdC_r, sdC_b, sdC_g, sdC_n,
    sdo_r, sdo_b, sdo_d, sdo_l, sdu_r, sdu_b, sdu_d, sdu_l, sddt_r, sddt_b, sddt_d, sddt_l, sdz_b, sdz_d, sdz_l,
    nb, d, l, n, eB, eC, nck, H, W,
    NDIR: tl.constexpr, MODE: tl.constexpr, REV: tl.constexpr, ACC_DU: tl.constexpr, ACC_DDT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    NT: tl.constexpr, STRIPED: tl.constexpr, ATOMICS: tl.constexpr,
):
    pid_d, pb, offs_d, md, rows, offs_n, mdn, offs_l = _program(d, n, BLOCK_D, BLOCK_N, BLOCK_L)
    z_row = z_ptr + pb * sz_b + rows[:, None] * sz_d
    dz_row = dz_ptr + pb * sdz_b + rows[:, None] * sdz_d
    gB = (pid_d * BLOCK_D) // eB
    gC = (pid_d * BLOCK_D) // eC
    for r in tl.static_range(NDIR):
        Dv = _dvec(D_ptr + r * sD_r, offs_d, md, HAS_D, BLOCK_D)
        dbv = _dvec(db_ptr + r * sdb_r, offs_d, md, HAS_DB, BLOCK_D)
        state_off = ((r * nb + pb) * d + rows[:, None]) * n + offs_n[None, :]
        # K: the adjoint flowing into the chunk from the next one, a_first * G_first (dL/dh_T at the end)
        K = _load_state(dhT_ptr, state_off, mdn, HAS_DHT, BLOCK_D, BLOCK_N)
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        ddb_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

        u_row = u_ptr + r * su_r + pb * su_b + rows[:, None] * su_d
        dt_row = dt_ptr + r * sdt_r + pb * sdt_b + rows[:, None] * sdt_d
        do_row = dout_ptr + r * sdo_r + pb * sdo_b + rows[:, None] * sdo_d
        du_row = du_ptr + r * sdu_r + pb * sdu_b + rows[:, None] * sdu_d
        ddt_row = ddt_ptr + r * sddt_r + pb * sddt_b + rows[:, None] * sddt_d
        A_row = A_ptr + r * sA_r + rows * sA_d
        B_row = B_ptr + r * sB_r + pb * sB_b + gB * sB_g
        C_row = C_ptr + r * sC_r + pb * sC_b + gC * sC_g
        dB_row = dB_ptr + r * sdB_r + pb * sdB_b + gB * sdB_g
        dC_row = dC_ptr + r * sdC_r + pb * sdC_b + gC * sdC_g
        for ci in range(0, nck):
            # the step after each step in scan order, inside this chunk (the chunk's last step in scan order
            # takes its a_{t+1} from the carry instead), and the chunk's first step in scan order
            if _flip(r, MODE, REV):
                j = ci
                offs1 = offs_l - 1
                edge = offs_l > 0
                first = tl.minimum(BLOCK_L - 1, l - 1 - j * BLOCK_L)
            else:
                j = nck - 1 - ci
                offs1 = offs_l + 1
                edge = offs_l < BLOCK_L - 1
                first = 0
            ml, pp, dp = _tile(j, offs_l, l, H, W, r, MODE, BLOCK_L)
            mld = md[:, None] & ml[None, :]
            ml1, pp1, _ = _tile(j, offs1, l, H, W, r, MODE, BLOCK_L)
            mld1 = md[:, None] & (ml1 & edge)[None, :]
            u = tl.load(u_row + dp[None, :] * su_l, mask=mld, other=0.0).to(tl.float32)
            raw = tl.load(dt_row + pp[None, :] * sdt_l, mask=mld, other=0.0).to(tl.float32)
            _, dt = _dt_of(raw, dbv, mld, HAS_DB, SOFTPLUS)
            raw1 = tl.load(dt_row + pp1[None, :] * sdt_l, mask=mld1, other=0.0).to(tl.float32)
            _, dt1 = _dt_of(raw1, dbv, mld1, HAS_DB, SOFTPLUS)
            # dout and z are loaded again for dz after the state loop, so they hold no registers through it
            dy = tl.load(do_row + dp[None, :] * sdo_l, mask=mld, other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_row + dp[None, :] * sz_l, mask=mld, other=0.0).to(tl.float32)
                dy = dy * zz * tl.sigmoid(zz)
            dtu = dt * u
            ck_c = ck_ptr + (((r * nb + pb) * nck + j) * d + rows) * n  # the state entering this chunk
            if HAS_D:
                y = Dv[:, None] * u
                du = Dv[:, None] * dy
                dD_acc += tl.sum(dy * u, 1)
            else:
                y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
                du = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
            ddt = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
            K_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
            dA_c = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
            for k in range(0, n):
                Bk = tl.load(B_row + k * sB_n + pp * sB_l, mask=ml, other=0.0).to(tl.float32)
                Ck = tl.load(C_row + k * sC_n + pp * sC_l, mask=ml, other=0.0).to(tl.float32)
                Ak = tl.load(A_row + k * sA_n, mask=md, other=0.0).to(tl.float32)[:, None]
                A2k = Ak * 1.4426950408889634
                a = tl.exp2(dt * A2k)
                bk = dtu * Bk[None, :]
                aC, bC = tl.associative_scan((a, bk), 1, _combine, reverse=_flip(r, MODE, REV))
                hs = aC * tl.load(ck_c + k, mask=md, other=0.0)[:, None] + bC
                if HAS_Z:
                    y += hs * Ck[None, :]
                ar, gr = tl.associative_scan((tl.exp2(dt1 * A2k), dy * Ck[None, :]), 1, _combine,
                                             reverse=_adjoint_reverse(r, MODE, REV))
                G = gr + ar * _column(K, offs_n, k)[:, None]
                X = G * (hs - bk)  # = G_t a_t h_{t-1}: the gradient through log a_t
                # one reduction over the steps for two values: dA's chunk sum and a_first * G_first
                dA_k, K_k = tl.reduce((X * dt, tl.where(offs_l[None, :] == first, a * G, 0.0)), 1, _add2)
                K_next = tl.where(offs_n[None, :] == k, K_k[:, None], K_next)
                dA_c = tl.where(offs_n[None, :] == k, dA_k[:, None], dA_c)
                GB = G * Bk[None, :]
                ddt += X * Ak + GB * u
                du += GB * dt
                if ATOMICS:  # off only in the benchmark's diagnosis (wrong dB/dC, to weigh the atomics)
                    _add_steps(dB_row + k * sdB_n, tl.sum(G * dtu, 0), j, l, BLOCK_L, NT, STRIPED)
                    _add_steps(dC_row + k * sdC_n, tl.sum(hs * dy, 0), j, l, BLOCK_L, NT, STRIPED)
            K = K_next
            dA_acc += dA_c
            if HAS_Z:
                do = tl.load(do_row + dp[None, :] * sdo_l, mask=mld, other=0.0).to(tl.float32)
                zz = tl.load(z_row + dp[None, :] * sz_l, mask=mld, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zz)
                dz = do * y * sz * (1.0 + zz * (1.0 - sz))
                if r > 0:  # z is shared: add to the earlier directions' gradient
                    dz += tl.load(dz_row + dp[None, :] * sdz_l, mask=mld, other=0.0).to(tl.float32)
                tl.store(dz_row + dp[None, :] * sdz_l, dz.to(dz_ptr.dtype.element_ty), mask=mld)
            if SOFTPLUS:  # dt before softplus, loaded again (no register held through the loop)
                raw = tl.load(dt_row + pp[None, :] * sdt_l, mask=mld, other=0.0).to(tl.float32)
                raw, _ = _dt_of(raw, dbv, mld, HAS_DB, False)
                ddt = ddt * tl.sigmoid(raw)
            ddt = tl.where(mld, ddt, 0.0)
            if HAS_DB:
                ddb_acc += tl.sum(ddt, 1)
            if ACC_DDT:
                if r > 0:
                    ddt += tl.load(ddt_row + pp[None, :] * sddt_l, mask=mld, other=0.0).to(tl.float32)
            if ACC_DU:
                if r > 0:
                    du += tl.load(du_row + dp[None, :] * sdu_l, mask=mld, other=0.0).to(tl.float32)
            tl.store(ddt_row + pp[None, :] * sddt_l, ddt.to(ddt_ptr.dtype.element_ty), mask=mld)
            tl.store(du_row + dp[None, :] * sdu_l, du.to(du_ptr.dtype.element_ty), mask=mld)

        part = (r * nb + pb) * d + offs_d  # per-direction, per-batch partials, summed in torch
        tl.store(dA_ptr + part[:, None] * n + offs_n[None, :], dA_acc, mask=mdn)
        if HAS_D:
            tl.store(dD_ptr + part, dD_acc, mask=md)
        if HAS_DB:
            tl.store(ddb_ptr + part, ddb_acc, mask=md)
        if STORE_DH0:
            tl.store(dh0_ptr + state_off, K, mask=mdn)
        if NDIR > 1:
            tl.debug_barrier()  # a route that reads other threads' sums (cross-scan pixels) sees them stored


# ----------------------------------------------------------------------------- launch configuration
# (BLOCK_D, BLOCK_L, num_warps) for the forward and backward kernels; the backward BLOCK_L is also the
# checkpoint interval. About 16 steps per thread, as mamba-ssm's kNItems; picked on an H200 by
# benchmarks/kernels.py (kernels/NOTES.md). Override with set_rows_config() (tests use tiny blocks so the
# interpreter walks several chunks).
_CONFIG = {"fwd": (1, 1024, 4), "bwd": (1, 1024, 4), "striped": True, "atomics": True}


def set_rows_config(fwd=None, bwd=None, striped=None, atomics=None):
    """Set (BLOCK_D, BLOCK_L, num_warps) of the row-layout scan kernels (every op: plain, bidirectional,
    cross-scan), and whether dB/dC's atomics are striped (``atomics=False`` skips them: for timing
    diagnosis only); returns the old settings."""
    old = dict(_CONFIG)
    for key, value in (("fwd", fwd), ("bwd", bwd)):
        if value is not None:
            _CONFIG[key] = tuple(value)
    for key, value in (("striped", striped), ("atomics", atomics)):
        if value is not None:
            _CONFIG[key] = bool(value)
    return old


def _launch_config(d, l, gB, gC):
    return clamp_blocks(_CONFIG["fwd"], _CONFIG["bwd"], d, l, gB, gC)


def _lastdim(t):
    if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
        return t.contiguous()
    return t


def _split(t, per_dir_dim, zeros=3):
    """(direction stride, per-direction strides) of an input given shared by the directions (``per_dir_dim``
    dimensions: direction stride 0) or per direction (a leading direction axis)."""
    if t is None:
        return 0, (0,) * zeros
    if t.dim() == per_dir_dim + 1:
        return t.stride(0), t.stride()[1:]
    return 0, t.stride()


def _input_strides(u, delta, A, B, C, D, db, z) -> list[int]:
    """The strides both kernels take for their inputs, in their argument order: (direction stride, strides) of
    u, delta, A, B, C; the direction strides of D and delta_bias; z's strides (zeros when absent)."""
    out = []
    for t, dims in ((u, 3), (delta, 3), (A, 2), (B, 4), (C, 4)):
        r, st = _split(t, dims)
        out += [r, *st]
    out += [_split(D, 1)[0], _split(db, 1)[0]]
    return out + list(z.stride() if z is not None else (0, 0, 0))


class ScanSpec:
    """What one launch computes: ``ndir`` scans per (channel block, batch row) -- 1 (plain), 2
    (bidirectional: direction 1 walks backwards) or 4 (cross-scan routes, ``mode=1`` with the image's
    ``H``, ``W``); ``rev`` reverses the plain scan; ``acc_out``: the directions' outputs are summed in one
    buffer (else stacked on a leading direction axis)."""

    __slots__ = ("ndir", "mode", "rev", "H", "W", "softplus", "want_final", "need_ck", "acc_out")

    def __init__(self, ndir=1, mode=0, rev=False, H=1, W=1, softplus=False, want_final=False, need_ck=True,
                 acc_out=False):
        self.ndir, self.mode, self.rev, self.H, self.W = ndir, mode, bool(rev), H, W
        self.softplus, self.want_final, self.need_ck = bool(softplus), bool(want_final), bool(need_ck)
        self.acc_out = bool(acc_out) or ndir == 1


class RowsFn(torch.autograd.Function):
    """Inputs come shared by the ``R = spec.ndir`` directions (the per-direction shapes below) or per
    direction (a leading axis R): u, delta (b, d, l); A (d, n); B, C (b, g, n, l); D, delta_bias (d,);
    z (b, d, l) always shared; h0 (R, b, d, n) or (b, d, n) when R = 1, or None.
    Returns out in u's dtype -- (b, d, l) in u's layout when ``spec.acc_out``, else (R, b, d, l) -- and the
    final state (R, b, d, n) fp32 (squeezed to (b, d, n) when R = 1) or None."""

    @staticmethod
    def forward(ctx, spec, u, delta, A, B, C, D, z, db, h0):
        R = spec.ndir
        u, delta, B, C, z = (_lastdim(t) for t in (u, delta, B, C, z))
        b, d, l = u.shape[-3:]
        n = A.shape[-1]
        gB, gC = B.shape[-3], C.shape[-3]
        (bdf, blf, wf), (bdb, blb, wb) = _launch_config(d, l, gB, gC)
        BLOCK_N = max(2, _next_pow2(n))
        dev, f32 = u.device, torch.float32
        u1 = u if u.dim() == 3 else u[0]
        if spec.acc_out:  # keeps a dense input's layout (a channel-major block's): no copies follow
            out, so_r = torch.empty_like(u1), 0
        else:
            out = torch.empty((R, b, d, l), device=dev, dtype=u.dtype)
            so_r = out.stride(0)
        hT = torch.empty((R, b, d, n), device=dev, dtype=f32) if spec.want_final else out
        nck = triton.cdiv(l, blb)
        ck = torch.empty((R, b, nck, d, n), device=dev, dtype=f32) if spec.need_ck else out
        if h0 is not None:
            h0 = h0.float().contiguous()
        dummy = out
        if l > 0:
            _rows_fwd_kernel[(triton.cdiv(d, bdf), b)](
                u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                db if db is not None else dummy, h0 if h0 is not None else dummy, out, hT, ck,
                *_input_strides(u, delta, A, B, C, D, db, z), so_r, *out.stride()[-3:],
                b, d, l, n, d // gB, d // gC, nck, spec.H, spec.W,
                NDIR=R, MODE=spec.mode, REV=spec.rev, ACC_OUT=spec.acc_out and R > 1, HAS_D=D is not None,
                HAS_Z=z is not None, HAS_DB=db is not None, SOFTPLUS=spec.softplus, HAS_H0=h0 is not None,
                STORE_HT=spec.want_final, STORE_CK=spec.need_ck, CK_EVERY=blb // blf, BLOCK_D=bdf,
                BLOCK_N=BLOCK_N, BLOCK_L=blf, num_warps=wf)
        elif spec.want_final:
            hT.copy_(h0.view(hT.shape) if h0 is not None else torch.zeros_like(hT))
        ctx.spec = spec
        ctx.dims = (b, d, l, n, gB, gC, nck, bdb, blb, wb, BLOCK_N)
        ctx.save_for_backward(u, delta, A, B, C, D, z, db, ck, h0)
        if spec.want_final and R == 1:
            hT = hT[0]
        return out, (hT if spec.want_final else None)

    @staticmethod
    def backward(ctx, dout, dhT):
        spec = ctx.spec
        R = spec.ndir
        b, d, l, n, gB, gC, nck, bdb, blb, wb, BLOCK_N = ctx.dims
        u, delta, A, B, C, D, z, db, ck, h0 = ctx.saved_tensors
        dev, f32 = u.device, torch.float32
        if dout is None:
            dout = torch.zeros((b, d, l) if spec.acc_out else (R, b, d, l), device=dev, dtype=u.dtype)
        dout = _lastdim(dout)
        du, ddt = torch.empty_like(u), torch.empty_like(delta)  # one buffer for a shared input: summed in-kernel
        dz = torch.empty_like(z) if z is not None else None
        dB = torch.zeros(B.shape, device=dev, dtype=f32)
        dC = torch.zeros(C.shape, device=dev, dtype=f32)
        dA = torch.empty((R, b, d, n), device=dev, dtype=f32)
        dD = torch.empty((R, b, d), device=dev, dtype=f32) if D is not None else None
        ddb = torch.empty((R, b, d), device=dev, dtype=f32) if db is not None else None
        dh0 = torch.empty((R, b, d, n), device=dev, dtype=f32) if h0 is not None else None
        has_dhT = dhT is not None and spec.want_final
        if has_dhT:
            dhT = dhT.float().contiguous()
        if l == 0:
            dA.zero_()
            for t in (dD, ddb):
                if t is not None:
                    t.zero_()
            if dh0 is not None:
                dh0.copy_(dhT.view(dh0.shape) if has_dhT else torch.zeros_like(dh0))
        else:
            dummy = dA
            sdB_r, sdB = _split(dB, 4)
            sdC_r, sdC = _split(dC, 4)
            sdo_r, sdo = _split(dout, 3)
            sdu_r, sdu = _split(du, 3)
            sddt_r, sddt = _split(ddt, 3)
            dzs = dz.stride() if dz is not None else (0, 0, 0)
            _rows_bwd_kernel[(triton.cdiv(d, bdb), b)](
                u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                db if db is not None else dummy, ck, dout, dhT if has_dhT else dummy,
                du, ddt, dz if dz is not None else dummy, dA, dB, dC,
                dD if dD is not None else dummy, ddb if ddb is not None else dummy,
                dh0 if dh0 is not None else dummy,
                *_input_strides(u, delta, A, B, C, D, db, z),
                sdB_r, *sdB[:3], sdC_r, *sdC[:3], sdo_r, *sdo, sdu_r, *sdu, sddt_r, *sddt, *dzs,
                b, d, l, n, d // gB, d // gC, nck, spec.H, spec.W,
                NDIR=R, MODE=spec.mode, REV=spec.rev, ACC_DU=R > 1 and u.dim() == 3,
                ACC_DDT=R > 1 and delta.dim() == 3, HAS_D=D is not None, HAS_Z=z is not None,
                HAS_DB=db is not None, SOFTPLUS=spec.softplus, HAS_DHT=has_dhT, STORE_DH0=dh0 is not None,
                BLOCK_D=bdb, BLOCK_N=BLOCK_N, BLOCK_L=blb, NT=32 * wb, ATOMICS=_CONFIG["atomics"],
                STRIPED=_CONFIG["striped"] and blb % (32 * wb) == 0, num_warps=wb)

        def reduce(part, like):  # (R, b, ...) partials -> the input's shape: per direction, or summed
            if like is None:
                return None
            part = part.sum(1)
            return (part if like.dim() == part.dim() else part.sum(0)).to(like.dtype)

        if dh0 is not None and R == 1 and h0.dim() == 3:
            dh0 = dh0[0]
        return (None, du, ddt, reduce(dA, A), dB.to(B.dtype), dC.to(C.dtype), reduce(dD, D), dz, reduce(ddb, db),
                dh0)
