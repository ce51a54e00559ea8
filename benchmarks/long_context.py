"""Long-context training memory and speed: 4 layers of d_model=256, forward+backward, batch 1.

Ours: CausalBackbone(d_model=256, n_layer=4, chunk_len=C) -- state-carrying chunks with exact gradients
(mambaverse.long_context), on whatever selective_scan backend `auto` picks (Triton on CUDA).
Anchor: mamba-ssm's plain stack, 4 x (h + Mamba(RMSNorm(h))) with Mamba(d_model=256, use_fast_path=False),
measured in the same run. Both: fp32 parameters under bf16 autocast, input (1, L, 256) bf16, loss out.sum().

    python benchmarks/long_context.py                     # single GPU sweep -> results/long_context_<gpu>.md
    BENCH_DRY=1 python benchmarks/long_context.py         # the same code path on CPU, tiny sizes (tests the script)
    torchrun --nproc_per_node 2 benchmarks/long_context.py --cp   # context-parallel scaling (2 GPUs)
    torchrun --nproc_per_node 2 benchmarks/long_context.py --cp --smoke --out /tmp/cp.md   # the same on CPU

Single GPU: a parity check at --parity-len first (chunked == unchunked, outputs and gradients); then at
L=2^20 the anchor and our --chunks (the headline row: tokens/s and GiB vs mamba-ssm, same run); then L=2^22,
2^23, ... for the anchor and our fastest chunking until out of memory or the --budget-s (200 s) would be
passed. dt_rank = ceil(d_model/16) on both sides (mamba-ssm's "auto"). The table is rewritten after every row.
"""
from __future__ import annotations

import argparse
import datetime
import math
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

    def __init__(self, d_model=D_MODEL, n_layer=N_LAYER):
        super().__init__()
        from mamba_ssm import Mamba

        self.layers = nn.ModuleList(Mamba(d_model=d_model, use_fast_path=False) for _ in range(n_layer))
        self.norms = nn.ModuleList(RMSNorm(d_model) for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model)

    def forward(self, h):
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h))
        return self.norm_f(h)


