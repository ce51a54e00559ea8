"""GPU parity of every op backend, under every option it declares, against the naive oracle; then `auto`
split into chunks against one call (values and gradients, the gradient through the carried state
included); then probes of what mamba-ssm's own kernels really do with a final state's gradient.

    python benchmarks/gpu_parity.py --out benchmarks/results/gpu_parity_<tag>.md

Run it with mamba-ssm importable and without (e.g. PYTHONPATH with and without the anchor wheel): the
capability table (mambaverse/ops/dispatch.py) must keep `auto` exact either way. Also times the fused
bidirectional and cross-scan kernels against their unfused paths, which sets their place in auto's order.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys

import torch

from mambaverse.ops import bidirectional_scan, causal_conv1d, cross_selective_scan, selective_scan, ssd_scan
from mambaverse.ops.dispatch import TABLE, backends_for

DEV = "cuda"
SMOKE = False  # --smoke: tiny sizes on CPU (Triton in its interpreter), to check the script itself
LINES: list[str] = []


def log(line=""):
    print(line, flush=True)
    LINES.append(line)


def rel(a, b):
    if a is None or b is None:
        return float("nan") if (a is None) != (b is None) else 0.0
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def grads_of(fn, inputs, seed=1):
    """Outputs and gradients of <out, w> (+ <final state, w'>): gradient arrives through both."""
    xs = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    res = fn(*xs)
    outs = list(res) if isinstance(res, tuple) else [res]
    g = torch.Generator(device=DEV).manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, device=DEV, dtype=torch.float64)).sum() for o in outs)
    live = [x for x in xs if x is not None]
    grads = torch.autograd.grad(loss, live, allow_unused=True)
    return outs, list(grads)


def compare(name, fn_a, fn_b, inputs, tol):
    oa, ga = grads_of(fn_a, inputs)
    ob, gb = grads_of(fn_b, inputs)
    out_err = max(rel(a, b) for a, b in zip(oa, ob))
    grad_err = max((rel(a, b) for a, b in zip(ga, gb)), default=0.0)
    ok = out_err <= tol and grad_err <= 10 * tol
    log(f"| {name} | {out_err:.1e} | {grad_err:.1e} | {'ok' if ok else 'FAIL'} |")
    return ok


def scan_inputs(dtype, form, b=2, d=128, l=1031, n=16):
    if SMOKE:
        d, l, n = 4, min(l, 30), 4
    g = torch.Generator(device=DEV).manual_seed(0)

    def r(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=DEV) * scale).to(dt)

    shape = {"shared": (b, n, l), "grouped": (b, 2, n, l), "invariant": (d, n)}[form]
    A = -torch.rand(d, n, generator=g, device=DEV) - 0.1
    return [r(b, d, l), r(b, d, l, scale=0.5), A, r(*shape), r(*shape), r(d, dt=torch.float32), r(b, d, l),
            r(d, scale=0.1, dt=torch.float32), r(b, d, n, dt=torch.float32)]


