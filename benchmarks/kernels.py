"""Triton kernels vs mamba-ssm on the GPU: parity first (full size, incl. L=2^20), then bf16 timings.

    python benchmarks/kernels.py --out benchmarks/results/kernels_h100.md
    python benchmarks/kernels.py --fused --out benchmarks/results/kernels_fused_h200.md   # fused ops only
    python benchmarks/kernels.py --fused --smoke     # CPU, Triton interpreter, tiny shapes: tests the script

``--fused``: the fused bidirectional scan and cross-scan (the row-layout kernel running 2 / 4 directions per
program) and the plain scan's reverse pass: parity at reduced size against the naive oracle (every combine,
shared and per-direction parameters, grouped C, fp32 and bf16) and at full size against mamba-ssm (pair +
flips; cross_scan + mamba-ssm + cross_merge) and against our unfused paths; then fwd and fwd+bwd timings of
the fused kernels against two of our passes and mamba-ssm's pair at the issue's three shapes, a config
sweep of the fused kernel, the cross-scan against its unfused paths, and the swept winner's parity again.

Parity: our selective scan against mamba-ssm's selective_scan_fn at every timed shape (values, final state,
gradients), and against the naive fp32 oracle at reduced size for what mamba-ssm lacks (initial_state,
reverse, grouped B/C, fp32); the fused bidirectional scan, the cross-scan and the conv against references.
Timing: CUDA-event medians (triton.testing.do_bench), bf16 inputs, B/C shared, z and delta_bias given,
softplus on, as in shared/gpu/README.md. The HBM floor is the bytes each pass must move at least (every
input read once, every output written once) over the measured device copy bandwidth.
"""
from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # before triton is imported: the interpreter and tiny CPU shapes
    os.environ["BENCH_DRY"] = "1"
    os.environ["TRITON_INTERPRET"] = "1"

import argparse
import datetime
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

try:  # the kernels install as mambaverse.kernels (setuptools package-dir); without an install, map them here
    import mambaverse.kernels  # noqa: F401
except ImportError:
    import importlib.util

    import mambaverse

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.util.spec_from_file_location("mambaverse.kernels", os.path.join(_root, "kernels", "__init__.py"),
                                                   submodule_search_locations=[os.path.join(_root, "kernels")])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["mambaverse.kernels"] = _mod
    _spec.loader.exec_module(_mod)
    mambaverse.kernels = _mod

from mambaverse.kernels import (bidirectional_scan_triton, causal_conv1d_triton,  # noqa: E402
                                cross_selective_scan_triton, selective_scan_triton, set_rows_config)
from mambaverse.ops.causal_conv1d import causal_conv1d_torch  # noqa: E402
from mambaverse.ops.bidirectional_scan import bidirectional_scan_reference  # noqa: E402
from mambaverse.ops.cross_scan import cross_selective_scan_reference  # noqa: E402
from mambaverse.ops import bidirectional_scan, selective_scan_naive  # noqa: E402
from mambaverse.ops.dispatch import backends_for  # noqa: E402

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    import mamba_ssm
    MAMBA_VERSION = mamba_ssm.__version__
except Exception as exc:  # noqa: BLE001
    selective_scan_fn = None
    MAMBA_VERSION = f"not installed ({type(exc).__name__})"

DRY = os.environ.get("BENCH_DRY") == "1"  # CPU smoke test of this script's logic under TRITON_INTERPRET=1
DEV = "cpu" if DRY else "cuda"
# sizes: (timed and parity shapes are those of the issue; the dry run shrinks everything)
OPT = (1, 4, 20, 4) if DRY else (2, 64, 300, 16)
BIDIR_PAR = (1, 4, 24) if DRY else (2, 256, 4096)
CROSS = (1, 2, 3, 4, 4) if DRY else (2, 96, 28, 28, 16)
CONV = (1, 4, 30) if DRY else (4, 1536, 8192)
BIDIR_T = (1, 8, 32) if DRY else (4, 1536, 8192)
BLOCK = (16, 32) if DRY else (768, 8192)
LONG = (1, 4, 100) if DRY else (1, 512, 1 << 20)
LINES: list[str] = []
LATE: list = []  # (shape, note): full-size parity of the swept configs, run after the timings
FAILS: list[str] = []
OUT_PATH = None
T0 = time.time()


def log(msg=""):
    print(msg, flush=True)
    LINES.append(msg)
    if OUT_PATH:  # written as we go, so a run cut short still leaves its table
        with open(OUT_PATH, "w") as fh:
            fh.write("\n".join(LINES) + "\n")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(name, err, tol):
    ok = err < tol and err == err
    if not ok:
        FAILS.append(f"{name}: {err:.2e} >= {tol:.0e}")
    return f"{err:.1e}{'' if ok else ' FAIL'}"


def bench(fn, grad_to_none=None, rep=200):
    if DRY:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return do_bench(fn, warmup=25, rep=rep, grad_to_none=grad_to_none, return_mode="median")


# ----------------------------------------------------------------------------- inputs
def make(b, d, l, n=16, dtype=torch.bfloat16, seed=0, grad=True):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    u = r(b, d, l).to(dtype)
    delta = (0.5 * r(b, d, l) - 1.0).to(dtype)  # softplus(.) + bias lands in Mamba's usual dt range
    A = -torch.exp(torch.rand(d, n, device=DEV, generator=g) * 2.0).float()
    B = r(b, n, l).to(dtype)
    C = r(b, n, l).to(dtype)
    D = r(d).float()
    z = r(b, d, l).to(dtype)
    db = (torch.rand(d, device=DEV, generator=g) * 4.0 - 6.0).float()  # softplus^-1 of dt in ~[2e-3, 0.1]
    ts = [u, delta, A, B, C, D, z, db]
    for t in ts:
        t.requires_grad_(grad)
    return ts


