"""CPU selective scan: forward+backward tokens/s and peak memory, ours against naive and mambapy.

Each (backend, L) case runs in its own subprocess so that its peak resident memory can be read from
the kernel (VmHWM, reset via /proc/self/clear_refs after the inputs are made). All cases compute the
same function: y = scan(u, delta, A, B, C) + D u, with shared B/C, fp32, batch 1.

    python benchmarks/cpu_scan.py                      # d_inner=256, N=16, L in 1k, 8k, 64k
    python benchmarks/cpu_scan.py --lengths 1024 --repeats 1
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "cpu_scan.md"


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mambapy_scan(u, delta, A, B, C, D):
    """mambapy's selective_scan (mamba.py), written against its public pscan; layout (b, l, d)."""
    from mambapy.pscan import pscan

    x, dt = u.transpose(1, 2), delta.transpose(1, 2)
    Bt, Ct = B.transpose(1, 2), C.transpose(1, 2)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)
    BX = dt.unsqueeze(-1) * Bt.unsqueeze(2) * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs @ Ct.unsqueeze(-1)).squeeze(3) + D * x
    return y.transpose(1, 2)


def run_case(backend: str, length: int, d: int, n: int, repeats: int) -> dict:
    """Runs in the child process: time fwd+bwd, read peak RSS above the inputs."""
    global torch
    import torch

    from mambaverse.ops import selective_scan_naive, selective_scan_torch

    torch.manual_seed(0)
    inputs = dict(u=torch.randn(1, d, length), delta=torch.rand(1, d, length) * 0.1 + 0.001,
                  A=-torch.rand(d, n) - 0.5, B=torch.randn(1, n, length), C=torch.randn(1, n, length),
                  D=torch.randn(d))
    for t in inputs.values():
        t.requires_grad_()
    fn = {"torch": lambda **kw: selective_scan_torch(**kw), "naive": lambda **kw: selective_scan_naive(**kw),
          "mambapy": lambda **kw: _mambapy_scan(**kw)}[backend]
    grad_out = torch.randn(1, d, length)

    def once():
        y = fn(**inputs)
        y.backward(grad_out)
        for t in inputs.values():
            t.grad = None

    times = []
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    base = _status_kib("VmRSS")
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    median = statistics.median(times[1:]) if repeats else times[0]
    return dict(backend=backend, length=length, seconds=median, tokens_per_s=length / median,
                peak_mib=(peak - base) / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192, 65536])
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-max-length", type=int, default=1024,
                        help="naive is a Python loop with autograd per step; skip it above this length")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_case(args.child[0], int(args.child[1]), args.d_inner, args.d_state, args.repeats)
        print(json.dumps(result))
        return
    rows = []
    for length in args.lengths:
        for backend in ("torch", "mambapy", "naive"):
            if backend == "naive" and length > args.naive_max_length:
                continue
            repeats = 0 if backend == "naive" else 1 if length > 16384 else args.repeats
            cmd = [sys.executable, __file__, "--child", backend, str(length), "--d-inner", str(args.d_inner),
                   "--d-state", str(args.d_state), "--repeats", str(repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{backend} L={length} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                rows.append(dict(backend=backend, length=length, failed=True))
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{backend:8s} L={length:6d}  {row['tokens_per_s']:10.0f} tok/s  peak {row['peak_mib']:8.1f} MiB",
                  flush=True)
    write_table(rows, args)


def write_table(rows, args):
    import torch
    import mambapy

    by = {(r["backend"], r["length"]): r for r in rows}
    lines = [
        "# CPU selective scan: forward+backward throughput and peak memory",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"mambapy {getattr(mambapy, '__version__', '1.2.0')}",
        f"- shape: batch 1, d_inner={args.d_inner}, N={args.d_state}, fp32, shared B/C, D skip; median of "
        f"{args.repeats} fwd+bwd runs after one warm-up (L > 16k: one run after warm-up; naive: one cold run)",
        "- peak memory: resident-set high-water mark above the inputs, one subprocess per case",
        "- anchor: mambapy's parallel scan (`mambapy.pscan`), measured in the same run",
        "",
        "| L | ours tok/s | mambapy tok/s | naive tok/s | ours / mambapy speed | ours MiB | mambapy MiB | "
        "naive MiB | ours / mambapy memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(backend, length, key, fmt):
        row = by.get((backend, length))
        if row is None:
            return "not run"
        return "failed" if row.get("failed") else format(row[key], fmt)

    for length in args.lengths:
        ours, anchor = by.get(("torch", length)), by.get(("mambapy", length))
        ok = ours and anchor and not ours.get("failed") and not anchor.get("failed")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            length, cell("torch", length, "tokens_per_s", ".0f"), cell("mambapy", length, "tokens_per_s", ".0f"),
            cell("naive", length, "tokens_per_s", ".0f"),
            f"{ours['tokens_per_s'] / anchor['tokens_per_s']:.2f}x" if ok else "-",
            cell("torch", length, "peak_mib", ".0f"), cell("mambapy", length, "peak_mib", ".0f"),
            cell("naive", length, "peak_mib", ".0f"),
            f"{ours['peak_mib'] / anchor['peak_mib']:.2f}x" if ok else "-"))
    lines += ["", "Target (issue 2): at L=8k, at least 2x mambapy's throughput and at most 0.5x its peak memory.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