def backend_matrix(results):
    log("## Every backend, every declared option, against naive (fp32 inputs; bf16 for speed backends)")
    log("")
    log("| op / backend / options | out rel err | grad rel err | |")
    log("|---|---|---|---|")
    for backend in backends_for("selective_scan", DEV):
        row = TABLE["selective_scan"][backend]
        for form, initial, final, reverse in itertools.product(["shared", "grouped", "invariant"], [False, True],
                                                               [False, True], [False, True]):
            needs = ({"initial_state"} if initial else set()) | ({"final_state", "final_state_grad"} if final else set())
            needs |= ({"reverse"} if reverse else set()) | {"grouped": {"grouped"}, "invariant": {"time_invariant"}}.get(form, set())
            if not needs <= row.features or backend == "naive":
                continue
            inputs = scan_inputs(torch.float32, form)
            if not initial:
                inputs[8] = None

            def run(be, *a, f=final, rv=reverse):
                return selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True,
                                      initial_state=a[8], return_final_state=f, reverse=rv, backend=be)

            results.append(compare(f"scan {backend} {form} h0={initial} final={final} reverse={reverse}",
                                   lambda *a: run(backend, *a), lambda *a: run("naive", *a), inputs, 2e-5))
    for backend in backends_for("causal_conv1d", DEV):
        row = TABLE["causal_conv1d"][backend]
        for reverse, initial, final in itertools.product([False, True], repeat=3):
            needs = ({"reverse"} if reverse else set()) | ({"initial_state"} if initial else set())
            needs |= {"final_state", "final_state_grad"} if final else set()
            if not needs <= row.features:
                continue
            g = torch.Generator(device=DEV).manual_seed(1)
            x = torch.randn(2, 128, 1031, generator=g, device=DEV)
            w, bias = torch.randn(128, 4, generator=g, device=DEV), torch.randn(128, generator=g, device=DEV)
            s0 = torch.randn(2, 128, 3, generator=g, device=DEV) if initial else None

            def conv(be, x, w, bias, s0, rv=reverse, f=final):
                return causal_conv1d(x, w, bias, "silu", reverse=rv, initial_state=s0, return_final_state=f, backend=be)

            results.append(compare(f"conv {backend} reverse={reverse} h0={initial} final={final}",
                                   lambda *a: conv(backend, *a), lambda *a: conv("torch", *a), [x, w, bias, s0], 1e-5))
    for backend in backends_for("ssd_scan", DEV):
        row = TABLE["ssd_scan"][backend]
        if backend == "naive":
            continue
        for initial, final in itertools.product([False, True], repeat=2):
            needs = ({"initial_state"} if initial else set()) | ({"final_state", "final_state_grad"} if final else set())
            needs.add("grouped")
            if not needs <= row.features:
                continue
            # mamba-ssm's SSD kernels run fp32 matmuls in TF32: its rows get TF32's tolerance
            tol = 3e-3 if backend == "mamba_ssm" else 2e-4
            results.append(compare(f"ssd {backend} h0={initial} final={final}",
                                   lambda *a, f=final: ssd_scan(*a[:6], initial_state=a[6], return_final_state=f, backend=backend),
                                   lambda *a, f=final: ssd_scan(*a[:6], initial_state=a[6], return_final_state=f, backend="naive"),
                                   ssd_inputs(initial), tol))
    log("")


def ssd_inputs(initial, b=2, l=515, h=8, p=32, n=16):
    if SMOKE:
        l, h, p, n = min(l, 30), 2, 2, 4
    g = torch.Generator(device=DEV).manual_seed(2)
    return [torch.randn(b, l, h, p, generator=g, device=DEV),
            torch.rand(b, l, h, generator=g, device=DEV) * 0.3 + 0.01,
            -torch.rand(h, generator=g, device=DEV) - 0.1,
            torch.randn(b, l, 2, n, generator=g, device=DEV), torch.randn(b, l, 2, n, generator=g, device=DEV),
            torch.randn(h, generator=g, device=DEV),
            torch.randn(b, h, p, n, generator=g, device=DEV) if initial else None]


