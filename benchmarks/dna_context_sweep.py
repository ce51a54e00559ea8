#!/usr/bin/env python
"""Accuracy against context length for DNA classification (issue 4, tasks a and b).

(a) species: S. aureus, E. coli, V. cholerae, H. pylori (ragout-examples), P. falciparum and
    P. knowlesi (smalt-examples); (b) strains: the five S. aureus genomes (about 99% identical).

Every run trains a fresh RC-equivariant (Caduceus-PS-style) classifier on random windows of one
context length, from the train region of every genome (the first 75% of each record), with the same
number of training bases per run (``--token-budget``) and a wall-clock cap per run
(``--max-train-seconds``); it is then tested on fixed windows from the test region (the last 25%),
which no training window overlaps. The table (markdown) and the plot (PNG) go to
``benchmarks/results/dna_context_sweep_<tag>.{md,png,json}`` with the device, versions and date.

CPU (the committed table):
    python benchmarks/dna_context_sweep.py --tag cpu
GPU, long contexts (first copy the FASTA files with ``--stage-data .cache/dna`` on a machine that has them,
and carry ``.cache/dna`` and the pyfaidx wheel in ``.whl/`` over):
    pip install --no-index --no-deps .whl/*.whl && pip install --no-deps --no-build-isolation -e .
    python benchmarks/dna_context_sweep.py --device cuda --tasks species strains --lengths 1024 16384 262144 \
        --data-root .cache/dna --token-budget 100000000 --batch-tokens 262144 --max-train-seconds 80 \
        --test-bases 8388608 --tag gpu --out "$OUT"
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

RAGOUT = "/usr/share/doc/ragout/examples"
SMALT = "/usr/share/doc/smalt/test/data"
AUREUS = ["COL", "JKD6008", "N315", "RF122", "USA300_FPR3757"]
TASKS = {
    "species": {
        "S_aureus": [f"{RAGOUT}/S.Aureus/references/{s}.fasta.gz" for s in ("COL", "N315")],
        "E_coli": [f"{RAGOUT}/E.Coli/references/{s}.fasta.gz" for s in ("MG1655-K12", "DH1")],
        "V_cholerae": [f"{RAGOUT}/V.Cholerae/references/{s}.fasta.gz" for s in ("H1", "O395")],
        "H_pylori": [f"{RAGOUT}/H.Pylori/references/{s}.fasta.gz" for s in ("G27", "ELS37")],
        "P_falciparum": [f"{SMALT}/genome_1.fa.gz"],
        "P_knowlesi": [f"{SMALT}/cigar_ref.fa.gz"],
    },
    "strains": {s.split("_")[0]: [f"{RAGOUT}/S.Aureus/references/{s}.fasta.gz"] for s in AUREUS},
}


def remap(files: dict, root: str | None) -> dict:
    """Point the /usr/share/doc paths at a copy under ``root`` (keeps the path below /usr/share/doc)."""
    if not root:
        return files
    return {k: [str(Path(root) / Path(p).relative_to("/usr/share/doc")) for p in v] for k, v in files.items()}


def stage_data(root: str) -> None:
    for files in TASKS.values():
        for paths in files.values():
            for p in paths:
                dest = Path(root) / Path(p).relative_to("/usr/share/doc")
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    shutil.copy2(p, dest)
    print(f"staged FASTA files under {root}")


def versions() -> dict:
    import lightning
    import numpy
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
         "numpy": numpy.__version__}
    try:
        import pyfaidx

        v["pyfaidx"] = pyfaidx.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        out = os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip()
        v["mambaverse_commit"] = out or "unknown"
    except Exception:  # noqa: BLE001
        pass
    return v


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_one(task: str, files: dict, L: int, args) -> dict:
    import lightning.pytorch as pl
    import torch

    from mambaverse.genomics import DNAClassifier, FastaDataModule

    pl.seed_everything(args.seed, verbose=False)
    batch = max(1, args.batch_tokens // L)
    accum = max(1, -(-args.min_batch_windows // batch))  # windows per optimizer step >= min_batch_windows
    steps = max(1, args.token_budget // (batch * L * accum))  # optimizer steps
    test_per_label = int(min(args.test_windows, max(args.min_test_windows, args.test_bases // L)))
    dm = FastaDataModule(files, window=L, batch_size=batch, split="region",
                         split_fractions=(1.0 - args.test_fraction, 0.0, args.test_fraction),
                         train_samples=steps * batch * accum, val_windows=0, test_windows=test_per_label, max_n_fraction=0.1,
                         rc_prob=0.5, cache_dir=args.cache_dir, num_workers=args.num_workers, seed=args.seed)
    overrides = json.loads(args.backbone_overrides) if args.backbone_overrides else None
    model = DNAClassifier(num_classes=len(files), backbone=args.backbone, backbone_overrides=overrides,
                          pooling="mean", patch_size=args.patch_size, stem=args.stem, lr=args.lr, warmup_steps=min(20, steps // 5),
                          output_dir=str(Path(args.work_dir) / f"{task}_{L}"))
    trainer = pl.Trainer(accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
                         precision=args.precision, max_steps=steps, max_epochs=1, limit_val_batches=0,
                         accumulate_grad_batches=accum,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_time={"seconds": args.max_train_seconds},
                         default_root_dir=args.work_dir)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    train_s = time.time() - t0
    done = trainer.global_step
    t0 = time.time()
    trainer.test(model, datamodule=dm, verbose=False)
    test_s = time.time() - t0
    r = model.test_results
    row = {"task": task, "context": L, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "mcc": r["mcc"],
           "test_windows": r["n"], "classes": len(files), "batch": batch * accum, "steps": done, "planned_steps": steps,
           "train_bases": done * batch * accum * L, "train_s": round(train_s, 1), "test_s": round(test_s, 1),
           "params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(row), flush=True)
    del model, trainer, dm
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def write_results(rows: list[dict], meta: dict, out: Path, tag: str) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mambaverse.genomics.metrics import atomic_write_bytes, atomic_write_json, save_figure

    out.mkdir(parents=True, exist_ok=True)
    base = out / f"dna_context_sweep_{tag}"
    atomic_write_json(base.with_suffix(".json"), {"meta": meta, "rows": rows})
    lines = [f"# DNA classification accuracy against context length ({tag})", "",
             f"- date: {meta['date']}", f"- device: {meta['device']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
             f"- model: {meta['model']}", f"- budget: {meta['budget']}",
             f"- command: `{meta['command']}`", "",
             "| task | context (bp) | 2^k | accuracy | macro-F1 | MCC | test windows | train steps × batch | train bases | train s | test s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        k = r["context"].bit_length() - 1
        lines.append(f"| {r['task']} | {r['context']} | {k} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['mcc']:.3f} | "
                     f"{r['test_windows']} | {r['steps']} × {r['batch']} | {r['train_bases']:,} | {r['train_s']} | {r['test_s']} |")
    lines.append("")
    for task in sorted({r["task"] for r in rows}):
        rs = sorted((r for r in rows if r["task"] == task), key=lambda r: r["context"])
        if len(rs) >= 2:
            lines.append(f"- {task}: accuracy {rs[0]['accuracy']:.3f} at {rs[0]['context']} bp -> {rs[-1]['accuracy']:.3f} at "
                         f"{rs[-1]['context']} bp (gain {rs[-1]['accuracy'] - rs[0]['accuracy']:+.3f}); best "
                         f"{max(r['accuracy'] for r in rs):.3f}; chance {1 / rs[0]['classes']:.3f}")
    md = base.with_suffix(".md")
    atomic_write_bytes(md, ("\n".join(lines) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for task, color in (("species", "tab:blue"), ("strains", "tab:red")):
        rs = sorted((r for r in rows if r["task"] == task), key=lambda r: r["context"])
        if not rs:
            continue
        ax.plot([r["context"] for r in rs], [r["accuracy"] for r in rs], "o-", color=color,
                label=f"({'a' if task == 'species' else 'b'}) {task}, {rs[0]['classes']} classes")
        ax.axhline(1 / rs[0]["classes"], color=color, ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (bp)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"DNA classification vs context ({meta['device']})", fontsize=9)
    png = save_figure(fig, base.with_suffix(".png"))
    plt.close(fig)
    return [md, png, base.with_suffix(".json")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["species", "strains"], choices=list(TASKS))
    ap.add_argument("--lengths", nargs="+", type=int, default=[2 ** k for k in range(10, 18)])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="Lightning precision (default: 32 on CPU, bf16-mixed on CUDA)")
    ap.add_argument("--backbone", default="caduceus_ps_dna_small")
    ap.add_argument("--backbone-overrides", default='{"expand": 1, "d_state": 8}', help="JSON dict")
    ap.add_argument("--patch-size", type=int, default=16, help="stem stride (1 = single-base resolution)")
    ap.add_argument("--stem", default="conv", choices=["conv", "patch"], help="conv: width-9 conv + GELU + mean over "
                    "patch-size bases (a learned k-mer counter); patch: one linear conv of width = stride = patch-size")
    ap.add_argument("--token-budget", type=int, default=8_000_000, help="training bases per run")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="bases per batch (batch = max(1, this // L))")
    ap.add_argument("--min-batch-windows", type=int, default=1,
                    help="accumulate gradients so that each optimizer step sees at least this many windows")
    ap.add_argument("--max-train-seconds", type=int, default=60, help="wall-clock cap on each run's training")
    ap.add_argument("--test-bases", type=int, default=1 << 20, help="test windows per label = test_bases // L ...")
    ap.add_argument("--test-windows", type=int, default=48, help="... at most this many ...")
    ap.add_argument("--min-test-windows", type=int, default=6, help="... and at least this many")
    ap.add_argument("--test-fraction", type=float, default=0.25,
                    help="the last fraction of every record is the test region (0.25 fits 2^18 windows in P. knowlesi's "
                         "longest contig; use 0.4 for 2^20)")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--data-root", default=None, help="read /usr/share/doc/... FASTA paths from a copy under this folder")
    ap.add_argument("--stage-data", default=None, metavar="DIR", help="copy the FASTA files under DIR and exit")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--work-dir", default="runs/dna_context_sweep")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the results file of this tag (a rerun of a task/context replaces its row)")
    args = ap.parse_args(argv)
    if args.stage_data:
        stage_data(args.stage_data)
        return 0

    import torch

    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    args.precision = args.precision or ("bf16-mixed" if args.device.startswith("cuda") else "32-true")
    tag = args.tag or args.device.split(":")[0]
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device_name(args.device),
            "versions": versions(), "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "model": f"DNAClassifier(backbone={args.backbone}, overrides={args.backbone_overrides}, patch_size={args.patch_size}, stem={args.stem}, "
                     f"pooling=mean, RC-equivariant), lr {args.lr}, AdamW, precision {args.precision}",
            "budget": f"{args.token_budget:,} training bases per run ({args.batch_tokens:,} per batch, at least "
                      f"{args.min_batch_windows} windows per optimizer step), capped at "
                      f"{args.max_train_seconds} s of training; region split per record: train on the first "
                      f"{1 - args.test_fraction:.0%}, test on the last {args.test_fraction:.0%} ({args.test_bases:,} bases per label, {args.min_test_windows}-{args.test_windows} windows)"}
    rows, t_all = [], time.time()
    previous = Path(args.out) / f"dna_context_sweep_{tag}.json"
    if args.append and previous.exists():
        rows = json.loads(previous.read_text())["rows"]
    for task in args.tasks:
        files = remap(TASKS[task], args.data_root)
        for L in args.lengths:
            row = run_one(task, files, L, args)
            rows = [r for r in rows if (r["task"], r["context"]) != (task, L)] + [row]
            rows.sort(key=lambda r: (r["task"], r["context"]))
            write_results(rows, {**meta, "total_s": round(time.time() - t_all, 1)}, Path(args.out), tag)
    paths = write_results(rows, {**meta, "total_s": round(time.time() - t_all, 1)}, Path(args.out), tag)
    print(f"sweep: {len(rows)} runs in {(time.time() - t_all) / 60:.1f} min; wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
