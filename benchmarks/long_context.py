"""Long-context training memory and speed: 4 layers of d_model=256, forward+backward, batch 1.

Ours: CausalBackbone(d_model=256, n_layer=4, chunk_len=C) -- state-carrying chunks with exact gradients
(mambaverse.long_context), on whatever selective_scan backend `auto` picks (Triton on CUDA).
Anchor: mamba-ssm's plain stack, 4 x (h + Mamba(RMSNorm(h))) with Mamba(d_model=256, use_fast_path=False),
measured in the same run. Both: fp32 parameters under bf16 autocast, input (1, L, 256) bf16, loss out.sum().

    python benchmarks/long_context.py                     # single GPU sweep -> results/long_context_<gpu>.md
    torchrun --nproc_per_node 2 benchmarks/long_context.py --cp   # context-parallel scaling (2 GPUs)

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


def context_parallel(args):
    """Under torchrun: tokens/s of one sequence split over all ranks vs the same L on rank 0 alone."""
    import torch.distributed as dist

    from mambaverse.context_parallel import context_parallel_forward

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    torch.manual_seed(0)
    chunk = max(args.chunks)
    model = CausalBackbone(D_MODEL, N_LAYER, chunk_len=chunk, backend=args.backend).to(device).train()
    t0 = time.time()

    def cp_step(L):
        s = L // world
        h = torch.randn(1, s, D_MODEL, device=device, dtype=torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = context_parallel_forward(model, h, None, chunk)
        out.sum().backward()

    def timed(fn, L, iters):
        ok = torch.tensor([1], device=device)
        try:
            fn(L)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            dist.barrier()
            t = time.perf_counter()
            for _ in range(iters):
                fn(L)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / iters
        except torch.OutOfMemoryError:
            ok.zero_()
            dt = float("nan")
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return (dt, torch.cuda.max_memory_allocated() / GiB) if ok.item() else None

    rows = []
    L = 1 << 20
    while L <= args.cp_max:
        go = torch.tensor([int(time.time() - t0 < args.budget_s)], device=device)
        dist.broadcast(go, 0)  # every rank takes the same decision, or the collectives would hang
        if not go.item():
            break
        single = None
        if L <= args.single_max:
            if rank == 0:
                r = measure(model, L, device, 1)
                single = (r[1], r[0]) if r else None
            dist.barrier()
        r = timed(cp_step, L, 1)
        if rank == 0:
            rows.append((L, single, r))
            print(L, single, r, flush=True)
        if r is None:
            break
        L *= 2
    if rank == 0:
        gpu = torch.cuda.get_device_name()
        lines = [f"# Context parallel, {world} x {gpu}", "",
                 f"Date: {datetime.date.today()}. " + ", ".join(f"{k} {v}" for k, v in versions(args.backend).items()) + ".", "",
                 f"Same model and precision as the single-GPU table; chunk_len={chunk} inside each rank's slice; "
                 f"one sequence of length L split over {world} ranks (NCCL); 1-GPU column: the same L on one rank.",
                 "", "| L | 1 GPU s / step | 1 GPU tokens/s | 1 GPU peak GiB | CP s / step | CP tokens/s | CP peak GiB/rank | speed-up |",
                 "|---|---|---|---|---|---|---|---|"]
        for L, single, cp in rows:
            s1 = f"{single[0]:.3f} | {L / single[0] / 1e6:.2f} M | {single[1]:.1f}" if single else "OOM/skipped | - | -"
            s2 = f"{cp[0]:.3f} | {L / cp[0] / 1e6:.2f} M | {cp[1]:.1f}" if cp else "OOM | - | -"
            sp = f"{single[0] / cp[0]:.2f}x" if single and cp else "-"
            lines.append(f"| 2^{L.bit_length() - 1} | {s1} | {s2} | {sp} |")
        text = "\n".join(lines) + "\n"
        print(text)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"long_context_cp_{world}gpu.md")
        with open(out + ".tmp", "w") as f:
            f.write(text)
        os.replace(out + ".tmp", out)
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cp", action="store_true", help="context-parallel scaling (run under torchrun)")
    p.add_argument("--chunks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1 << 15, 1 << 17],
                   help="chunk lengths tried at 2^20 (0: unchunked); the fastest chunked one is used for the long sweep")
    p.add_argument("--checkpoint-layers", action="store_true")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--parity-len", type=int, default=1 << 14)
    p.add_argument("--budget-s", type=float, default=240.0, help="stop starting new lengths after this")
    p.add_argument("--single-max", type=int, default=1 << 23, help="CP mode: largest L also run on one GPU")
    p.add_argument("--cp-max", type=int, default=1 << 25, help="CP mode: largest L tried (an OOM on one rank "
                   "would leave the other waiting in a collective, so stay below it)")
    p.add_argument("--backend", default="auto", help="selective_scan backend of ours (auto: Triton on CUDA)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/long_context.py needs a CUDA GPU")
    (context_parallel if args.cp else single_gpu)(args)


if __name__ == "__main__":
    main()