def ours(ts, **kw):
    u, delta, A, B, C, D, z, db = ts
    return selective_scan_triton(u, delta, A, B, C, D, z, db, True, **kw)


def anchor(ts, **kw):
    u, delta, A, B, C, D, z, db = ts
    return selective_scan_fn(u, delta, A, B, C, D, z, db, True, **kw)


def grads_of(fn, ts, seed):
    for t in ts:
        t.grad = None
    out = fn(ts)
    out.backward(seed)
    gs = [t.grad.clone() for t in ts]
    for t in ts:
        t.grad = None
    return out.detach(), gs


# ----------------------------------------------------------------------------- parity
NAMES = "u delta A B C D z delta_bias".split()


def parity_full(shape, note=""):
    b, d, l = shape
    ts = make(b, d, l)
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)
    row = [f"B={b} D={d} L={l}{note}"]
    if selective_scan_fn is None:
        log(f"| {row[0]} | mamba-ssm missing: no full-size anchor |")
        return
    with torch.no_grad():
        o1, h1 = ours(ts, return_final_state=True)
        o2, h2 = anchor(ts, return_last_state=True)
    row += [check(f"{row[0]} out", rel(o1, o2), 2e-2), check(f"{row[0]} final", rel(h1, h2.float()), 1e-2)]
    del o1, o2, h1, h2
    _, g1 = grads_of(ours, ts, seed)
    _, g2 = grads_of(anchor, ts, seed)
    errs = [check(f"{row[0]} d{nm}", rel(a, b_), 5e-2) for nm, a, b_ in zip(NAMES, g1, g2)]
    log("| " + " | ".join(row + errs) + " |")
    del ts, g1, g2
    torch.cuda.empty_cache()


def parity_long_state_carry():
    """The 2^20 sequence in two calls carrying the state equals one call (fp32 state path)."""
    b, d, l = LONG
    ts = make(b, d, l, grad=False)
    u, delta, A, B, C, D, z, db = ts
    with torch.no_grad():
        full, hf = selective_scan_triton(u, delta, A, B, C, D, z, db, True, return_final_state=True)
        m = l // 2 + min(123, l // 4)
        a, ha = selective_scan_triton(u[..., :m], delta[..., :m], A, B[..., :m], C[..., :m], D, z[..., :m], db,
                                      True, return_final_state=True)
        b_, hb = selective_scan_triton(u[..., m:], delta[..., m:], A, B[..., m:], C[..., m:], D, z[..., m:], db,
                                       True, initial_state=ha, return_final_state=True)
    e1 = rel(torch.cat([a, b_], -1), full)
    e2 = rel(hb, hf)
    log(f"| L=2^20 split in two calls, state carried | out {check('carry out', e1, 1e-2)} | final {check('carry final', e2, 1e-4)} |")


def parity_options():
    """Everything mamba-ssm lacks, at reduced size against the naive fp32 oracle on the GPU, for the
    default row kernels and the two-level kernels."""
    out = []
    for cfg in (None, ((1, 256, 2), (2, 512, 4))):
        old = set_rows_config(*cfg) if cfg else None
        out += _parity_options(cfg)
        if old:
            set_rows_config(fwd=old["fwd"], bwd=old["bwd"])
    log("| options vs naive (b=2 d=64 l=300, D z delta_bias softplus initial_state final_state) | max rel err over out/final/9 grads |")
    log("|---|---|")
    for line in out:
        log(line)


def _parity_options(cfg):
    b, d, l, n = OPT
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for reverse in (False, True):
            for grouped in (False, True):
                g = torch.Generator(device=DEV).manual_seed(7)
                r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
                u, delta, z = r(b, d, l).to(dtype), (0.5 * r(b, d, l)).to(dtype), r(b, d, l).to(dtype)
                A = -(torch.rand(d, n, device=DEV, generator=g) + 0.3)
                B = (r(b, 2, n, l) if grouped else r(b, n, l)).to(dtype)
                C = r(b, n, l).to(dtype)
                D, db, h0 = r(d), 0.3 * r(d), r(b, d, n)
                ts = [u, delta, A, B, C, D, z, db, h0]
                for t in ts:
                    t.requires_grad_(True)
                kw = dict(delta_softplus=True, initial_state=h0, return_final_state=True, reverse=reverse)
                o1, f1 = selective_scan_naive(*ts[:8], **kw)
                o2, f2 = selective_scan_triton(*ts[:8], **kw)
                so, sf = torch.randn_like(o1, dtype=torch.float32), torch.randn_like(f1)
                g1 = torch.autograd.grad((o1.float() * so).sum() + (f1 * sf).sum(), ts)
                g2 = torch.autograd.grad((o2.float() * so).sum() + (f2 * sf).sum(), ts)
                tol = 1e-4 if dtype == torch.float32 else 3e-2
                name = f"{str(dtype)[6:]} reverse={reverse} grouped={grouped} kernels={cfg or 'default'}"
                errs = [rel(o2, o1), rel(f2, f1)] + [rel(x, y) for x, y in zip(g2, g1)]
                out.append(f"| {name} | {check(name, max(errs), tol)} |")
    return out


