#!/usr/bin/env python
"""DNA classification accuracy against context length, on tasks whose split is honest (issue 15, item 2).

Why the earlier strain task stayed at chance: with ``split: region`` the test windows of the five S. aureus
strains come from the last quarter of each genome, where the genomes are about 99% identical and what tells a
strain apart there (its SNP alleles, its own islands and prophages) was never in any training window. A model
can only learn strain markers that recur across the genome, and there are almost none; more context does not
create them. Two tasks replace it:

* ``plasmodium``: P. falciparum (``genome_1.fa.gz``, 14 chromosomes) against P. knowlesi (``cigar_ref.fa.gz``,
  contigs named ``Pk.<chromosome>.<n>``), split by chromosome (``split: named``): chromosomes 4, 8 and 12 of
  both species are held out whole, and no training window comes from them. The two genomes differ in base
  composition and gene families, so the task is about what a window of a new chromosome looks like.
* ``strains``: the five S. aureus strains (ragout-examples), split by random non-overlapping blocks across the
  whole genome (``split: blocks``): every genome is tiled into blocks of ``--block-size`` bases (default: the
  longest context, so the held-out bases are the same at every length) and 20% of each genome's blocks, drawn
  at random per strain, are held out. Every part of every genome has training bases nearby and the homologous
  blocks of the other strains are mostly in training, so this is a memorisation-plus-context test: it asks
  whether the model can recall which strain's version of a locus a held-out window resembles; it says nothing
  about new strains.

Each task is run from scratch and fine-tuned from the chrX causal LM of ``dna_pretrain_context.py``
(``--pretrained``: its backbone and embedding, with the same architecture read from the checkpoint), at every
length in ``--lengths``, with the same number of training bases per run (``--tokens``; ``auto`` plans it from a
measured probe and ``--time-budget``) and the same bases per batch (``--batch-tokens``). Single-base
resolution (no k-mer stem, so the pretrained weights see what they were trained on), mean pooling,
reverse-complement augmentation.

Results: ``<out>/dna_context_sweep_<tag>.{md,json,png}``, rewritten after every run.

CPU check (CI): ``python benchmarks/dna_context_sweep.py --tiny --pretrained runs/dna_pretrain_context/chrX_pretrained.ckpt``
GPU (after ``dna_pretrain_context.py`` wrote the checkpoint; data staged with ``--stage-data .cache/dna``):
    python benchmarks/dna_context_sweep.py --device cuda --data-dir .cache/dna --time-budget 200 \\
        --pretrained .cache/dna/chrX_pretrained.ckpt --out "$OUT" --tag h200
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dna_common as C  # noqa: E402

HELD_OUT_CHROMOSOMES = (4, 8, 12)
_CHR = "|".join(map(str, HELD_OUT_CHROMOSOMES))
TASKS = {
    "plasmodium": {
        "files": {"P_falciparum": ["genome_1.fa.gz"], "P_knowlesi": ["cigar_ref.fa.gz"]},
        "split": "named", "split_records": {"test": rf"MAL({_CHR})|Pk\.({_CHR})\.\d+"}, "short": "chromosome",
        "split_name": f"by chromosome: chromosomes {', '.join(map(str, HELD_OUT_CHROMOSOMES))} of both species held out",
    },
    "strains": {
        "files": {s.split("_")[0]: [f"{s}.fasta.gz"] for s in C.AUREUS},
        "split": "blocks", "short": "random blocks",
        "split_name": "random blocks: 20% of each genome's {block:,}-bp blocks held out (memorisation + context)",
    },
}
TINY = {"lengths": [64, 256], "tokens": "1024", "batch_tokens": 512, "test_windows": 4, "min_test_windows": 4,
        "backbone_overrides": '{"d_model": 32, "n_layer": 2, "d_state": 4}', "tag": "cpu_tiny", "lr": 3e-3}


def architecture(args) -> tuple[str, dict]:
    """Backbone preset and overrides: those of the pretrained checkpoint when there is one (scratch runs use the
    same, so the two inits differ only in their starting weights), else the command line's."""
    if args.pretrained:
        import torch

        ck = torch.load(args.pretrained, map_location="cpu", weights_only=True)
        hp = ck.get("hyper_parameters") or {}
        if "backbone" in hp:
            return hp["backbone"], dict(hp.get("backbone_overrides") or {})
    return args.backbone, dict(json.loads(args.backbone_overrides or "{}"))


