"""Triton selective scan (Mamba-1), plain op, in the row layout: forward and backward.

Layout of the work (the one mamba-ssm's CUDA kernel uses, ``csrc/selective_scan``): one program per
(block of ``BLOCK_D`` channels, batch row).  The sequence runs along the threads: a chunk of ``BLOCK_L``
steps is a ``(BLOCK_D, BLOCK_L)`` tile with about 16 consecutive steps in each thread's registers, loaded
and stored coalesced.  The states are a loop: for each state index n the chunk's recurrence
``h_t = a_t h_{t-1} + b_t`` is one ``tl.associative_scan`` along the steps (in-thread, then across lanes
and warps), ``y += C_n h`` accumulates in registers, and the state leaving the chunk is carried into the
next chunk in a small ``(BLOCK_D, BLOCK_N)`` register tile.  Compared with the (L, D, N) tiles of
``_scan.py`` (still used by the fused bidirectional and cross-scan), no thread holds a state axis, so the
per-step work has no reduction over N and the registers stay low.

Backward: the forward stores the state entering every backward chunk (``ck``, one fp32 ``(d, n)`` state per
``BLOCK_L_bwd`` steps).  The backward walks the chunks in reverse; for each n it recomputes the chunk's
states from the checkpoint, runs the adjoint ``G_t = dy_t C_t + a_{t+1} G_{t+1}`` as a reverse scan (with
``a_{t+1}`` from a shifted load of dt) and accumulates du, d_dt, dA, dD, d_delta_bias in registers.  dB and
dC are summed over the program's channels and added with fp32 atomics along the steps, so every atomic
instruction of a warp hits consecutive addresses.  The carry between chunks is ``a_first * G_first``; after
the first chunk it is the initial state's gradient.

Kernels import nothing of the core: bad arguments raise ValueError / RuntimeError.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._scan import _combine, _load_state, _next_pow2, _softplus, clamp_blocks

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


@triton.jit
def _steps(c, offs_l, l, REV: tl.constexpr, BLOCK_L: tl.constexpr):
    """Scan steps of chunk c -> (step mask, memory positions); a reverse scan walks positions l-1 .. 0."""
    s = c * BLOCK_L + offs_l
    if REV:
        p = l - 1 - s
    else:
        p = s
    return s < l, p


@triton.jit
def _add_steps(ptr, v, c, l, REV: tl.constexpr, BLOCK_L: tl.constexpr, NT: tl.constexpr, STRIPED: tl.constexpr):
    """fp32 atomic add of a (BLOCK_L,) step vector at its positions. STRIPED re-lays it out as
    (BLOCK_L / NT, NT) so that each warp instruction adds 32 consecutive floats (one 128-byte line, the
    block exchange mamba-ssm does before its atomics) instead of every thread's own run of steps."""
    if STRIPED:
        offs = tl.arange(0, BLOCK_L // NT)[:, None] * NT + tl.arange(0, NT)[None, :]
        ml, p = _steps(c, offs, l, REV, BLOCK_L)
        tl.atomic_add(ptr + p, tl.reshape(v, (BLOCK_L // NT, NT)), mask=ml, sem="relaxed")
    else:
        ml, p = _steps(c, tl.arange(0, BLOCK_L), l, REV, BLOCK_L)
        tl.atomic_add(ptr + p, v, mask=ml, sem="relaxed")


@triton.jit
def _program(d, n, D_ptr, db_ptr, HAS_D: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Program (channel block, batch row) -> its offsets and masks, D and delta_bias (fp32; zeros when
    absent) and the offsets of its (BLOCK_D, BLOCK_N) states in a (b, d, n) tensor."""
    pid_d = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    rows = offs_d.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mdn = md[:, None] & (offs_n[None, :] < n)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_DB:
        dbv = tl.load(db_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        dbv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    state_off = (pb * d + rows[:, None]) * n + offs_n[None, :]
    return pid_d, pb, offs_d, md, rows, offs_n, mdn, tl.arange(0, BLOCK_L), Dv, dbv, state_off


@triton.jit
def _rows_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, out_ptr, hT_ptr, ck_ptr,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
    d, l, n, eB, eC, nck,
    REV: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CK: tl.constexpr,
    CK_EVERY: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d, pb, offs_d, md, rows, offs_n, mdn, offs_l, Dv, dbv, state_off = _program(
        d, n, D_ptr, db_ptr, HAS_D, HAS_DB, BLOCK_D, BLOCK_N, BLOCK_L)
    h = _load_state(h0_ptr, state_off, mdn, HAS_H0, BLOCK_D, BLOCK_N)

    u_row = u_ptr + pb * su_b + rows[:, None] * su_d
    dt_row = dt_ptr + pb * sdt_b + rows[:, None] * sdt_d
    z_row = z_ptr + pb * sz_b + rows[:, None] * sz_d
    out_row = out_ptr + pb * so_b + rows[:, None] * so_d
    # every channel of the block is in one B/C group (the launcher guarantees it)
    B_row = B_ptr + pb * sB_b + ((pid_d * BLOCK_D) // eB) * sB_g
    C_row = C_ptr + pb * sC_b + ((pid_d * BLOCK_D) // eC) * sC_g
    ck_row = ck_ptr + (pb * nck * d + rows[:, None]) * n + offs_n[None, :]

    for c in range(0, tl.cdiv(l, BLOCK_L)):
        if STORE_CK:
            if c % CK_EVERY == 0:
                tl.store(ck_row + (c // CK_EVERY) * d * n, h, mask=mdn)
        ml, p = _steps(c, offs_l, l, REV, BLOCK_L)
        mld = md[:, None] & ml[None, :]
        u = tl.load(u_row + p[None, :] * su_l, mask=mld, other=0.0).to(tl.float32)
        raw = tl.load(dt_row + p[None, :] * sdt_l, mask=mld, other=0.0).to(tl.float32)
        _, dt = _dt_of(raw, dbv, mld, HAS_DB, SOFTPLUS)
        dtu = dt * u
        if HAS_D:
            y = Dv[:, None] * u
        else:
            y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        h_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for k in range(0, n):
            Bk = tl.load(B_row + k * sB_n + p * sB_l, mask=ml, other=0.0).to(tl.float32)
            Ck = tl.load(C_row + k * sC_n + p * sC_l, mask=ml, other=0.0).to(tl.float32)
            A2k = tl.load(A_ptr + rows * sA_d + k * sA_n, mask=md, other=0.0).to(tl.float32) * 1.4426950408889634
            a = tl.exp2(dt * A2k[:, None])
            aC, bC = tl.associative_scan((a, dtu * Bk[None, :]), 1, _combine)
            hs = aC * _column(h, offs_n, k)[:, None] + bC
            y += hs * Ck[None, :]
            # masked steps are (a=1, b=0), so the last step holds the chunk's end state
            h_next = tl.where(offs_n[None, :] == k, _at_step(hs, offs_l, BLOCK_L - 1)[:, None], h_next)
        h = h_next
        if HAS_Z:
            zz = tl.load(z_row + p[None, :] * sz_l, mask=mld, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_row + p[None, :] * so_l, y.to(out_ptr.dtype.element_ty), mask=mld)
    if STORE_HT:
        tl.store(hT_ptr + state_off, h, mask=mdn)


@triton.jit
def _rows_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, ck_ptr, dout_ptr, dhT_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddb_ptr, dh0_ptr,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sz_b, sz_d, sz_l,
    sdB_b, sdB_g, sdB_n, sdC_b, sdC_g, sdC_n,
    sdo_b, sdo_d, sdo_l, sdu_b, sdu_d, sdu_l, sddt_b, sddt_d, sddt_l, sdz_b, sdz_d, sdz_l,
    d, l, n, eB, eC, nck,
    REV: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DB: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    NT: tl.constexpr, STRIPED: tl.constexpr, ATOMICS: tl.constexpr,
):
    pid_d, pb, offs_d, md, rows, offs_n, mdn, offs_l, Dv, dbv, state_off = _program(
        d, n, D_ptr, db_ptr, HAS_D, HAS_DB, BLOCK_D, BLOCK_N, BLOCK_L)
    # K: the adjoint flowing into the chunk from the next one, a_first * G_first (dL/dh_T at the end)
    K = _load_state(dhT_ptr, state_off, mdn, HAS_DHT, BLOCK_D, BLOCK_N)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ddb_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    u_row = u_ptr + pb * su_b + rows[:, None] * su_d
    dt_row = dt_ptr + pb * sdt_b + rows[:, None] * sdt_d
    z_row = z_ptr + pb * sz_b + rows[:, None] * sz_d
    do_row = dout_ptr + pb * sdo_b + rows[:, None] * sdo_d
    du_row = du_ptr + pb * sdu_b + rows[:, None] * sdu_d
    ddt_row2 = ddt_ptr + pb * sddt_b + rows[:, None] * sddt_d
    dz_row = dz_ptr + pb * sdz_b + rows[:, None] * sdz_d
    gB = (pid_d * BLOCK_D) // eB
    gC = (pid_d * BLOCK_D) // eC
    B_row = B_ptr + pb * sB_b + gB * sB_g
    C_row = C_ptr + pb * sC_b + gC * sC_g
    dB_row = dB_ptr + pb * sdB_b + gB * sdB_g
    dC_row = dC_ptr + pb * sdC_b + gC * sdC_g
    for ci in range(0, nck):
        c = nck - 1 - ci
        ml, p = _steps(c, offs_l, l, REV, BLOCK_L)
        mld = md[:, None] & ml[None, :]
        # step s+1 inside this chunk (the chunk's last step takes its a_{s+1} from the carry instead)
        ml1, p1 = _steps(c, offs_l + 1, l, REV, BLOCK_L)
        mld1 = md[:, None] & (ml1 & (offs_l < BLOCK_L - 1))[None, :]
        u = tl.load(u_row + p[None, :] * su_l, mask=mld, other=0.0).to(tl.float32)
        raw = tl.load(dt_row + p[None, :] * sdt_l, mask=mld, other=0.0).to(tl.float32)
        _, dt = _dt_of(raw, dbv, mld, HAS_DB, SOFTPLUS)
        raw1 = tl.load(dt_row + p1[None, :] * sdt_l, mask=mld1, other=0.0).to(tl.float32)
        _, dt1 = _dt_of(raw1, dbv, mld1, HAS_DB, SOFTPLUS)
        # dout and z are loaded again for dz after the state loop, so they hold no registers through it
        dy = tl.load(do_row + p[None, :] * sdo_l, mask=mld, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row + p[None, :] * sz_l, mask=mld, other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        dtu = dt * u
        ck_c = ck_ptr + (pb * nck + c) * d * n + rows * n  # the state entering this chunk, (BLOCK_D,) per k
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
            Bk = tl.load(B_row + k * sB_n + p * sB_l, mask=ml, other=0.0).to(tl.float32)
            Ck = tl.load(C_row + k * sC_n + p * sC_l, mask=ml, other=0.0).to(tl.float32)
            Ak = tl.load(A_ptr + rows * sA_d + k * sA_n, mask=md, other=0.0).to(tl.float32)[:, None]
            A2k = Ak * 1.4426950408889634
            a = tl.exp2(dt * A2k)
            bk = dtu * Bk[None, :]
            aC, bC = tl.associative_scan((a, bk), 1, _combine)
            hs = aC * tl.load(ck_c + k, mask=md, other=0.0)[:, None] + bC
            if HAS_Z:
                y += hs * Ck[None, :]
            ar, gr = tl.associative_scan((tl.exp2(dt1 * A2k), dy * Ck[None, :]), 1, _combine, reverse=True)
            G = gr + ar * _column(K, offs_n, k)[:, None]
            X = G * (hs - bk)  # = G_t a_t h_{t-1}: the gradient through log a_t
            # one reduction over the steps for two values: dA's chunk sum and a_first * G_first
            dA_k, K_k = tl.reduce((X * dt, tl.where(offs_l[None, :] == 0, a * G, 0.0)), 1, _add2)
            K_next = tl.where(offs_n[None, :] == k, K_k[:, None], K_next)
            dA_c = tl.where(offs_n[None, :] == k, dA_k[:, None], dA_c)
            GB = G * Bk[None, :]
            ddt += X * Ak + GB * u
            du += GB * dt
            if ATOMICS:  # off only in the benchmark's diagnosis (wrong dB/dC, to weigh the atomics)
                _add_steps(dB_row + k * sdB_n, tl.sum(G * dtu, 0), c, l, REV, BLOCK_L, NT, STRIPED)
                _add_steps(dC_row + k * sdC_n, tl.sum(hs * dy, 0), c, l, REV, BLOCK_L, NT, STRIPED)
        K = K_next
        dA_acc += dA_c
        if HAS_Z:
            do = tl.load(do_row + p[None, :] * sdo_l, mask=mld, other=0.0).to(tl.float32)
            zz = tl.load(z_row + p[None, :] * sz_l, mask=mld, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dz = do * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_row + p[None, :] * sdz_l, dz.to(dz_ptr.dtype.element_ty), mask=mld)
        if SOFTPLUS:  # dt before softplus, loaded again (no register held through the loop)
            raw = tl.load(dt_row + p[None, :] * sdt_l, mask=mld, other=0.0).to(tl.float32)
            raw, _ = _dt_of(raw, dbv, mld, HAS_DB, False)
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mld, ddt, 0.0)
        if HAS_DB:
            ddb_acc += tl.sum(ddt, 1)
        tl.store(ddt_row2 + p[None, :] * sddt_l, ddt.to(ddt_ptr.dtype.element_ty), mask=mld)
        tl.store(du_row + p[None, :] * sdu_l, du.to(du_ptr.dtype.element_ty), mask=mld)

    tl.store(dA_ptr + state_off, dA_acc, mask=mdn)
    if HAS_D:
        tl.store(dD_ptr + pb * d + offs_d, dD_acc, mask=md)
    if HAS_DB:
        tl.store(ddb_ptr + pb * d + offs_d, ddb_acc, mask=md)
    if STORE_DH0:
        tl.store(dh0_ptr + state_off, K, mask=mdn)


# ----------------------------------------------------------------------------- launch configuration
# (BLOCK_D, BLOCK_L, num_warps) for the forward and backward kernels; the backward BLOCK_L is also the
# checkpoint interval. About 16 steps per thread, as mamba-ssm's kNItems; picked on an H200 by
# benchmarks/kernels.py (kernels/NOTES.md). Override with set_rows_config() (tests use tiny blocks so the
# interpreter walks several chunks).
_CONFIG = {"fwd": (1, 1024, 4), "bwd": (1, 1024, 4), "striped": True, "atomics": True}


def set_rows_config(fwd=None, bwd=None, striped=None, atomics=None):
    """Set (BLOCK_D, BLOCK_L, num_warps) of the row-layout scan kernels, and whether dB/dC's atomics are
    striped (``atomics=False`` skips them: for timing diagnosis only); returns the old settings."""
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


class _RowsFn(torch.autograd.Function):
    """u, delta, z (b, d, l); A (d, n); B, C (b, g, n, l); D, delta_bias (d,); h0 (b, d, n) or None.
    Returns out (b, d, l) in u's dtype and the final state (b, d, n) fp32 (or None)."""

    @staticmethod
    def forward(ctx, rev, softplus, want_final, need_ck, u, delta, A, B, C, D, z, db, h0):
        u, delta, B, C, z = (_lastdim(t) for t in (u, delta, B, C, z))
        b, d, l = u.shape
        n = A.shape[-1]
        gB, gC = B.shape[1], C.shape[1]
        (bdf, blf, wf), (bdb, blb, wb) = _launch_config(d, l, gB, gC)
        BLOCK_N = max(2, _next_pow2(n))
        dev, f32 = u.device, torch.float32
        out = torch.empty_like(u)  # keeps a dense input's layout (a channel-major block's): no copies follow
        hT = torch.empty(b, d, n, device=dev, dtype=f32) if want_final else out
        nck = triton.cdiv(l, blb)
        ck = torch.empty(b, nck, d, n, device=dev, dtype=f32) if need_ck else out
        if h0 is not None:
            h0 = h0.float().contiguous()
        zs = z.stride() if z is not None else (0, 0, 0)
        dummy = out
        if l > 0:
            args = (u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                    db if db is not None else dummy, h0 if h0 is not None else dummy, out, hT, ck,
                    *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zs, *out.stride(),
                    d, l, n, d // gB, d // gC, nck)
            flags = dict(REV=rev, HAS_D=D is not None, HAS_Z=z is not None, HAS_DB=db is not None,
                         SOFTPLUS=softplus, HAS_H0=h0 is not None, STORE_HT=want_final, STORE_CK=need_ck,
                         CK_EVERY=blb // blf, BLOCK_N=BLOCK_N, num_warps=wf)
            _rows_fwd_kernel[(triton.cdiv(d, bdf), b)](*args, BLOCK_D=bdf, BLOCK_L=blf, **flags)
        elif want_final:
            hT.copy_(h0 if h0 is not None else torch.zeros_like(hT))
        ctx.cfg = (rev, softplus, want_final, b, d, l, n, gB, gC, nck, bdb, blb, wb, BLOCK_N)
        ctx.save_for_backward(u, delta, A, B, C, D, z, db, ck, h0)
        return out, (hT if want_final else None)

    @staticmethod
    def backward(ctx, dout, dhT):
        rev, softplus, want_final, b, d, l, n, gB, gC, nck, bdb, blb, wb, BLOCK_N = ctx.cfg
        u, delta, A, B, C, D, z, db, ck, h0 = ctx.saved_tensors
        dev, f32 = u.device, torch.float32
        dout = torch.zeros(b, d, l, device=dev, dtype=u.dtype) if dout is None else _lastdim(dout)
        du, ddt = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dB = torch.zeros(B.shape, device=dev, dtype=f32)
        dC = torch.zeros(C.shape, device=dev, dtype=f32)
        dA = torch.empty(b, d, n, device=dev, dtype=f32)
        dD = torch.empty(b, d, device=dev, dtype=f32) if D is not None else None
        ddb = torch.empty(b, d, device=dev, dtype=f32) if db is not None else None
        dh0 = torch.empty(b, d, n, device=dev, dtype=f32) if h0 is not None else None
        has_dhT = dhT is not None and want_final
        if has_dhT:
            dhT = dhT.float().contiguous()
        if l == 0:
            dA.zero_()
            for t in (dD, ddb):
                if t is not None:
                    t.zero_()
            if dh0 is not None:
                dh0.copy_(dhT if has_dhT else torch.zeros_like(dh0))
        else:
            zs = z.stride() if z is not None else (0, 0, 0)
            dummy = dA
            args = (u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                    db if db is not None else dummy, ck, dout, dhT if has_dhT else dummy,
                    du, ddt, dz if dz is not None else dummy, dA, dB, dC,
                    dD if dD is not None else dummy, ddb if ddb is not None else dummy,
                    dh0 if dh0 is not None else dummy,
                    *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zs,
                    *dB.stride()[:3], *dC.stride()[:3],
                    *dout.stride(), *du.stride(), *ddt.stride(), *(dz.stride() if dz is not None else (0, 0, 0)),
                    d, l, n, d // gB, d // gC, nck)
            flags = dict(REV=rev, HAS_D=D is not None, HAS_Z=z is not None, HAS_DB=db is not None,
                         SOFTPLUS=softplus, HAS_DHT=has_dhT, STORE_DH0=dh0 is not None, BLOCK_N=BLOCK_N,
                         NT=32 * wb, ATOMICS=_CONFIG["atomics"], num_warps=wb)
            _rows_bwd_kernel[(triton.cdiv(d, bdb), b)](
                *args, BLOCK_D=bdb, BLOCK_L=blb, STRIPED=_CONFIG["striped"] and blb % (32 * wb) == 0, **flags)
        dA = dA.sum(0).to(A.dtype)
        dD = dD.sum(0).to(D.dtype) if D is not None else None
        ddb = ddb.sum(0).to(db.dtype) if db is not None else None
        return (None, None, None, None, du, ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, ddb, dh0)