def parity_bidir_cross_conv():
    b, d, l = BIDIR_PAR
    ts = make(b, d, l)
    u, delta, A, B, C, D, z, db = ts
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)
    got = bidirectional_scan_triton(u, delta, A, B, C, D, z, db, True, "add")
    gg = torch.autograd.grad((got * seed).sum(), ts)
    if selective_scan_fn is not None:
        ref = anchor(ts) + anchor([u.flip(-1), delta.flip(-1), A, B.flip(-1), C.flip(-1), D, z.flip(-1), db]).flip(-1)
    else:
        ref = ours(ts) + ours(ts, reverse=True)
    gr = torch.autograd.grad((ref * seed).sum(), ts)
    err = max([rel(got, ref)] + [rel(x, y) for x, y in zip(gg, gr)])
    log(f"| bidirectional (fused) vs two anchor passes with flips, b=2 d=256 l=4096 | {check('bidir', err, 5e-2)} |")
    # cross-scan
    bb, c, h, w, n = CROSS
    L = h * w
    g = torch.Generator(device=DEV).manual_seed(3)
    x = torch.randn(bb, c, h, w, device=DEV, generator=g).bfloat16().requires_grad_(True)
    dl = (0.5 * torch.randn(bb, 4, c, L, device=DEV, generator=g) - 1).bfloat16().requires_grad_(True)
    A = -torch.exp(torch.rand(4 * c, n, device=DEV, generator=g)).requires_grad_(True)
    Bx = torch.randn(bb, 4, n, L, device=DEV, generator=g).bfloat16().requires_grad_(True)
    Cx = torch.randn(bb, 4, n, L, device=DEV, generator=g).bfloat16().requires_grad_(True)
    Dx = torch.randn(4 * c, device=DEV, generator=g).requires_grad_(True)
    dbx = torch.randn(4 * c, device=DEV, generator=g).requires_grad_(True)
    leaves = [x, dl, A, Bx, Cx, Dx, dbx]
    got = cross_selective_scan_triton(*leaves, True)
    backend = "mamba_ssm" if selective_scan_fn is not None else ("naive" if DRY else "triton")
    ref = cross_selective_scan_reference(*leaves, True, backend=backend)
    s = torch.randn_like(got)
    e = [rel(got, ref)] + [rel(p, q) for p, q in zip(torch.autograd.grad((got * s).sum(), leaves),
                                                     torch.autograd.grad((ref * s).sum(), leaves))]
    log(f"| cross-scan (fused, 4 routes) vs cross_scan + {backend} + cross_merge, b=2 c=96 28x28 | {check('cross', max(e), 5e-2)} |")
    # conv
    xc = torch.randn(*CONV, device=DEV).bfloat16().requires_grad_(True)
    wc = torch.randn(CONV[1], 4, device=DEV).requires_grad_(True)
    bc = torch.randn(CONV[1], device=DEV).requires_grad_(True)
    errs = []
    for reverse in (False, True):
        y1 = causal_conv1d_triton(xc, wc, bc, "silu", reverse)
        y2 = causal_conv1d_torch(xc, wc.bfloat16(), bc.bfloat16(), "silu", reverse)
        s = torch.randn_like(y1)
        errs.append(rel(y1, y2))
        for p, q in zip(torch.autograd.grad((y1 * s).sum(), [xc]), torch.autograd.grad((y2 * s).sum(), [xc])):
            errs.append(rel(p, q))
    log(f"| conv1d+SiLU (fwd/rev) vs torch conv1d, 4x1536x8192 | {check('conv', max(errs), 3e-2)} |")


# ----------------------------------------------------------------------------- timing
def floor_bytes(b, d, l, n=16, el=2):
    bdl, bnl = b * d * l, b * n * l
    fwd = el * (4 * bdl + 2 * bnl)  # u, delta, z, B, C in; out
    bwd = el * (7 * bdl + 4 * bnl)  # u, delta, z, B, C, dout in; du, ddelta, dz, dB, dC out
    return fwd, fwd + bwd


def sweep(ts, fwd_cfgs, bwd_cfgs, seed, run=None, label="sweep"):
    """Pick (BLOCK_D, BLOCK_L, warps) of the row-layout kernels: the forward alone, then the backward
    (fwd+bwd timed) with the best forward. ``run()`` is the forward timed (default: our plain scan on ts)."""
    run = run or (lambda: ours(ts))
    res_f = {}
    with torch.no_grad():
        for cfg in fwd_cfgs:
            set_rows_config(fwd=cfg, bwd=cfg)
            try:
                res_f[cfg] = bench(run, rep=60)
            except Exception as exc:  # noqa: BLE001  (a config can run out of registers/shared memory)
                res_f[cfg] = float("inf")
                print(f"{label}: fwd config failed", cfg, type(exc).__name__, str(exc)[:200])
    best_f = min(res_f, key=res_f.get)
    res_b = {}
    for cfg in bwd_cfgs:
        set_rows_config(fwd=best_f, bwd=cfg)
        try:
            res_b[cfg] = bench(lambda: run().backward(seed), grad_to_none=ts, rep=60)
        except Exception as exc:  # noqa: BLE001
            res_b[cfg] = float("inf")
            print(f"{label}: bwd config failed", cfg, type(exc).__name__, str(exc)[:200])
    best_b = min(res_b, key=res_b.get)
    log(f"  {label} fwd {dict((k, round(v, 3)) for k, v in res_f.items())}")
    log(f"  {label} fwd+bwd (fwd {best_f}) {dict((k, round(v, 3)) for k, v in res_b.items())}")
    return best_f, best_b