def auto_chunked(results):
    """auto, one call vs the same sequence in three calls carrying the state (gradient through it)."""
    log("## auto: one call vs three chunks carrying the state (the chunked-training path)")
    log("")
    log("| op / dtype | out rel err | grad rel err | |")
    log("|---|---|---|---|")
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-5)):
        inputs = scan_inputs(dtype, "shared", l=3000)
        inputs[8] = None
        L = inputs[0].shape[-1]

        def whole(*a):
            return selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True, return_final_state=True)

        def pieces(*a):
            h, ys = None, []
            for s in (slice(0, L // 3), slice(L // 3, 2 * L // 3), slice(2 * L // 3, L)):
                y, h = selective_scan(a[0][..., s], a[1][..., s], a[2], a[3][..., s], a[4][..., s], D=a[5],
                                      z=a[6][..., s], delta_bias=a[7], delta_softplus=True, initial_state=h,
                                      return_final_state=True)
                ys.append(y)
            return torch.cat(ys, -1), h

        # bf16 outputs round differently per call only at the last bit; compare in the state's precision
        results.append(compare(f"scan auto {str(dtype)[6:]}", pieces, whole, inputs, 1e-2 if dtype == torch.bfloat16 else tol))
    g = torch.Generator(device=DEV).manual_seed(3)
    L = 30 if SMOKE else 3000
    x, w = torch.randn(2, 128, L, generator=g, device=DEV), torch.randn(128, 4, generator=g, device=DEV)

    def conv_pieces(x, w):
        s, ys = None, []
        for sl in (slice(0, L // 3), slice(L // 3, 2 * L // 3), slice(2 * L // 3, L)):
            y, s = causal_conv1d(x[..., sl], w, None, "silu", initial_state=s, return_final_state=True)
            ys.append(y)
        return torch.cat(ys, -1)

    results.append(compare("conv auto", conv_pieces, lambda x, w: causal_conv1d(x, w, None, "silu"), [x, w], 1e-5))
    xs, dt, A, B, C, D, _ = ssd_inputs(False, l=600)
    L = xs.shape[1]

    def ssd_pieces(*a):
        h, ys = None, []
        for sl in (slice(0, L // 3), slice(L // 3, 2 * L // 3), slice(2 * L // 3, L)):
            y, h = ssd_scan(a[0][:, sl], a[1][:, sl], a[2], a[3][:, sl], a[4][:, sl], a[5], initial_state=h,
                            return_final_state=True)
            ys.append(y)
        return torch.cat(ys, 1), h

    results.append(compare("ssd auto", ssd_pieces, lambda *a: ssd_scan(*a, return_final_state=True), [xs, dt, A, B, C, D],
                           3e-3 if backends_for("ssd_scan", DEV)[0] == "mamba_ssm" else 2e-4))
    log("")


def probes():
    """What mamba-ssm's kernels do with the gradient of a final state (called directly, past the table)."""
    log("## Probes of mamba-ssm's own kernels (called directly, not through auto)")
    log("")
    if "mamba_ssm" not in TABLE["selective_scan"] or not TABLE["selective_scan"]["mamba_ssm"].available(torch.device(DEV)):
        log("mamba-ssm not importable in this run: no probe.")
        log("")
        return
    inputs = scan_inputs(torch.float32, "shared")
    inputs[8] = None
    fn = TABLE["selective_scan"]["mamba_ssm"].fn
    naive = TABLE["selective_scan"]["naive"].fn
    final_only = [lambda *a, f=f: f(*a[:8], True, None, True)[1] for f in (fn, naive)]
    _, ga = grads_of(final_only[0], inputs)
    _, gb = grads_of(final_only[1], inputs)
    log(f"- selective_scan_fn: gradient through the final state alone, rel err vs naive: "
        f"{max(rel(a if a is not None else torch.zeros_like(b), b) for a, b in zip(ga, gb)):.2e} "
        f"(1.0 = no gradient flows: the table must not claim final_state_grad)")
    ssd = TABLE["ssd_scan"]["mamba_ssm"].fn
    ssd_naive = TABLE["ssd_scan"]["naive"].fn
    sin = ssd_inputs(True)
    _, ga = grads_of(lambda *a: ssd(*a[:6], a[6], True, 64)[1], sin)
    _, gb = grads_of(lambda *a: ssd_naive(*a[:6], a[6], True, 64)[1], sin)
    errs = [rel(a if a is not None else torch.zeros_like(b), b) for a, b in zip(ga, gb)]
    log(f"- mamba_chunk_scan_combined: gradient through the final state alone, max rel err vs naive: {max(errs):.2e}")
    log("")


def fp16_tolerance(results):
    """mamba-ssm's test_selective_scan case at its own tolerances, on our Triton kernel."""
    log("## Triton fp16 gradients at mamba-ssm's tolerances (u, delta, z (2, 4, 372) fp16; B, C (2, 1, 8, 372))")
    log("")
    g = torch.Generator(device=DEV).manual_seed(0)
    ok_all = True
    for seed in range(5):
        g.manual_seed(seed)
        b, d, l, n = 2, 4, 372, 8
        half = torch.float16
        leaves = [torch.randn(b, d, l, generator=g, device=DEV).to(half),
                  (0.5 * torch.rand(b, d, l, generator=g, device=DEV)).to(half),
                  -0.5 * torch.rand(d, n, generator=g, device=DEV),
                  torch.randn(b, 1, n, l, generator=g, device=DEV).to(half),
                  torch.randn(b, 1, n, l, generator=g, device=DEV).to(half),
                  torch.randn(d, generator=g, device=DEV), torch.randn(b, d, l, generator=g, device=DEV).to(half),
                  0.1 * torch.rand(d, generator=g, device=DEV)]
        ours = [t.clone().requires_grad_() for t in leaves]
        refs = [t.float().requires_grad_() for t in leaves]
        out = selective_scan(*ours[:7], ours[7], True, backend="triton")
        ref = selective_scan(*refs[:7], refs[7], True, backend="naive")
        seed_t = torch.randn(out.shape, generator=g, device=DEV).half().float()  # the same fp16 cotangent for both
        got = torch.autograd.grad((out.float() * seed_t).sum(), ours)
        want = torch.autograd.grad((ref * seed_t).sum(), refs)

        def within(a, b, rtol, atol):
            return bool(torch.all((a.float() - b).abs() <= atol + rtol * b.abs()))

        dA_ok, dz_ok = within(got[2], want[2], 1e-3, 5e-3), within(got[6], want[6], 1e-3, 1e-3)
        ok_all &= dA_ok and dz_ok
        log(f"- seed {seed}: dA within (1e-3, 5e-3): {dA_ok} (max abs {(got[2] - want[2]).abs().max().item():.1e}); "
            f"dz within (1e-3, 1e-3): {dz_ok} (max abs {(got[6].float() - want[6]).abs().max().item():.1e})")
    results.append(ok_all)
    log("")


def timing():
    """Fused kernels vs their unfused paths, same call: sets their place in auto's order."""
    log("## Fused vs unfused (bf16, forward+backward, median ms)")
    log("")

    def bench(fn, inputs, reps=20):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        for _ in range(3):
            fn(*xs).float().sum().backward()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*xs).float().sum().backward()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    b, d, l, n = 4, 1536, 8192, 16
    g = torch.Generator(device=DEV).manual_seed(0)
    bf = torch.bfloat16
    u = torch.randn(b, d, l, generator=g, device=DEV).to(bf)
    dl = (0.5 * torch.randn(b, d, l, generator=g, device=DEV)).to(bf)
    A = -torch.rand(d, n, generator=g, device=DEV) - 0.1
    B = torch.randn(b, n, l, generator=g, device=DEV).to(bf)
    C = torch.randn(b, n, l, generator=g, device=DEV).to(bf)
    log("| call | fused triton | unfused (two selective_scan passes, each auto) | auto |")
    log("|---|---|---|---|")
    fused = bench(lambda *a: bidirectional_scan(*a, delta_softplus=True, backend="triton"), [u, dl, A, B, C])
    unfused = bench(lambda *a: bidirectional_scan(*a, delta_softplus=True, backend="scan"), [u, dl, A, B, C])
    auto = bench(lambda *a: bidirectional_scan(*a, delta_softplus=True, backend="auto"), [u, dl, A, B, C])
    log(f"| bidirectional B={b} D={d} L={l} | {fused:.2f} | {unfused:.2f} | {auto:.2f} ({backends_for('bidirectional_scan', DEV)[0]}) |")
    for (bb, c, h, w) in ((64, 192, 56, 56), (8, 384, 28, 28)):
        x = torch.randn(bb, c, h, w, generator=g, device=DEV).to(bf)
        d4 = (0.5 * torch.randn(bb, 4, c, h * w, generator=g, device=DEV)).to(bf)
        A4 = -torch.rand(4 * c, n, generator=g, device=DEV) - 0.1
        B4 = torch.randn(bb, 4, n, h * w, generator=g, device=DEV).to(bf)
        C4 = torch.randn(bb, 4, n, h * w, generator=g, device=DEV).to(bf)
        fused = bench(lambda *a: cross_selective_scan(*a, backend="triton"), [x, d4, A4, B4, C4])
        unfused = bench(lambda *a: cross_selective_scan(*a, backend="scan"), [x, d4, A4, B4, C4])
        log(f"| cross-scan B={bb} C={c} {h}x{w} | {fused:.2f} | {unfused:.2f} | |")
    log("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET=1 (no timing)")
    args = ap.parse_args()
    global DEV, SMOKE
    if args.smoke:
        DEV, SMOKE, args.no_timing = "cpu", True, True
    try:
        import mamba_ssm
        ms = mamba_ssm.__version__
    except Exception:
        ms = "not installed"
    import triton
    log(f"# GPU parity: every backend and auto, values and gradients ({'with' if ms != 'not installed' else 'without'} mamba-ssm)")
    log("")
    log(f"- device: {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu (smoke)'}; torch {torch.__version__}, triton {triton.__version__}, "
        f"mamba-ssm {ms}, python {platform.python_version()}")
    log(f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; `python benchmarks/gpu_parity.py` "
        f"(args: {' '.join(sys.argv[1:])})")
    log(f"- auto's order on CUDA: selective_scan {backends_for('selective_scan', DEV)}, causal_conv1d "
        f"{backends_for('causal_conv1d', DEV)}, ssd_scan {backends_for('ssd_scan', DEV)}")
    log("")
    results: list[bool] = []
    backend_matrix(results)
    auto_chunked(results)
    fp16_tolerance(results)
    probes()
    if not args.no_timing:
        try:
            timing()
        except Exception as exc:  # a timing failure must not lose the parity table above
            log(f"timing failed: {type(exc).__name__}: {exc}")
            results.append(False)
    log(f"**{sum(results)}/{len(results)} checks pass.**")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(LINES) + "\n")
        os.replace(tmp, args.out)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