class Setting:
    """What one single-device run uses: the GPU job, or the CPU dry run (BENCH_DRY=1 / --dry) at tiny sizes."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = torch.device("cpu" if dry else "cuda")
        self.d_model, self.n_layer = (16, 2) if dry else (D_MODEL, N_LAYER)
        self.dt_rank = math.ceil(self.d_model / 16)
        self.main_len = 1 << (10 if dry else 20)  # the headline length (2^20 on the GPU)
        self.dtype = torch.float32 if dry else torch.bfloat16

    def autocast(self):
        return torch.autocast("cpu", enabled=False) if self.dry else torch.autocast("cuda", dtype=torch.bfloat16)

    def ours(self, chunk, checkpoint_layers=False, backend="auto"):
        return CausalBackbone(self.d_model, self.n_layer, dt_rank=self.dt_rank, chunk_len=chunk,
                              checkpoint_layers=checkpoint_layers, backend=backend).to(self.device).train()

    def sync(self):
        if not self.dry:
            torch.cuda.synchronize()

    def reset(self):
        if not self.dry:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self):
        return torch.cuda.max_memory_allocated() / GiB if not self.dry else float("nan")


def step(model, L, st):
    h = torch.randn(1, L, st.d_model, device=st.device, dtype=st.dtype)
    with st.autocast():
        out = model(h)
    out.sum().backward()
    del out, h


def measure(model, L, st, iters, warm=True):
    """(peak GiB, seconds per fwd+bwd) or None on out-of-memory."""
    model.zero_grad(set_to_none=True)
    st.reset()
    try:
        if warm:  # autotuning, allocator
            step(model, L, st)
        st.sync()
        st.reset()
        t = time.perf_counter()
        for _ in range(iters):
            step(model, L, st)
        st.sync()
        return st.peak(), (time.perf_counter() - t) / iters
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        st.reset()


def parity(st, L, chunk, backend="auto"):
    """fp32, no autocast: chunked vs unchunked (output rel. err, worst gradient rel. err)."""
    torch.manual_seed(0)
    a = st.ours(None, backend=backend)
    b = st.ours(chunk, backend=backend)
    b.load_state_dict(a.state_dict())
    h = torch.randn(1, L, st.d_model, device=st.device)
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


def _log2(L):
    return f"2^{L.bit_length() - 1}"


def _write_single(args, st, rows, notes, out):
    """The single-device table (rewritten after every row, so a timeout leaves what was measured)."""
    name = torch.cuda.get_device_name() if not st.dry else "CPU dry run (BENCH_DRY=1; tiny sizes, not a result)"
    mem = f", {torch.cuda.get_device_properties(0).total_memory / GiB:.0f} GiB" if not st.dry else ""
    lines = [f"# Long-context training, one GPU ({name})", "",
             f"Date: {datetime.date.today()}. Device: {name}{mem}. "
             + ", ".join(f"{k} {v}" for k, v in versions(args.backend).items()) + ".", "",
             f"{st.n_layer} layers, d_model={st.d_model} (d_inner {2 * st.d_model}, d_state 16, dt_rank {st.dt_rank} "
             "on both sides, mamba-ssm's 'auto'), batch 1, forward+backward of out.sum(), "
             + ("fp32" if st.dry else "fp32 parameters under bf16 autocast, bf16 input")
             + f"; ours: CausalBackbone(chunk_len=C, checkpoint_layers={args.checkpoint_layers}); anchor: mamba-ssm "
             "Mamba(use_fast_path=False) x 4, same residual stack (our RMSNorm), same run. Peak = "
             "torch.cuda.max_memory_allocated. Times: synchronized wall clock, mean of "
             f"{args.iters} after a warm-up at {_log2(st.main_len)} (one step, no warm-up, beyond: the kernels are "
             "compiled by then).", ""]
    lines += notes
    lines += ["", "| model | L | peak GiB | s / step | tokens/s |", "|---|---|---|---|---|"]
    for label, L, p, s, tps in rows:
        if p is None:
            lines.append(f"| {label} | {_log2(L)} | OOM | - | - |")
        else:
            lines.append(f"| {label} | {_log2(L)} | {p:.2f} | {s:.3f} | {tps / 1e6:.3f} M |")
    ref = {n: (p, tps) for n, L, p, s, tps in rows if L == st.main_len and p is not None}
    an = ref.get("mamba-ssm plain")
    lines.append("")
    if an:
        for n, (p, tps) in ref.items():
            if n.startswith("ours"):
                lines.append(f"At {_log2(st.main_len)}, {n}: {p:.2f} GiB ({p / an[0]:.2f}x mamba-ssm's {an[0]:.2f}), "
                             f"{tps / an[1]:.2f}x mamba-ssm's tokens/s.")
    longest = {}
    for n, L, p, s, tps in rows:
        if p is not None:
            longest[n] = max(longest.get(n, 0), L)
    if longest:
        lines.append("Longest L that trained: " + ", ".join(f"{k}: {_log2(v)}" for k, v in longest.items()) + ".")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    return text


def single_gpu(args):
    """Parity, then at the headline length (2^20) mamba-ssm's plain stack and our chunk sweep (the row the
    issue asks for), then ever longer L for the fastest chunking while the budget lasts."""
    st = Setting(args.dry)
    t0 = time.time()
    if st.dry:
        args.iters = 1
    if st.dry:
        out = args.out or os.path.join("/tmp", "long_context_dry.md")
        gpu = "cpu"
    else:
        gpu = torch.cuda.get_device_name()
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"long_context_{'h100' if 'H100' in gpu else gpu.split()[-1].lower()}.md")
    par_len = args.parity_len if not st.dry else 1 << 8
    err, gerr = parity(st, par_len, par_len // 4, args.backend)
    notes = [f"Parity (fp32, chunk L/4 vs unchunked, L={par_len}): output rel. err {err:.1e}, gradient rel. err "
             f"{gerr:.1e}."]
    print(notes[0], flush=True)
    rows = []  # (label, L, peak GiB or None, s, tokens/s)

    def record(label, L, r):
        rows.append((label, L, None, None, 0.0) if r is None else (label, L, r[0], r[1], L / r[1]))
        print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
        _write_single(args, st, rows, notes, out)

    L = st.main_len
    anchor = None
    try:
        if st.dry:
            raise ImportError("the CPU dry run has no mamba-ssm")
        torch.manual_seed(0)
        anchor = AnchorStack(st.d_model, st.n_layer).to(st.device).train()
    except Exception as exc:  # anchor not installed (or its build is broken): the table says so
        notes.append(f"mamba-ssm anchor unavailable: {type(exc).__name__}: {exc}")
        print(notes[-1], flush=True)
    if anchor is not None:
        record("mamba-ssm plain", L, measure(anchor, L, st, args.iters))
    chunks = args.chunks if not st.dry else [0, 1 << 8]
    best, timed = None, {}
    for c in chunks:
        torch.manual_seed(0)
        m = st.ours(c or None, args.checkpoint_layers, args.backend)
        r = measure(m, L, st, args.iters)
        record(f"ours chunk={c}" if c else "ours unchunked", L, r)
        fits = r is not None and (st.dry or r[0] <= args.cap_gib)
        if c and fits and (best is None or r[1] < best[1]):
            best = (c, r[1])
            timed[c] = m
        del m
        if not st.dry:
            torch.cuda.empty_cache()
    # longer L: the anchor until it runs out of memory, ours with the fastest chunking; a length starts only if
    # twice the last step's time still fits in the budget
    models = {}
    if anchor is not None:
        models["mamba-ssm plain"] = anchor
    if best is not None:
        models[f"ours chunk={best[0]}"] = timed[best[0]]
        notes.append(f"Fastest chunking within {args.cap_gib:g} GiB at {_log2(L)}: chunk_len={best[0]}.")
    for label, m in models.items():
        per_token = next((s / L for n, LL, p, s, _ in rows if n == label and LL == L and p is not None), None)
        if per_token is None:
            continue
        k = L.bit_length() + 1  # 2^22 first (as before), then doubling
        while True:
            LL = 1 << k
            if (st.dry and k > 12) or time.time() - t0 + per_token * LL > args.budget_s:
                notes.append(f"{label}: stopped before {_log2(LL)} (predicted to end past the "
                             f"{args.budget_s:.0f} s budget).")
                break
            r = measure(m, LL, st, 1, warm=False)
            record(label, LL, r)
            if r is None:
                break
            per_token, k = r[1] / LL, k + 1
        m.cpu()
        if not st.dry:
            torch.cuda.empty_cache()
    notes.append(f"Total {time.time() - t0:.0f} s.")
    print(_write_single(args, st, rows, notes, out))
    print(f"written to {out}")


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
    p.add_argument("--chunks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1 << 15, 1 << 17, 1 << 18],
                   help="chunk lengths tried at 2^20 (0: unchunked); the fastest chunked one within --cap-gib is "
                   "used for the long sweep")
    p.add_argument("--cap-gib", type=float, default=8.0, help="memory cap of the chunking picked for the long "
                   "sweep (issue 14: 2^20 within 8 GiB)")
    p.add_argument("--checkpoint-layers", action="store_true")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--parity-len", type=int, default=1 << 14)
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new lengths after this "
                   "(default 200, so that the single-GPU run ends within 4 minutes; CP mode 330, within 7; a "
                   "length starts only if its time predicted from the last one fits)")
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
    p.add_argument("--dry", action="store_true", help="single-device mode on CPU at tiny sizes (tests the script; "
                   "same as BENCH_DRY=1)")
    p.add_argument("--backend", default="auto", help="selective_scan backend of ours (auto: Triton on CUDA)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.dry = args.dry or os.environ.get("BENCH_DRY", "0") == "1"
    small = args.smoke
    defaults = dict(single_max=1 << (10 if small else 24), cp_min=1 << (8 if small else 20),
                    cp_max=1 << (10 if small else 28), rescan_max=1 << (10 if small else 22),
                    budget_s=330.0 if args.cp else 200.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.smoke and not args.cp:
        raise SystemExit("--smoke is for --cp (context parallel on CPU with gloo)")
    if not torch.cuda.is_available() and not (args.smoke or (args.dry and not args.cp)):
        raise SystemExit("benchmarks/long_context.py needs a CUDA GPU (or --dry / BENCH_DRY=1, or --cp --smoke, on CPU)")
    (context_parallel if args.cp else single_gpu)(args)


if __name__ == "__main__":
    main()