def datamodule(task: str, L: int, args, steps: int, batch: int, test_per_label: int):
    from mambaverse.genomics import FastaDataModule

    spec = TASKS[task]
    files = {label: [C.data_path(f, args.data_dir) for f in fs] for label, fs in spec["files"].items()}
    kw = dict(split=spec["split"])
    if spec["split"] == "named":
        kw["split_records"] = spec["split_records"]
    else:
        kw.update(block_size=args.block_size, split_fractions=(1.0 - args.test_fraction, 0.0, args.test_fraction))
    return FastaDataModule(files, window=L, batch_size=batch, train_samples=steps * batch, val_windows=0,
                           test_windows=test_per_label, max_n_fraction=0.1, rc_prob=0.5, cache_dir=args.cache_dir,
                           num_workers=args.num_workers, seed=args.seed, **kw)


def model_for(task: str, init: str, args):
    from mambaverse.genomics import DNAClassifier

    backbone, overrides = args.arch
    return DNAClassifier(num_classes=len(TASKS[task]["files"]), backbone=backbone, backbone_overrides=overrides or None,
                         pooling="mean", patch_size=1, stem="patch", lr=args.lr,
                         warmup_steps=args.lr_warmup_steps if args.lr_warmup_steps is not None else 1,  # unset while probing
                         output_dir=str(Path(args.work_dir) / f"{task}_{init}"),
                         pretrained_ckpt=args.pretrained if init == "pretrained" else None)