# (BLOCK_D, BLOCK_L, num_warps): about 2-16 steps per thread (mamba-ssm's kNItems is 16 with 128 threads)
FWD_CFGS = [(1, 1024, 4), (1, 512, 2), (1, 2048, 8)]
BWD_CFGS = [(1, 1024, 4), (1, 512, 4), (1, 1024, 8)]
if DRY:
    FWD_CFGS, BWD_CFGS = [(1, 16, 4), (2, 8, 4)], [(1, 16, 4), (2, 16, 4)]


def time_shape(shape, bw):
    b, d, l = shape
    ts = make(b, d, l)
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)
    best_f, best_b = sweep(ts, FWD_CFGS, BWD_CFGS, seed)
    del ts
    set_rows_config(fwd=best_f, bwd=best_b)
    LATE.append((shape, f" (swept best {best_f} / {best_b})"))  # the winners are checked at full size too
    ts = make(b, d, l)
    set_rows_config(fwd=best_f, bwd=best_f)
    with torch.no_grad():
        t_of = bench(lambda: ours(ts))
        t_af = bench(lambda: anchor(ts)) if selective_scan_fn else float("nan")
    set_rows_config(fwd=best_f, bwd=best_b)
    t_ofb = bench(lambda: ours(ts).backward(seed), grad_to_none=ts)
    t_afb = bench(lambda: anchor(ts).backward(seed), grad_to_none=ts) if selective_scan_fn else float("nan")
    fb, fbb = floor_bytes(b, d, l)
    fl_f, fl_fb = fb / bw * 1e3, fbb / bw * 1e3
    log(f"| B={b} D={d} L={l} | fwd | {t_of:.3f} | {t_af:.3f} | {t_of / t_af:.2f} | {fl_f:.3f} | {t_of / fl_f:.1f}x | {best_f} |")
    log(f"| B={b} D={d} L={l} | fwd+bwd | {t_ofb:.3f} | {t_afb:.3f} | {t_ofb / t_afb:.2f} | {fl_fb:.3f} | {t_ofb / fl_fb:.1f}x | {best_b} |")
    del ts
    torch.cuda.empty_cache()
    return best_f, best_b


def time_bidir(bw, cfg):
    b, d, l = BIDIR_T
    set_rows_config(fwd=cfg[0], bwd=cfg[1])
    ts = make(b, d, l)
    u, delta, A, B, C, D, z, db = ts
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)

    def fused():
        return bidirectional_scan_triton(u, delta, A, B, C, D, z, db, True, "add")

    def two_ours():  # what `auto` runs: two plain row-layout passes, the second reversed by index (no flips)
        return (selective_scan_triton(u, delta, A, B, C, D, z, db, True)
                + selective_scan_triton(u, delta, A, B, C, D, z, db, True, reverse=True))

    def pair():
        f = selective_scan_fn(u, delta, A, B, C, D, z, db, True)
        r = selective_scan_fn(u.flip(-1), delta.flip(-1), A, B.flip(-1), C.flip(-1), D, z.flip(-1), db, True)
        return f + r.flip(-1)

    with torch.no_grad():
        t2 = bench(two_ours)
    t2b = bench(lambda: two_ours().backward(seed), grad_to_none=ts)
    with torch.no_grad():
        tf = bench(fused)
        tp = bench(pair) if selective_scan_fn else float("nan")
    tfb = bench(lambda: fused().backward(seed), grad_to_none=ts)
    tpb = bench(lambda: pair().backward(seed), grad_to_none=ts) if selective_scan_fn else float("nan")
    fb, fbb = floor_bytes(b, d, l)
    log(f"| bidirectional scan op B={b} D={d} L={l} | fwd | {tf:.3f} | {t2:.3f} | {tp:.3f} | {tf / tp:.2f} | {t2 / tp:.2f} | {fb / bw * 1e3:.3f} |")
    log(f"| bidirectional scan op B={b} D={d} L={l} | fwd+bwd | {tfb:.3f} | {t2b:.3f} | {tpb:.3f} | {tfb / tpb:.2f} | {t2b / tpb:.2f} | {(fbb + 2 * b * d * l * 2) / bw * 1e3:.3f} |")
    del ts
    torch.cuda.empty_cache()
    # the block: our BidirectionalMamba (fused conv + fused bidirectional scan) vs two mamba-ssm Mamba blocks
    try:
        from mambaverse.mixers import BidirectionalMamba
    except Exception as exc:  # noqa: BLE001
        log(f"(BidirectionalMamba unavailable: {exc})")
        return
    torch.manual_seed(0)
    dm, Lb = BLOCK
    hidden = torch.randn(4, Lb, dm, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    gseed = torch.randn_like(hidden)
    blk = BidirectionalMamba(dm, variant="caduceus", strategy="add", tie_projections=True).to(DEV, torch.bfloat16)
    params = list(blk.parameters()) + [hidden]
    t_ours = bench(lambda: blk(hidden).backward(gseed), grad_to_none=params, rep=300)
    if selective_scan_fn is None:
        log(f"| BidirectionalMamba block d_model={dm} B=4 L={Lb} | fwd+bwd | {t_ours:.3f} | n/a | | |")
        return
    from mamba_ssm.modules.mamba_simple import Mamba as MambaSSM
    f = MambaSSM(dm, use_fast_path=False).to(DEV, torch.bfloat16)
    r = MambaSSM(dm, use_fast_path=False).to(DEV, torch.bfloat16)
    aparams = list(f.parameters()) + list(r.parameters()) + [hidden]
    t_anchor = bench(lambda: (f(hidden) + r(hidden.flip(1)).flip(1)).backward(gseed), grad_to_none=aparams, rep=300)
    log(f"| BidirectionalMamba block d_model={dm} B=4 L={Lb} (ours: fused conv + fused bidir scan; anchor: 2 mamba-ssm Mamba(use_fast_path=False), flips) | fwd+bwd | {t_ours:.3f} | {t_anchor:.3f} | {t_ours / t_anchor:.2f} | |")


def diagnose():
    """Where the backward's time goes at B=4 D=1536 L=8192: striped vs per-thread dB/dC atomics, and
    without the atomics at all (wrong dB/dC: timing only)."""
    b, d, l = (1, 8, 64) if DRY else (4, 1536, 8192)
    ts = make(b, d, l)
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)
    log("| bwd config | striped atomics | per-thread atomics | no atomics (diagnosis) |")
    log("|---|---|---|---|")
    for cfg in ([(1, 16, 4)] if DRY else [(1, 512, 4), (1, 256, 2), (1, 512, 2), (1, 1024, 4), (1, 128, 1), (1, 256, 1)]):
        row = []
        for striped, atomics in ((True, True), (False, True), (True, False)):
            set_rows_config(fwd=(1, min(1024, cfg[1]), 4), bwd=cfg, striped=striped, atomics=atomics)
            row.append(bench(lambda: ours(ts).backward(seed), grad_to_none=ts, rep=60))
        log(f"| {cfg} | " + " | ".join(f"{t:.3f}" for t in row) + " |")
    set_rows_config(striped=True, atomics=True)
    with torch.no_grad():
        set_rows_config(fwd=(1, 1024, 4))
        log(f"forward alone (1, 1024, 4): {bench(lambda: ours(ts)):.3f} ms")
    del ts


