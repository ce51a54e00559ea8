"""Speed race: our Vim-Ti against timm's DeiT-Ti across resolutions, our VMamba-T against Swin-T at 224,
inference img/s and peak memory, plus a training step (forward + backward + AdamW step), bf16 autocast.

    python benchmarks/vision_speed.py                 # GPU, whole table + plot, about 3-5 minutes on one H200
    python benchmarks/vision_speed.py --smoke         # CPU, tiny models and sizes: checks the script runs

Every model is built at the resolution it is timed at (``img_size=R``: Vim's and DeiT's position tables are
made for R, no resampling in the loop); weights are random (speed does not depend on them). Writes
``<out>.md`` (table with ours/theirs ratios, device, versions, date), ``<out>.json`` and ``<out>.png``
(img/s against resolution, log-log, the crossover marked when there is one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESOLUTIONS = (224, 512, 1024, 1248, 2048, 3072)
BATCH = {224: 256, 512: 64, 1024: 16, 1248: 8, 2048: 2, 3072: 1}


def build(name: str, img_size: int, smoke: bool, backend: str = "auto"):
    import timm

    import mambaverse.vision  # noqa: F401  (registers mambaverse_* in timm)

    kwargs = {"num_classes": 1000}
    if name.startswith("mambaverse_"):
        kwargs["backend"] = backend  # our scan backend: auto (mamba-ssm if installed, else Triton on CUDA), triton, torch
    if name.startswith("mambaverse_vim") or name.startswith("deit") or name.startswith("mambaverse_vmamba"):
        kwargs["img_size"] = img_size
    if smoke:  # tiny widths so the CPU smoke run takes seconds
        kwargs.update({"mambaverse_vim_t": {"depth": 2, "embed_dim": 32},
                       "deit_tiny_patch16_224": {"depth": 2, "embed_dim": 32, "num_heads": 2},
                       "mambaverse_vmamba_t": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
                       "swin_tiny_patch4_window7_224": {"depths": (1, 1, 1, 1), "embed_dim": 16,
                                                        "img_size": img_size}}.get(name, {}))
    elif name.startswith("swin"):
        kwargs["img_size"] = img_size
    return timm.create_model(name, **kwargs)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, img_size: int, batch: int, train: bool, device, dtype, min_time: float, smoke: bool,
            compile_model: bool, backend: str = "auto") -> dict:
    """img/s and peak memory (MiB) of `name` at `img_size`, batch `batch`; forward only or a training step."""
    row = {"model": name, "res": img_size, "batch": batch, "mode": "train" if train else "infer"}
    try:
        torch.manual_seed(0)
        model = build(name, img_size, smoke, backend).to(device)
        model.train(train)
        if compile_model:
            model = torch.compile(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
        x = torch.randn(batch, 3, img_size, img_size, device=device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

        def step():
            if train:
                with autocast:
                    loss = model(x).float().logsumexp(-1).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode(), autocast:
                    model(x)

        step()  # first call: kernel compilation / autotuning
        step()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        iters, start = 0, time.perf_counter()
        while True:
            step()
            iters += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and iters >= 3:
                break
        row.update(img_s=iters * batch / elapsed, ms_per_batch=1000 * elapsed / iters, iters=iters,
                   params_m=sum(p.numel() for p in model.parameters()) / 1e6)
        if device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    except torch.cuda.OutOfMemoryError:
        row["error"] = "OOM"
    except RuntimeError as exc:  # report and keep racing the other cells
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def crossover(res, ours, theirs):
    """First resolution where ours/theirs img/s reaches 1, log-linearly interpolated; None if never."""
    points = [(r, o / t) for r, o, t in zip(res, ours, theirs) if o and t]
    for (r0, q0), (r1, q1) in zip(points, points[1:]):
        if q0 < 1 <= q1:
            f = (0 - math.log(q0)) / (math.log(q1) - math.log(q0))
            return math.exp(math.log(r0) + f * (math.log(r1) - math.log(r0)))
    return points[0][0] if points and points[0][1] >= 1 else None


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("timm", "triton", "mamba_ssm"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent is a fine answer
            out[mod] = "not installed"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, resolutions 32 and 64")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--min-time", type=float, default=1.5, help="seconds timed per cell")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (ours and timm's)")
    parser.add_argument("--backend", default="auto", help="scan backend of our models (auto, triton, mamba_ssm, torch)")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/results/vision_speed_<device>)")
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    resolutions = args.resolutions or ((32, 64) if args.smoke else RESOLUTIONS)
    batch = (lambda r: 2) if args.smoke else (lambda r: BATCH.get(r, max(1, int(256 * (224 / r) ** 2))))
    min_time = 0.2 if args.smoke else args.min_time
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    slug = "smoke_cpu" if args.smoke else device_name.lower().replace("nvidia ", "").replace(" ", "_")
    out = Path(args.out or (f"runs/bench/vision_speed_{slug}" if args.smoke else f"benchmarks/results/vision_speed_{slug}"))
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    rows = []
    common = dict(device=device, dtype=dtype, min_time=min_time, smoke=args.smoke, compile_model=args.compile,
                  backend=args.backend)
    for r in resolutions:
        for name in ("mambaverse_vim_t", "deit_tiny_patch16_224"):
            rows.append(measure(name, r, batch(r), False, **common))
            print(json.dumps(rows[-1]), flush=True)
    small = resolutions[0]
    for name in ("mambaverse_vmamba_t", "swin_tiny_patch4_window7_224"):
        rows.append(measure(name, small, batch(small), False, **common))
        print(json.dumps(rows[-1]), flush=True)
    for name in ("mambaverse_vim_t", "deit_tiny_patch16_224", "mambaverse_vmamba_t", "swin_tiny_patch4_window7_224"):
        rows.append(measure(name, small, max(1, batch(small) // 2), True, **common))
        print(json.dumps(rows[-1]), flush=True)

    def get(model, res, mode="infer", key="img_s"):
        for row in rows:
            if row["model"] == model and row["res"] == res and row["mode"] == mode:
                return row.get(key)
        return None

    ours = [get("mambaverse_vim_t", r) for r in resolutions]
    deit = [get("deit_tiny_patch16_224", r) for r in resolutions]
    cross = crossover(resolutions, ours, deit)
    meta = {"device": device_name, "dtype": args.dtype, "compile": args.compile, "smoke": args.smoke, "backend": args.backend,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "versions": versions(), "wall_s": round(time.perf_counter() - t0, 1), "vim_deit_crossover_res": cross}

    def fmt(v, spec=",.0f"):
        return "—" if v is None else format(v, spec)

    lines = [f"# Vision speed: Vim-Ti vs DeiT-Ti, VMamba-T vs Swin-T ({'smoke, tiny models' if args.smoke else 'paper sizes'})", "",
             f"Device: {device_name}; {args.dtype} autocast; torch.compile: {args.compile}; our scan backend: {args.backend}; {meta['date']}; "
             f"versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}. timm's models measured in the same run "
             f"(the anchor); ratio = ours / theirs. Random weights; each model built at the resolution it is timed at.", "",
             "## Inference", "", "| res | batch | Vim-Ti img/s | DeiT-Ti img/s | ratio | Vim-Ti peak MiB | DeiT-Ti peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in resolutions:
        o, d = get("mambaverse_vim_t", r), get("deit_tiny_patch16_224", r)
        err = get("mambaverse_vim_t", r, key="error") or get("deit_tiny_patch16_224", r, key="error")
        ratio = f"{o / d:.2f}x" if o and d else (err or "—")
        lines.append(f"| {r} | {batch(r)} | {fmt(o, ',.1f')} | {fmt(d, ',.1f')} | {ratio} | "
                     f"{fmt(get('mambaverse_vim_t', r, key='peak_mib'))} | {fmt(get('deit_tiny_patch16_224', r, key='peak_mib'))} |")
    o, s = get("mambaverse_vmamba_t", small), get("swin_tiny_patch4_window7_224", small)
    lines += ["", f"| {small} | batch | VMamba-T img/s | Swin-T img/s | ratio | VMamba-T peak MiB | Swin-T peak MiB |",
              "|---|---|---|---|---|---|---|",
              f"| {small} | {batch(small)} | {fmt(o, ',.1f')} | {fmt(s, ',.1f')} | {f'{o / s:.2f}x' if o and s else '—'} | "
              f"{fmt(get('mambaverse_vmamba_t', small, key='peak_mib'))} | {fmt(get('swin_tiny_patch4_window7_224', small, key='peak_mib'))} |",
              "", f"## Training step (forward + backward + AdamW), {small}px, batch {max(1, batch(small) // 2)}", "",
              "| model | img/s | peak MiB | params (M) |", "|---|---|---|---|"]
    for name in ("mambaverse_vim_t", "deit_tiny_patch16_224", "mambaverse_vmamba_t", "swin_tiny_patch4_window7_224"):
        lines.append(f"| {name} | {fmt(get(name, small, 'train'), ',.1f')} | {fmt(get(name, small, 'train', 'peak_mib'))} | "
                     f"{fmt(get(name, small, 'train', 'params_m'), '.1f')} |")
    lines += ["", "Crossover (Vim-Ti reaches DeiT-Ti's img/s): " +
              (f"about {cross:,.0f}px" if cross else f"none up to {resolutions[-1]}px"), "",
              f"Whole run: {meta['wall_s']} s. Command: `python benchmarks/vision_speed.py{' --smoke' if args.smoke else ''}`", ""]
    (out.with_suffix(".md")).write_text("\n".join(lines))
    (out.with_suffix(".json")).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    try:
        plot(out.with_suffix(".png"), resolutions, ours, deit, cross, meta)
    except ImportError as exc:  # a bare GPU image may lack matplotlib: the table still stands
        print(f"no plot ({exc})", file=sys.stderr)
    print("\n".join(lines))
    return 0


def plot(path, resolutions, ours, deit, cross, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for values, label, style in ((ours, "ours Vim-Ti", "o-"), (deit, "timm DeiT-Ti", "s--")):
        pts = [(r, v) for r, v in zip(resolutions, values) if v]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    if cross:
        ax.axvline(cross, color="gray", linestyle=":", label=f"crossover ≈ {cross:,.0f}px")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(resolutions), [str(r) for r in resolutions])
    ax.set_xlabel("image side (px)")
    ax.set_ylabel(f"inference img/s ({meta['dtype']})")
    ax.set_title(f"{meta['device']}: img/s against resolution", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