def probe(args) -> float:
    """Seconds per optimizer step (``--batch-tokens`` bases) at the shortest and the longest length, random tokens,
    the same model and precision; the slower of the two plans the budget."""
    import torch

    dev = torch.device(args.device)
    model = model_for("strains", "scratch", args).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    worst = 0.0
    for L in sorted({min(args.lengths), max(args.lengths)}):
        ids = torch.randint(4, 8, (max(1, args.batch_tokens // L), L), device=dev)
        y = torch.zeros(ids.shape[0], dtype=torch.long, device=dev)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16")):
                loss = torch.nn.functional.cross_entropy(model(ids).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        s = C.seconds_per_step(step, warm=1, timed=2, device=args.device)
        worst = max(worst, s)
        print(json.dumps({"probe_length": L, "seconds_per_step": round(s, 4), "tokens_per_step": ids.numel()}), flush=True)
    del model, opt
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return worst


def test_windows(L: int, args) -> int:
    """Test windows per label at length L: test_bases // L, within [min_test_windows, test_windows]."""
    return int(min(args.test_windows, max(args.min_test_windows, args.test_bases // L)))


def run_one(task: str, init: str, L: int, args, steps: int, max_seconds: float) -> dict:
    import lightning.pytorch as pl
    import torch

    pl.seed_everything(args.seed, verbose=False)
    batch = max(1, args.batch_tokens // L)
    dm = datamodule(task, L, args, steps, batch, test_windows(L, args))
    model = model_for(task, init, args)
    gpu = args.device.startswith("cuda")
    trainer = pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision=args.precision, max_steps=steps,
                         max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         max_time={"seconds": max(1.0, max_seconds)}, default_root_dir=args.work_dir)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    train_s = time.time() - t0
    done = trainer.global_step
    t0 = time.time()
    trainer.test(model, datamodule=dm, verbose=False)
    r = model.test_results
    row = {"task": task, "split": split_name(task, args), "init": init, "context": L, "accuracy": r["accuracy"],
           "macro_f1": r["macro_f1"], "mcc": r["mcc"], "test_windows": r["n"], "classes": len(TASKS[task]["files"]),
           "batch": batch, "steps": done, "planned_steps": steps, "train_bases": done * batch * L,
           "train_s": round(train_s, 1), "test_s": round(time.time() - t0, 1),
           "pretrained_tensors": len(model.loaded_pretrained),
           "status": "done" if done >= steps else f"cut by time after {done} of {steps} steps"}
    print(json.dumps(row), flush=True)
    del model, trainer, dm
    if gpu:
        torch.cuda.empty_cache()
    return row


def split_name(task: str, args) -> str:
    return TASKS[task]["split_name"].format(block=args.block_size)


def write_results(rows: list[dict], meta: dict, out: Path, tag: str, final: bool = True) -> list[Path]:
    base = out / f"dna_context_sweep_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    C.write_json(base.with_suffix(".json"), {"meta": meta, "rows": rows})
    lines = ["# DNA classification accuracy against context length", ""] + C.meta_lines(meta) + [""]
    for task in sorted({r["task"] for r in rows}):
        r = next(r for r in rows if r["task"] == task)
        lines.append(f"- split of {task} ({TASKS[task]['short']}): {r['split']}")
    lines.append("")
    lines += ["| task | split | init | context (bp) | 2^k | accuracy | macro-F1 | MCC | test windows | steps × batch | "
              "train bases | train s | status |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    done = [r for r in rows if r.get("accuracy") is not None]
    for r in sorted(done, key=lambda r: (r["task"], r["init"], r["context"])):
        lines.append(f"| {r['task']} | {TASKS[r['task']]['short']} | {r['init']} | {r['context']:,} | "
                     f"{r['context'].bit_length() - 1} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['mcc']:.3f} | {r['test_windows']} | "
                     f"{r['steps']} × {r['batch']} | {r['train_bases']:,} | {r['train_s']} | {r['status']} |")
    for r in rows:
        if r.get("accuracy") is None:
            lines.append(f"| {r['task']} | {TASKS[r['task']]['short']} | {r['init']} | {r['context']:,} | "
                         f"{r['context'].bit_length() - 1} | - | - | - | - | - | - | - | {r['status']} |")
    lines += ["", "## Summary (computed from the rows above)", ""]
    for task, init in sorted({(r["task"], r["init"]) for r in done}):
        rs = sorted((r for r in done if (r["task"], r["init"]) == (task, init)), key=lambda r: r["context"])
        best = max(rs, key=lambda r: r["accuracy"])
        gain = best["accuracy"] - rs[0]["accuracy"]
        lines.append(f"- {task}, {init}: {rs[0]['accuracy']:.3f} at {rs[0]['context']:,} bp, best {best['accuracy']:.3f} at "
                     f"{best['context']:,} bp (gain {100 * gain:+.1f} points; target +10: {'met' if gain >= 0.10 else 'not met'}); "
                     f"chance {1 / rs[0]['classes']:.3f}")
    C.write_text(base.with_suffix(".md"), "\n".join(lines) + "\n")
    png = C.plot_or_skip(plot, done, meta, base.with_suffix(".png"), every=0 if final else 20)
    return [base.with_suffix(".md"), base.with_suffix(".json")] + ([png] if png else [])


def plot(done: list[dict], meta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = {"plasmodium": "tab:blue", "strains": "tab:red"}
    for task in TASKS:
        for init, style in (("pretrained", "o-"), ("scratch", "s--")):
            rs = sorted((r for r in done if (r["task"], r["init"]) == (task, init)), key=lambda r: r["context"])
            if rs:
                ax.plot([r["context"] for r in rs], [r["accuracy"] for r in rs], style, color=colors[task],
                        label=f"{task} ({rs[0]['classes']} classes), {init}")
        rs = [r for r in done if r["task"] == task]
        if rs:
            ax.axhline(1 / rs[0]["classes"], color=colors[task], ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (bp)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"plasmodium: chromosome split; strains: random-block split ({meta['device']})", fontsize=8)
    out = C.save_png(fig, path)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU check: lengths 64/256, 1k training bases per run, the d_model 32 model")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[2 ** k for k in range(10, 17, 2)])
    ap.add_argument("--pretrained", default=None, help="checkpoint from dna_pretrain_context.py (--save-ckpt)")
    ap.add_argument("--backbone", default="mamba_dna_paper_small", help="without --pretrained")
    ap.add_argument("--backbone-overrides", default=None, help="JSON dict, without --pretrained")
    ap.add_argument("--tokens", default="auto", help="training bases per run, or 'auto' (needs --time-budget)")
    ap.add_argument("--batch-tokens", type=int, default=1 << 17, help="bases per batch (batch = this // length)")
    ap.add_argument("--block-size", type=int, default=None, help="strains: block size (default: the longest length)")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="strains: fraction of blocks held out")
    ap.add_argument("--test-bases", type=int, default=1 << 20, help="test windows per label = test_bases // length ...")
    ap.add_argument("--test-windows", type=int, default=64, help="... at most this many ...")
    ap.add_argument("--min-test-windows", type=int, default=12, help="... and at least this many")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds for the whole script")
    ap.add_argument("--safety", type=float, default=0.85)
    ap.add_argument("--run-overhead", type=float, default=None, help="planned seconds per run besides training steps "
                    "(default 3 on GPU and CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers (default 0: reading a step's windows takes milliseconds)")
    ap.add_argument("--data-dir", default=None, help="folder holding the FASTA files (--stage-data makes it)")
    ap.add_argument("--stage-data", default=None, metavar="DIR", help="copy the FASTA files into DIR and exit")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--work-dir", default="runs/dna_context_sweep")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    ap.add_argument("--append", action="store_true", help="keep the rows already in this tag's results file")
    ap.add_argument("--from-json", default=None, metavar="JSON", help="rewrite the markdown and the plot of a results "
                    "JSON (e.g. one written on the GPU machine) into --out, with --tag or the JSON's tag, and exit")
    args, given = C.parse_args(ap, argv)
    if args.stage_data:
        C.stage_data(args.stage_data, list(C.DATA))
        return 0
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        tag = args.tag or Path(args.from_json).stem.removeprefix("dna_context_sweep_")
        print("wrote " + ", ".join(map(str, write_results(res["rows"], res["meta"], Path(args.out), tag))))
        return 0
    C.apply_tiny(args, given, TINY)
    args.lengths = sorted(set(args.lengths))
    args.block_size = args.block_size or max(args.lengths)
    clock = C.Clock(args.time_budget)
    gpu = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    args.num_workers = args.num_workers if args.num_workers is not None else 0
    args.run_overhead = args.run_overhead if args.run_overhead is not None else 3.0
    if not gpu:
        C.set_cpu_threads()
    if args.pretrained and not Path(args.pretrained).is_file():
        raise SystemExit(f"--pretrained {args.pretrained}: no such checkpoint; run dna_pretrain_context.py first "
                         f"(its --save-ckpt) or leave --pretrained out and --inits scratch")
    inits = [i for i in args.inits if i == "scratch" or args.pretrained]
    if len(inits) < len(args.inits):
        print("no --pretrained checkpoint: from-scratch runs only", flush=True)
    args.arch = architecture(args)
    for task in args.tasks:  # fail before any training when a file is missing
        for fs in TASKS[task]["files"].values():
            for f in fs:
                C.data_path(f, args.data_dir)
    runs = [(t, i, L) for L in [min(args.lengths), max(args.lengths)] + C.bisect_order(args.lengths[1:-1])
            for t in args.tasks for i in inits]
    sps = probe(args) if args.tokens == "auto" else None
    if args.tokens == "auto":
        if args.time_budget is None:
            raise SystemExit("--tokens auto needs --time-budget (or give --tokens N)")
        # test time: every label's test windows through a forward pass, about a third of a training step per batch
        test_s = sum(len(TASKS[t]["files"]) * test_windows(L, args) * L for t, _, L in runs) / len(runs) \
            / args.batch_tokens * sps / 2.5
        left = clock.left() * args.safety - len(runs) * (args.run_overhead + test_s)
        steps = int(left / (len(runs) * sps))
        if steps < 4:
            raise SystemExit(f"--time-budget {args.time_budget}: {clock.left():.0f} s left leave {steps} steps per run "
                             f"({sps:.3f} s per step, {len(runs)} runs); raise the budget or drop lengths")
    else:
        test_s = 0.0
        steps = max(1, int(args.tokens) // args.batch_tokens)
    args.lr_warmup_steps = args.lr_warmup_steps if args.lr_warmup_steps is not None else max(1, steps // 10)
    backbone, overrides = args.arch
    meta = {**C.run_meta(args, argv),
            "model": f"DNAClassifier(backbone={backbone}, overrides={json.dumps(overrides)}, single-base input, mean "
                     f"pooling); init pretrained = backbone and embedding of {args.pretrained or '(none)'} "
                     f"(chrX causal LM); AdamW lr {args.lr}, {args.lr_warmup_steps} warmup steps then cosine, "
                     f"precision {args.precision}",
            "budget": f"{steps} steps × {args.batch_tokens:,} bases = {steps * args.batch_tokens:,} training bases per run "
                      f"(batch = {args.batch_tokens:,} // length windows); time budget {args.time_budget} s"
                      + (f", planned from a probe of {sps:.3f} s per step" if sps else ""),
            "test": f"test windows per label = {args.test_bases:,} // length, between {args.min_test_windows} and "
                    f"{args.test_windows}; fixed, evenly spaced, in held-out chromosomes (plasmodium) or blocks (strains)"}
    print(json.dumps({"plan": {"steps": steps, "runs": len(runs), "seconds_per_step": sps}}), flush=True)
    out, tag = Path(args.out), args.tag or args.device.split(":")[0]
    rows = []
    previous = C.read_json(out / f"dna_context_sweep_{tag}.json") if args.append else None
    if previous:
        rows = previous["rows"]
    planned = sps * steps if sps else None
    for task, init, L in runs:
        need = (planned or 0) + args.run_overhead + test_s
        rows = [r for r in rows if (r["task"], r["init"], r["context"]) != (task, init, L)]
        if args.time_budget is not None and clock.left() < need * 1.05:
            rows.append({"task": task, "split": split_name(task, args), "init": init, "context": L, "accuracy": None,
                         "status": f"not run: {clock.left():.0f} s left of the time budget, about {need:.0f} s needed"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        cap = (planned * 1.5 + 10) if planned else 1e9
        if args.time_budget is not None:
            cap = min(cap, clock.left() - args.run_overhead - test_s)
        rows.append(run_one(task, init, L, args, steps, cap))
        meta["total_s"] = round(clock.elapsed(), 1)
        write_results(rows, meta, out, tag, final=False)
    paths = write_results(rows, meta, out, tag)
    print(f"dna_context_sweep: {sum(r.get('accuracy') is not None for r in rows)} runs in {clock.elapsed() / 60:.1f} min; "
          f"wrote " + ", ".join(map(str, paths)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