# ----------------------------------------------------------------------------- --fused: bidirectional, cross
FUSED_SHAPES = [(1, 2, 37)] if DRY else [(4, 1536, 8192), (1, 512, 1 << 20), (16, 2048, 2048)]
# VMamba-like cross-scan calls: stage 1 (d_inner 192 at 56x56) and stage 3 (d_inner 768 at 14x14), batch 32
CROSS_SHAPES = [(1, 2, 3, 5)] if DRY else [(32, 192, 56, 56), (32, 768, 14, 14)]
FUSED_OPT = (1, 2, 13, 2) if DRY else (2, 64, 300, 16)
# (BLOCK_D, BLOCK_L, num_warps) of the row kernels when they run 2 or 4 directions per program
FUSED_FWD_CFGS = [(1, 8, 4)] if DRY else [(1, 1024, 4), (1, 512, 2), (1, 2048, 8)]
FUSED_BWD_CFGS = [(1, 8, 4)] if DRY else [(1, 1024, 4), (1, 512, 4), (1, 1024, 8)]
DEFAULT_CFG = ((1, 16, 4), (1, 16, 4)) if DRY else ((1, 1024, 4), (1, 1024, 4))


def _flip(t):
    return None if t is None else t.flip(-1)


def bidir_paths(ts):
    """The bidirectional op (combine='add') three ways: fused, two of our passes, mamba-ssm's pair + flips."""
    u, delta, A, B, C, D, z, db = ts

    def fused():
        return bidirectional_scan_triton(u, delta, A, B, C, D, z, db, True, "add")

    def two_ours():  # our plain row kernel twice, the second reversed by index (no flips), then an add
        return (selective_scan_triton(u, delta, A, B, C, D, z, db, True)
                + selective_scan_triton(u, delta, A, B, C, D, z, db, True, reverse=True))

    def pair():
        f = selective_scan_fn(u, delta, A, B, C, D, z, db, True)
        r = selective_scan_fn(_flip(u), _flip(delta), A, _flip(B), _flip(C), D, _flip(z), db, True)
        return f + r.flip(-1)

    return fused, two_ours, (pair if selective_scan_fn is not None else None)


def _errs(fn, ref_fn, leaves, seed):
    got = fn()
    gg = torch.autograd.grad((got.float() * seed).sum(), leaves)
    want = ref_fn()
    gw = torch.autograd.grad((want.float() * seed).sum(), leaves)
    return [rel(got, want)] + [rel(a, b) for a, b in zip(gg, gw)]


