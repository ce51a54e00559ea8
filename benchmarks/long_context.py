"""Long-context training memory and speed: 4 layers of d_model=256, forward+backward, batch 1.

Ours: CausalBackbone(d_model=256, n_layer=4, chunk_len=C) -- state-carrying chunks with exact gradients
(mambaverse.long_context), on whatever selective_scan backend `auto` picks (Triton on CUDA).
Anchor: mamba-ssm's plain stack, 4 x (h + Mamba(RMSNorm(h))) with Mamba(d_model=256, use_fast_path=False),
measured in the same run. Both: fp32 parameters under bf16 autocast, input (1, L, 256) bf16, loss out.sum().

    python benchmarks/long_context.py                     # single GPU sweep -> results/long_context_<gpu>.md
    torchrun --nproc_per_node 2 benchmarks/long_context.py --cp   # context-parallel scaling (2 GPUs)
    torchrun --nproc_per_node 2 benchmarks/long_context.py --cp --smoke --out /tmp/cp.md   # the same on CPU

Each L starts at 2^17 and goes 2^20, 2^22, 2^23, 2^24, ... until out of memory (or --budget-s runs out).
Before timing, a parity check at --parity-len: chunked == unchunked (outputs and gradients).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mambaverse  # noqa: E402

try:  # installed: kernels/ is mambaverse.kernels (package-dir); from a bare checkout, look for it in the repo
    import mambaverse.kernels  # noqa: F401
except ImportError:
    mambaverse.__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mambaverse.backbones import CausalBackbone  # noqa: E402
from mambaverse.mixers import RMSNorm  # noqa: E402

D_MODEL, N_LAYER = 256, 4
GiB = 1 << 30


class AnchorStack(nn.Module):
    """mamba-ssm's Mamba blocks in the same pre-norm residual stack as ours."""

    def __init__(self):
        super().__init__()
        from mamba_ssm import Mamba

        self.layers = nn.ModuleList(Mamba(d_model=D_MODEL, use_fast_path=False) for _ in range(N_LAYER))
        self.norms = nn.ModuleList(RMSNorm(D_MODEL) for _ in range(N_LAYER))
        self.norm_f = RMSNorm(D_MODEL)

    def forward(self, h):
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h))
        return self.norm_f(h)


def lengths(start_log2=17):
    yield 1 << 17
    yield 1 << 20
    k = 22
    while True:
        yield 1 << k
        k += 1


def step(model, L, device):
    h = torch.randn(1, L, D_MODEL, device=device, dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(h)
    out.sum().backward()
    del out, h


def measure(model, L, device, iters):
    """(peak GiB, seconds per fwd+bwd) or None on out-of-memory."""
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    try:
        if L < 1 << 22:  # warm-up (autotuning, allocator); chunk shapes do not change with L beyond this
            step(model, L, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step(model, L, device)
        end.record()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated()) / GiB, start.elapsed_time(end) / 1e3 / iters, base / GiB
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def parity(device, L, chunk, backend="auto"):
    torch.manual_seed(0)
    a = CausalBackbone(D_MODEL, N_LAYER, backend=backend).to(device).train()
    b = CausalBackbone(D_MODEL, N_LAYER, chunk_len=chunk, backend=backend).to(device).train()
    b.load_state_dict(a.state_dict())
    h = torch.randn(1, L, D_MODEL, device=device)
    w = torch.randn_like(h)
    res = []
    for m in (a, b):
        x = h.clone().requires_grad_(True)
        out = m(x)
        grads = torch.autograd.grad((out * w).sum(), [x] + list(m.parameters()))
        res.append((out, grads))
    err = (res[0][0] - res[1][0]).abs().max().item() / res[0][0].abs().max().item()
    gerr = max(((g0 - g1).abs().max() / g0.abs().max().clamp_min(1e-30)).item() for g0, g1 in zip(res[0][1], res[1][1]))
    return err, gerr


def versions(backend="auto"):
    v = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = "-"
    try:
        import mamba_ssm
        v["mamba-ssm"] = mamba_ssm.__version__
    except ImportError:
        v["mamba-ssm"] = "-"
    from mambaverse.ops import backends_for
    v["scan backend (ours)"] = backend if backend != "auto" else "auto: first of " + ", ".join(backends_for("selective_scan", "cuda")) + " that serves each call"
    return v


def single_gpu(args):
    device = torch.device("cuda")
    t0 = time.time()
    lines = []
    err, gerr = parity(device, args.parity_len, args.parity_len // 4, args.backend)
    print(f"parity chunked vs unchunked at L={args.parity_len}: out rel err {err:.2e}, grad rel err {gerr:.2e}", flush=True)
    rows = []  # (name, L, peak, s, tokens/s)
    torch.manual_seed(0)
    ours = {c: CausalBackbone(D_MODEL, N_LAYER, chunk_len=c, checkpoint_layers=args.checkpoint_layers,
                              backend=args.backend).to(device).train()
            for c in args.chunks}
    # chunk sweep at 2^20 picks the chunk length for the long sweep
    best = None
    for c, m in ours.items():
        r = measure(m, 1 << 20, device, args.iters)
        label = f"ours chunk={c}" if c else "ours unchunked"
        if r is None:
            rows.append((label, 1 << 20, float("nan"), float("nan"), 0.0))
        else:
            rows.append((label, 1 << 20, r[0], r[1], (1 << 20) / r[1]))
            print(rows[-1], flush=True)
            if c and (best is None or r[1] < best[1]):
                best = (c, r[1])
    chosen = best[0] if best else max(args.chunks)
    models = {}
    try:  # the anchor first: it stops early (out of memory), so the time budget goes to our long lengths
        models["mamba-ssm plain"] = AnchorStack().to(device).train()
    except Exception as exc:  # anchor not installed
        print(f"anchor unavailable: {exc}", flush=True)
    models[f"ours chunk={chosen}"] = ours[chosen]
    longest = {}
    for name, m in models.items():
        for L in lengths():
            if time.time() - t0 > args.budget_s:
                print(f"budget reached before {name} L={L}", flush=True)
                longest.setdefault(name, None)
                break
            if name.startswith("ours") and L == 1 << 20:
                r = next(((p, s) for n, LL, p, s, _ in rows if n == name and LL == L), None)
                if r:
                    longest[name] = L
                    continue
            r = measure(m, L, device, 1 if L >= 1 << 22 else args.iters)
            if r is None:
                rows.append((name, L, float("nan"), float("nan"), 0.0))
                print(f"{name} L={L}: OOM", flush=True)
                break
            rows.append((name, L, r[0], r[1], L / r[1]))
            longest[name] = L
            print(rows[-1], flush=True)
        m.cpu()
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    mem = torch.cuda.get_device_properties(0).total_memory / GiB
    lines += [f"# Long-context training, one GPU ({gpu})", "",
              f"Date: {datetime.date.today()}. Device: {gpu}, {mem:.0f} GiB. "
              + ", ".join(f"{k} {v}" for k, v in versions(args.backend).items()) + ".", "",
              f"4 layers, d_model=256 (d_inner 512, d_state 16), batch 1, forward+backward of out.sum(), fp32 "
              f"parameters under bf16 autocast; ours: CausalBackbone(chunk_len=C, checkpoint_layers="
              f"{args.checkpoint_layers}); anchor: mamba-ssm Mamba(use_fast_path=False) x 4, same residual stack, "
              f"same run. Peak = torch.cuda.max_memory_allocated. Times: CUDA events, mean of "
              f"{args.iters} (1 from 2^22 on) after a warm-up (no warm-up from 2^22 on: the chunk shapes, hence kernel configs, are those already tuned).", "",
              f"Parity (chunk L/4 vs unchunked, L={args.parity_len}): output rel. err {err:.1e}, gradient rel. err "
              f"{gerr:.1e}.", "",
              "| model | L | peak GiB | s / step | tokens/s |", "|---|---|---|---|---|"]
    for name, L, p, s, tps in rows:
        lines.append(f"| {name} | 2^{L.bit_length() - 1} | " + ("OOM | - | - |" if p != p else
                     f"{p:.2f} | {s:.3f} | {tps / 1e6:.2f} M |"))
    lines += ["", "Longest L that trained: " + ", ".join(
        f"{k}: {'2^%d' % (v.bit_length() - 1) if v else 'none'}" for k, v in longest.items()) + "."]
    ref = {n: (p, tps) for n, L, p, s, tps in rows if L == 1 << 20 and p == p}
    an = ref.get("mamba-ssm plain")
    if an:
        for n, (p, tps) in ref.items():
            if n.startswith("ours"):
                lines.append(f"At 2^20, {n}: {p:.2f} GiB ({p / an[0]:.2f}x mamba-ssm's {an[0]:.2f}), "
                             f"{tps / an[1]:.2f}x mamba-ssm's tokens/s.")
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"long_context_{'h100' if 'H100' in gpu else gpu.split()[-1].lower()}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)


def _cp_setup(args):
    """(dist, rank, world, device, cuda?) under torchrun: NCCL on the GPUs, or gloo on CPU for --smoke."""
    import datetime as _dt

    import torch.distributed as dist

    cuda = not args.smoke
    # a bounded timeout: a rank that dies (e.g. out of memory) makes the others fail instead of hang
    dist.init_process_group("nccl" if cuda else "gloo", timeout=_dt.timedelta(seconds=args.cp_timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return dist, rank, world, device, cuda


def _cp_parity(model, dist, L, chunk, d_model, device, method):
    """fp32, no autocast: context parallel on each rank's slice vs the whole sequence on every rank, as
    (output rel. err, gradient rel. err), gradients summed over ranks."""
    from mambaverse.context_parallel import context_parallel_forward, shard_sequence

    g = torch.Generator(device="cpu").manual_seed(1)
    h = torch.randn(1, L, d_model, generator=g).to(device)
    w = torch.randn(1, L, d_model, generator=g).to(device)
    params = list(model.parameters())
    full = h.clone().requires_grad_(True)
    ref = model(full)
    ref_g = torch.autograd.grad((ref * w).sum(), [full] + params)
    local = shard_sequence(h).clone().requires_grad_(True)
    out = context_parallel_forward(model, local, None, chunk, method=method)
    grads = list(torch.autograd.grad((out * shard_sequence(w)).sum(), [local] + params))
    for p_loc in grads[1:]:
        dist.all_reduce(p_loc)
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()  # noqa: E731
    errs = torch.tensor([rel(out, shard_sequence(ref).detach()),
                         max([rel(grads[0], shard_sequence(ref_g[0]))] + [rel(a, b) for a, b in zip(grads[1:], ref_g[1:])])],
                        device=device)
    dist.all_reduce(errs, op=dist.ReduceOp.MAX)
    return errs.tolist()


def _precompile_correction(model, device):
    """Compile the bf16 correction kernels (with and without decay_in, forward and backward) before timing:
    whether a run needs the decay_in variant depends on how far the decay reaches, which may first happen
    at a long L inside a timed step."""
    from mambaverse.ops import state_correction

    ssm = model.layers[0].mixer.ssm
    d, n, l = ssm.d_inner, ssm.d_state, 1024
    bf = dict(device=device, dtype=torch.bfloat16)
    for decay_in in (None, torch.rand(1, d, n, device=device, requires_grad=True)):
        delta = torch.randn(1, d, l, **bf, requires_grad=True)
        y = state_correction(delta, -torch.rand(d, n, device=device), torch.randn(1, n, l, **bf),
                             torch.randn(1, d, n, device=device), z=torch.randn(1, d, l, **bf),
                             delta_bias=torch.rand(d, device=device), delta_softplus=True, decay_in=decay_in)
        y.float().sum().backward()
    torch.cuda.synchronize()


def context_parallel(args):
    """Under torchrun: one sequence split over all ranks (method "correct", and "rescan" up to --rescan-max)
    vs the same L on rank 0 alone (up to --single-max), from --cp-min to the longest L that fits, all
    within --budget-s. Markdown table to --out (rank 0)."""
    from mambaverse.context_parallel import context_parallel_forward

    dist, rank, world, device, cuda = _cp_setup(args)
    t0 = time.time()
    d_model, n_layer = (16, 2) if args.smoke else (D_MODEL, N_LAYER)
    chunk = args.cp_chunk or (64 if args.smoke else max(args.chunks))
    dtype = torch.bfloat16 if cuda else torch.float32
    backend = args.backend if cuda else "torch"
    torch.manual_seed(0)
    model = CausalBackbone(d_model, n_layer, chunk_len=chunk, backend=backend).to(device).train()
    total_gib = torch.cuda.get_device_properties(device).total_memory / GiB if cuda else float("inf")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peak():
        return torch.cuda.max_memory_allocated() / GiB if cuda else float("nan")

    def reset():
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def one_step(L, method):
        h = torch.randn(1, L // world, d_model, device=device, dtype=dtype)
        with autocast():
            out = context_parallel_forward(model, h, None, chunk, method=method)
        out.float().sum().backward()

    def single_step(L):
        h = torch.randn(1, L, d_model, device=device, dtype=dtype)
        with autocast():
            out = model(h)
        out.float().sum().backward()

    def timed(fn, warm):
        """(seconds per step, peak GiB) of fn on this rank, or None if it ran out of memory."""
        reset()
        try:
            if warm:
                fn()
                model.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start, peak()
        except torch.OutOfMemoryError:
            return None
        finally:
            reset()

    def all_ranks(r):
        """Slowest rank's time and largest peak (every rank must call it); None if any rank failed."""
        t = torch.tensor([r[0], r[1]] if r else [float("inf"), float("inf")], device=device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return None if t[0].item() == float("inf") else (t[0].item(), t[1].item())

    def agree(flag):
        """Rank 0's decision, on every rank (or the collectives would pair up wrongly)."""
        t = torch.tensor([int(flag)], device=device)
        dist.broadcast(t, 0)
        return bool(t.item())

    if cuda:
        _precompile_correction(model, device)
    par_len = args.parity_len if cuda else 1 << 8
    par_chunk = max(8, par_len // world // 4)
    parity = {m: _cp_parity(model, dist, par_len, par_chunk, d_model, device, m) for m in ("correct", "rescan")}
    if rank == 0:
        print(f"parity at L={par_len} (chunk {par_chunk}, fp32): {parity}", flush=True)
    rows = []  # (L, single, rescan, correct), each (s, peak GiB) / None (out of memory) / "skip"
    L, warm, last = args.cp_min, True, None
    while L <= args.cp_max:
        # predicted: lengths double, so time and memory about double; rank 0 decides for everyone
        spent = time.time() - t0
        predicted_s = 2 * sum(r[0] for r in last[1:] if isinstance(r, tuple)) if last else 0.0
        predicted_gib = 2 * last[3][1] if cuda and last and isinstance(last[3], tuple) else 0.0
        go = spent + predicted_s < args.budget_s and predicted_gib < 0.92 * total_gib
        if not agree(go):
            if rank == 0:
                print(f"stop before L=2^{L.bit_length() - 1}: {spent:.0f} s spent, predicted {predicted_s:.0f} s "
                      f"and {predicted_gib:.1f} GiB per rank", flush=True)
            break
        single = "skip"
        if L <= args.single_max:
            if rank == 0:
                single = timed(lambda: single_step(L), warm or L < 1 << 22)
            dist.barrier()
        rescan = all_ranks(timed(lambda: one_step(L, "rescan"), warm)) if L <= args.rescan_max else "skip"
        correct = all_ranks(timed(lambda: one_step(L, "correct"), warm))
        last = (L, single, rescan, correct)
        rows.append(last)
        if rank == 0:
            print(f"L=2^{L.bit_length() - 1}: 1 GPU {single}, CP rescan {rescan}, CP correct {correct} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if correct is None:
            break
        L, warm = 2 * L, False
    if rank == 0:
        _write_cp(args, rows, parity, par_len, par_chunk, world, chunk, d_model, n_layer, device, cuda, t0)
    dist.barrier()
    dist.destroy_process_group()


def _rate(x):
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{x / 1e3:.1f} k"


def _write_cp(args, rows, parity, par_len, par_chunk, world, chunk, d_model, n_layer, device, cuda, t0):
    name = torch.cuda.get_device_name(device) if cuda else f"CPU (gloo, --smoke), {platform.processor() or 'cpu'}"
    fmt = lambda r: "skipped" if r == "skip" else "OOM" if r is None else f"{r[0]:.3f}"  # noqa: E731
    gib = lambda r: f"{r[1]:.1f}" if isinstance(r, tuple) and r[1] == r[1] else "-"  # noqa: E731
    lines = [f"# Context parallel, {world} x {name}", "",
             f"Date: {datetime.date.today()}. " + ", ".join(
                 f"{k} {v}" for k, v in versions(args.backend if cuda else "torch").items()) + ".", "",
             f"CausalBackbone(d_model={d_model}, n_layer={n_layer}), batch 1, forward+backward of out.sum(), "
             + ("fp32 parameters under bf16 autocast" if cuda else "fp32") + f"; chunk_len={chunk} inside each "
             f"rank's slice; one sequence of length L split over {world} ranks ({'NCCL' if cuda else 'gloo'}). "
             "CP correct: one scan per layer and rank plus the state correction (the default); CP rescan: the "
             "old method, scanning each slice twice. 1 GPU: the same L on rank 0 alone (chunk-major sweep), same "
             "run. Times: one step after a warm-up at the first L (wall clock, synchronized; the slowest rank); "
             "peak: torch.cuda.max_memory_allocated, the largest rank.", "",
             f"Parity at L={par_len} (chunk {par_chunk}, fp32, vs the whole sequence on one process): "
             + "; ".join(f"{m}: output rel. err {o:.1e}, gradient rel. err {g:.1e}" for m, (o, g) in parity.items()) + ".",
             "", "| L | 1 GPU s / step | 1 GPU tokens/s | 1 GPU peak GiB | CP rescan s / step | CP s / step | "
             "CP tokens/s | CP tokens/s per rank | CP peak GiB/rank | speed-up vs 1 GPU | vs rescan |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    single_peak = {}
    for L, single, rescan, correct in rows:
        if isinstance(single, tuple):
            single_peak[L] = single[1]
        tps = lambda r: _rate(L / r[0]) if isinstance(r, tuple) else "-"  # noqa: E731
        per = _rate(L / world / correct[0]) if isinstance(correct, tuple) else "-"
        up = f"{single[0] / correct[0]:.2f}x" if isinstance(single, tuple) and isinstance(correct, tuple) else "-"
        vs = f"{rescan[0] / correct[0]:.2f}x" if isinstance(rescan, tuple) and isinstance(correct, tuple) else "-"
        lines.append(f"| 2^{L.bit_length() - 1} | {fmt(single)} | {tps(single)} | {gib(single)} | {fmt(rescan)} | "
                     f"{fmt(correct)} | {tps(correct)} | {per} | {gib(correct)} | {up} | {vs} |")
    ok = [L for L, _, _, c in rows if isinstance(c, tuple)]
    lines += ["", f"Longest L that trained with context parallel on {world} ranks: "
              + (f"2^{max(ok).bit_length() - 1}" if ok else "none") + f" (tried up to 2^{args.cp_max.bit_length() - 1}"
              f" within a {args.budget_s:.0f} s budget; {time.time() - t0:.0f} s used)."]
    same = [(L, c[1], single_peak[L // world]) for L, _, _, c in rows
            if isinstance(c, tuple) and L // world in single_peak and cuda]
    if same:
        lines.append("Peak per rank vs one GPU holding the same tokens: " + ", ".join(
            f"2^{L.bit_length() - 1}: {p:.1f} vs {q:.1f} GiB ({p / q:.2f}x)" for L, p, q in same) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    gpu = name.split()[-1].lower() if cuda else "cpu_smoke"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"long_context_cp_{world}x{gpu}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cp", action="store_true", help="context-parallel scaling (run under torchrun)")
    p.add_argument("--chunks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1 << 15, 1 << 17],
                   help="chunk lengths tried at 2^20 (0: unchunked); the fastest chunked one is used for the long sweep")
    p.add_argument("--checkpoint-layers", action="store_true")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--parity-len", type=int, default=1 << 14)
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new lengths after this "
                   "(default 240; CP mode 330, predicted from the last L, so that the run ends within 7 minutes)")
    p.add_argument("--single-max", type=int, default=None, help="CP mode: largest L also run on one GPU "
                   "(default 2^24; --smoke 2^10)")
    p.add_argument("--cp-min", type=int, default=None, help="CP mode: first L (default 2^20; --smoke 2^8)")
    p.add_argument("--cp-max", type=int, default=None, help="CP mode: largest L tried (default 2^28; --smoke "
                   "2^10); the run also stops where the doubled peak of the last L would pass 92%% of the GPU")
    p.add_argument("--rescan-max", type=int, default=None, help="CP mode: largest L also run with the old "
                   "rescan method, for the same-run comparison (default 2^22; --smoke 2^10)")
    p.add_argument("--cp-chunk", type=int, default=None, help="CP mode: chunk_len inside each rank's slice "
                   "(default: the largest of --chunks; --smoke 64)")
    p.add_argument("--cp-timeout-s", type=int, default=300, help="CP mode: collective timeout")
    p.add_argument("--smoke", action="store_true", help="CP mode on CPU with gloo, tiny model and L (tests the "
                   "script; torchrun --nproc_per_node 2 ... --cp --smoke)")
    p.add_argument("--backend", default="auto", help="selective_scan backend of ours (auto: Triton on CUDA)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    small = args.smoke
    defaults = dict(single_max=1 << (10 if small else 24), cp_min=1 << (8 if small else 20),
                    cp_max=1 << (10 if small else 28), rescan_max=1 << (10 if small else 22),
                    budget_s=330.0 if args.cp else 240.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.smoke and not args.cp:
        raise SystemExit("--smoke is for --cp (context parallel on CPU with gloo)")
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("benchmarks/long_context.py needs a CUDA GPU (or --cp --smoke on CPU)")
    (context_parallel if args.cp else single_gpu)(args)


if __name__ == "__main__":
    main()