def parity_fused_options():
    """Reduced size, on the device, against the naive fp32 oracle: every combine, shared and per-direction
    parameters (grouped C on one side), fp32 and bf16; and the cross-scan (odd image) against naive."""
    b, d, l, n = FUSED_OPT
    log("| fused op vs naive (b=%d d=%d l=%d n=%d, D z delta_bias softplus) | max rel err (out, all grads) |" % (b, d, l, n))
    log("|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for combine in ("add", "multiply", "stack"):
            for per_dir in (False, True):
                g = torch.Generator(device=DEV).manual_seed(11)
                r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
                u, z = r(b, d, l).to(dtype), r(b, d, l).to(dtype)
                dl1, dl2 = (0.5 * r(b, d, l)).to(dtype), (0.5 * r(b, d, l)).to(dtype)
                A1, A2 = -(torch.rand(d, n, device=DEV, generator=g) + 0.3), -(torch.rand(d, n, device=DEV, generator=g) + 0.3)
                B1, B2 = r(b, n, l).to(dtype), r(b, n, l).to(dtype)
                C1, C2 = r(b, 2, n, l).to(dtype), r(b, 2, n, l).to(dtype)
                D1, D2, db1, db2 = r(d), r(d), 0.3 * r(d), 0.3 * r(d)
                if per_dir:
                    leaves = [u, dl1, dl2, A1, A2, B1, B2, C1, C2, D1, D2, z, db1, db2]
                    args = (u, (dl1, dl2), (A1, A2), (B1, B2), (C1, C2), (D1, D2), z, (db1, db2))
                else:
                    leaves = [u, dl1, A1, B1, C1, D1, z, db1]
                    args = (u, dl1, A1, B1, C1, D1, z, db1)
                for t in leaves:
                    t.requires_grad_(True)
                seed = torch.randn((2, b, d, l) if combine == "stack" else (b, d, l), device=DEV)
                errs = _errs(lambda: bidirectional_scan_triton(*args, True, combine),
                             lambda: bidirectional_scan_reference(*args, delta_softplus=True, combine=combine,
                                                                  backend="naive"), leaves, seed)
                tol = 1e-4 if dtype == torch.float32 else 3e-2
                name = f"bidirectional {str(dtype)[6:]} combine={combine} per-direction={per_dir}"
                log(f"| {name} | {check(name, max(errs), tol)} |")
    for dtype in (torch.float32, torch.bfloat16):
        leaves = cross_inputs(1, 2, 3, 5, 2, dtype) if DRY else cross_inputs(2, 4, 5, 7, 4, dtype)
        seed = torch.randn(leaves[0].shape, device=DEV)
        errs = _errs(lambda: cross_selective_scan_triton(*leaves, True),
                     lambda: cross_selective_scan_reference(*leaves, True, backend="naive"), leaves, seed)
        name = f"cross-scan {str(dtype)[6:]} x {tuple(leaves[0].shape)}"
        log(f"| {name} | {check(name, max(errs), 1e-4 if dtype == torch.float32 else 3e-2)} |")


def cross_inputs(bb, c, h, w, n, dtype=torch.bfloat16, seed=3):
    L = h * w
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(bb, c, h, w, device=DEV, generator=g).to(dtype)
    dl = (0.5 * torch.randn(bb, 4, c, L, device=DEV, generator=g) - 1).to(dtype)
    A = -torch.exp(torch.rand(4 * c, n, device=DEV, generator=g))
    Bx = torch.randn(bb, 4, n, L, device=DEV, generator=g).to(dtype)
    Cx = torch.randn(bb, 4, n, L, device=DEV, generator=g).to(dtype)
    Dx = torch.randn(4 * c, device=DEV, generator=g)
    dbx = torch.randn(4 * c, device=DEV, generator=g)
    leaves = [x, dl, A, Bx, Cx, Dx, dbx]
    for t in leaves:
        t.requires_grad_(True)
    return leaves


def parity_fused_full(note="", shapes=None, cross=True):
    """Full size, bf16: the fused bidirectional scan against mamba-ssm's pair with flips and against two of
    our passes; our plain reverse pass against mamba-ssm on flipped inputs; the fused cross-scan against
    cross_scan + mamba-ssm (and + our plain kernel) + cross_merge."""
    log("| full size, bf16%s | vs | out | " % note + " | ".join("d" + nm for nm in NAMES) + " |")
    log("|---|---" + "|---" * (1 + len(NAMES)) + "|")
    for b, d, l in shapes or FUSED_SHAPES:
        ts = make(b, d, l)
        seed = torch.randn(b, d, l, device=DEV)
        fused, two_ours, pair = bidir_paths(ts)
        refs = [("two of our passes", two_ours)] + ([("mamba-ssm pair + flips", pair)] if pair else [])
        for what, ref in refs:
            e = _errs(fused, ref, ts, seed)
            name = f"bidir B={b} D={d} L={l} vs {what}"
            log(f"| fused bidirectional B={b} D={d} L={l} | {what} | " + " | ".join(
                check(f"{name} {k}", v, 2e-2 if k == 'out' else 5e-2) for k, v in zip(["out"] + NAMES, e)) + " |")
        if pair and (b, d, l) == FUSED_SHAPES[0]:
            u, delta, A, B, C, D, z, db = ts
            e = _errs(lambda: ours(ts, reverse=True),
                      lambda: selective_scan_fn(_flip(u), _flip(delta), A, _flip(B), _flip(C), D, _flip(z), db,
                                                True).flip(-1), ts, seed)
            name = f"reverse pass B={b} D={d} L={l}"
            log(f"| our plain reverse pass B={b} D={d} L={l} | mamba-ssm on flipped inputs | " + " | ".join(
                check(f"{name} {k}", v, 2e-2 if k == 'out' else 5e-2) for k, v in zip(["out"] + NAMES, e)) + " |")
        del ts
        torch.cuda.empty_cache()
    for bb, c, h, w in CROSS_SHAPES if cross else ():
        leaves = cross_inputs(bb, c, h, w, 16)
        seed = torch.randn(bb, c, h, w, device=DEV)
        backends = ["triton"] + (["mamba_ssm"] if selective_scan_fn is not None else [])
        for backend in backends:
            e = _errs(lambda: cross_selective_scan_triton(*leaves, True),
                      lambda: cross_selective_scan_reference(*leaves, True, backend=backend), leaves, seed)
            name = f"cross B={bb} C={c} {h}x{w} vs {backend}"
            log(f"| fused cross-scan B={bb} C={c} {h}x{w} | cross_scan + {backend} + cross_merge | " + " | ".join(
                check(f"{name} {k}", v, 2e-2 if k == 'out' else 5e-2)
                for k, v in zip("out x delta A B C D delta_bias".split(), e)) + " |")
        del leaves
        torch.cuda.empty_cache()


def _bench_pair(fwd, ts, seed, cfg, rep):
    """(fwd ms, fwd+bwd ms) of fn() under row-kernel config cfg ((fwd), (bwd))."""
    set_rows_config(fwd=cfg[0], bwd=cfg[1])
    with torch.no_grad():
        tf = bench(fwd, rep=rep)
    tfb = bench(lambda: fwd().backward(seed), grad_to_none=ts, rep=rep)
    return tf, tfb


def sweep_fused(shape):
    """The fused bidirectional kernel's (BLOCK_D, BLOCK_L, warps): forward alone, then fwd+bwd with the best
    forward. Returns ((fwd cfg), (bwd cfg))."""
    b, d, l = shape
    ts = make(b, d, l)
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)
    fused = bidir_paths(ts)[0]
    best = sweep(ts, FUSED_FWD_CFGS, FUSED_BWD_CFGS, seed, run=fused, label=f"fused sweep B={b} D={d} L={l}")
    del ts
    torch.cuda.empty_cache()
    return best


def time_fused(shape, bw, cfg):
    """One row pair of the bidirectional table: fused (config cfg) vs two of our passes and mamba-ssm's pair,
    plus one plain forward and one plain reverse pass of ours (default config) for scale."""
    b, d, l = shape
    ts = make(b, d, l)
    seed = torch.randn(b, d, l, device=DEV, dtype=torch.bfloat16)
    fused, two_ours, pair = bidir_paths(ts)
    rep = 1000 if l >= (1 << 20) else 200  # a few samples even at ~0.2 s per call
    tf = _bench_pair(fused, ts, seed, cfg, rep)
    t2 = _bench_pair(two_ours, ts, seed, DEFAULT_CFG, rep)
    t1 = _bench_pair(lambda: ours(ts), ts, seed, DEFAULT_CFG, rep)
    tr = _bench_pair(lambda: ours(ts, reverse=True), ts, seed, DEFAULT_CFG, rep)
    tp = _bench_pair(pair, ts, seed, DEFAULT_CFG, rep) if pair else (float("nan"), float("nan"))
    fb, fbb = floor_bytes(b, d, l)
    for i, name in enumerate(("fwd", "fwd+bwd")):
        floor = (fb if i == 0 else fbb + 2 * b * d * l * 2) / bw * 1e3
        log(f"| B={b} D={d} L={l} | {name} | {tf[i]:.3f} | {t2[i]:.3f} | {tp[i]:.3f} | {tf[i] / t2[i]:.2f} | "
            f"{tf[i] / tp[i]:.2f} | {t1[i]:.3f} | {tr[i]:.3f} | {floor:.3f} | {cfg[i]} |")
    del ts
    torch.cuda.empty_cache()
    return tf, t2, tp


def time_cross(shape, cfg):
    bb, c, h, w = shape
    leaves = cross_inputs(bb, c, h, w, 16)
    seed = torch.randn(bb, c, h, w, device=DEV, dtype=torch.bfloat16)
    paths = [("fused", lambda: cross_selective_scan_triton(*leaves, True), cfg),
             ("unfused, our kernel", lambda: cross_selective_scan_reference(*leaves, True, backend="triton"), DEFAULT_CFG)]
    if selective_scan_fn is not None:
        paths.append(("unfused, mamba-ssm", lambda: cross_selective_scan_reference(*leaves, True, backend="mamba_ssm"),
                      DEFAULT_CFG))
    if DRY:
        paths[1] = ("unfused, naive", lambda: cross_selective_scan_reference(*leaves, True, backend="naive"), DEFAULT_CFG)
    res = [(name, _bench_pair(fn, leaves, seed, cf, 200)) for name, fn, cf in paths]
    t0 = res[0][1]
    log(f"| B={bb} C={c} {h}x{w} | " + " | ".join(f"{name}: {t[0]:.3f} / {t[1]:.3f}" for name, t in res)
        + " | " + " | ".join(f"{t0[0] / t[0]:.2f} / {t0[1] / t[1]:.2f}" for _, t in res[1:]) + " |")
    del leaves
    torch.cuda.empty_cache()


def run_fused(bw, t0, skip_parity, budget):
    """The --fused section; the config sweep (and its parity) run only while the elapsed time is under
    ``budget`` seconds, after every mandatory row is in the table."""
    log(f"- auto's order on this device: bidirectional_scan {backends_for('bidirectional_scan', DEV)}, "
        f"cross_selective_scan {backends_for('cross_selective_scan', DEV)}")
    if not skip_parity:
        log("")
        log("## Parity first (relative error norms ||ours - ref|| / ||ref||)")
        log("")
        parity_fused_options()
        log("")
        parity_fused_full()
        log("")
        log(f"parity failures: {FAILS if FAILS else 'none'}  ({time.time() - t0:.0f} s)")
    log("")
    log("## Timings (ms, median of CUDA-event timings; bf16; z, D, delta_bias, softplus; combine='add')")
    log("")
    header = ("| bidirectional | pass | fused (ours) | two of our passes | mamba-ssm pair + flips | fused / two ours | "
              "fused / mamba-ssm pair | our plain pass | our plain reverse pass | HBM floor | fused config |")
    log(header)
    log("|---|---|---|---|---|---|---|---|---|---|---|")
    verdict = []
    for shape in FUSED_SHAPES:
        tf, t2, tp = time_fused(shape, bw, DEFAULT_CFG)
        order = sorted([("triton (fused)", tf[1]), ("scan (two of ours)", t2[1]), ("mamba_ssm (pair)", tp[1])],
                       key=lambda kv: kv[1] if kv[1] == kv[1] else float("inf"))
        verdict.append(f"B={shape[0]} D={shape[1]} L={shape[2]}: " + " < ".join(f"{k} {v:.2f}" for k, v in order))
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    log("")
    log("fastest fwd+bwd first (auto's order should match): " + "; ".join(verdict))
    log("")
    log("| cross-scan, 4 routes | fwd / fwd+bwd ms, each path | fused / unfused (fwd / fwd+bwd) |")
    log("|---|---|---|")
    for shape in CROSS_SHAPES:
        time_cross(shape, DEFAULT_CFG)
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    if time.time() - t0 < budget:
        log("")
        log(f"## Config sweep of the fused kernel at B={FUSED_SHAPES[0][0]} D={FUSED_SHAPES[0][1]} L={FUSED_SHAPES[0][2]}")
        log("")
        cfg = sweep_fused(FUSED_SHAPES[0])
        if cfg != DEFAULT_CFG:
            log("")
            log(header)
            log("|---|---|---|---|---|---|---|---|---|---|---|")
            time_fused(FUSED_SHAPES[0], bw, cfg)
            if not skip_parity:
                log("")
                set_rows_config(fwd=cfg[0], bwd=cfg[1])
                parity_fused_full(note=f", swept fused config {cfg}", shapes=FUSED_SHAPES[:1], cross=False)
    else:
        log("")
        log(f"(config sweep skipped: {time.time() - t0:.0f} s elapsed, budget {budget} s)")
    set_rows_config(fwd=DEFAULT_CFG[0], bwd=DEFAULT_CFG[1])
    log("")
    log(f"parity failures (all): {FAILS if FAILS else 'none'}")
    log(f"(total {time.time() - t0:.0f} s)")


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    del x, y
    return 2 * (1 << 30) / (t * 1e-3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/kernels_h100.md")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--diag", action="store_true", help="only the backward diagnosis table")
    ap.add_argument("--fused", action="store_true", help="only the fused bidirectional / cross-scan section")
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes (tests the script)")
    ap.add_argument("--budget", type=float, default=300.0,
                    help="--fused: seconds after which the optional config sweep is skipped")
    args = ap.parse_args()
    global OUT_PATH
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    OUT_PATH = args.out
    t0 = T0
    if DRY:
        class props:  # noqa: N801
            name, multi_processor_count = "cpu (dry run)", 0
        bw = 1e11
    else:
        props = torch.cuda.get_device_properties(0)
        bw = copy_bandwidth()
    log("# Triton selective-scan kernels vs mamba-ssm")
    log("")
    log(f"- device: {props.name} ({props.multi_processor_count} SMs), measured copy bandwidth {bw / 1e12:.2f} TB/s")
    log(f"- torch {torch.__version__}, triton {triton.__version__}, mamba-ssm {MAMBA_VERSION}, python {sys.version.split()[0]}")
    log(f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; produced by benchmarks/kernels.py in one run")
    log("- bf16 inputs, fp32 state; B, C shared (b, n, l); z and delta_bias given; softplus; N=16")
    if args.diag:
        diagnose()
        return
    if args.fused:
        run_fused(bw, t0, args.skip_parity, args.budget)
        return
    shapes = [(4, 1536, 8192), (1, 512, 1 << 20), (16, 2048, 2048)]
    if DRY:
        shapes = [(1, 8, 40), (1, 4, 64)]
    if not args.skip_parity:
        log("")
        log("## Parity first (relative error norms ||ours - ref|| / ||ref||)")
        log("")
        log("| shape (ours vs mamba-ssm, bf16) | out | final state | " + " | ".join("d" + n for n in NAMES) + " |")
        log("|---" * (3 + len(NAMES)) + "|")
        for s in shapes:
            parity_full(s)
            print(f"[{time.time() - t0:.0f} s]", flush=True)
        log("")
        parity_long_state_carry()
        log("")
        parity_options()
        log("")
        log("| fused ops | max rel err (out and grads) |")
        log("|---|---|")
        parity_bidir_cross_conv()
        log("")
        log(f"parity failures: {FAILS if FAILS else 'none'}  ({time.time() - t0:.0f} s)")
    log("")
    log("## Timings (ms, median of CUDA-event timings)")
    log("")
    log("| shape | pass | ours | mamba-ssm | ratio ours/anchor | HBM floor | ours/floor | config (BLOCK_D, BLOCK_L, warps) |")
    log("|---|---|---|---|---|---|---|---|")
    cfgs = {}
    for s in shapes:
        cfgs[s] = time_shape(s, bw)
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    log("")
    log("| bidirectional | pass | fused ours (row kernel) | two of our passes | anchor pair (+flips) | fused/anchor | two passes/anchor | HBM floor |")
    log("|---|---|---|---|---|---|---|---|")
    time_bidir(bw, cfgs[shapes[0]])
    log("")
    log("## Parity of the swept winners at full size (ours vs mamba-ssm, bf16)")
    log("")
    log("| shape (configs) | out | final state | " + " | ".join("d" + n for n in NAMES) + " |")
    log("|---" * (3 + len(NAMES)) + "|")
    for shape, note in LATE:
        set_rows_config(*cfgs[shape])
        parity_full(shape, note)
    log(f"parity failures (all): {FAILS if FAILS else 'none'}")
    log("")
    log(f"(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
