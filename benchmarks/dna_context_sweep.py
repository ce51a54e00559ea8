#!/usr/bin/env python
"""DNA classification accuracy against context length, on tasks whose split is honest (issue 15, item 2).

Task choice (the results file repeats it with this run's numbers). The target is a rise of >= 10 points from
2^10 to the best length, so a task must be neither solved at 1 kb nor hopeless at 64 kb, and the split must keep
every held-out base out of training.

* ``enterobacteria`` (the headline task): E. coli K-12 MG1655 against K. pneumoniae HS11286, the closest pair
  of species these machines hold (same family), one genome per species, split by region: the last
  ``--test-fraction`` of every record (chromosome and plasmids) is held out. Species identity is a genome-wide
  property (base and codon composition, k-mer spectrum) that one kilobase shows only weakly, while every further
  base adds evidence, so accuracy can rise with length for a reason that needs no memorisation; with one genome
  per species no homologous copy of a held-out region sits in training. (Adding V. cholerae O395 as a third
  class only adds windows that are easy at every length.)
* ``plasmodium``: P. falciparum (``genome_1.fa.gz``, 14 chromosomes) against P. knowlesi (``cigar_ref.fa.gz``,
  contigs named ``Pk.<chromosome>.<n>``), split by chromosome (``split: named``): chromosomes 4, 8 and 12 of
  both species are held out whole. Honest and context helps, but it is near its ceiling at 1 kb (its Markov
  anchor is already at 0.98 there, ``dna_context_sweep_anchor_cpu.md``), so it cannot show 10 points; it is kept
  as the second task.
* ``strains`` (five S. aureus), ``vcholerae4`` (four V. cholerae) and ``kpneumoniae4`` (four K. pneumoniae):
  strains of one species, split by random non-overlapping blocks of ``--block-size`` bases across each genome
  (20% of each genome's blocks held out). Not run by default: the genomes are ~99% identical, what tells a strain
  apart in a held-out block (its own alleles there) was never in training, and the other strains' copies of
  that locus *are* in training, so a model that memorises is pulled towards a wrong strain. The Markov-classifier
  anchor measures this (``--anchor-only --tasks enterobacteria plasmodium strains vcholerae4 kpneumoniae4`` on
  CPU, ``results/dna_context_sweep_anchor_cpu.md``): at or below chance at every length.

Each task is run from scratch and fine-tuned from the chrX causal LM of ``dna_pretrain_context.py``
(``--pretrained``: its backbone and embedding, with the same architecture read from the checkpoint), at every
length in ``--lengths``, with the same number of training bases per run (``--tokens``; ``auto`` plans it from a
measured probe and ``--time-budget``) and the same bases per batch (``--batch-tokens``). Single-base
resolution (no k-mer stem, so the pretrained weights see what they were trained on), mean pooling,
reverse-complement augmentation.

Anchor, measured in the same run on the same splits and the same test windows: an order-k Markov classifier
(per class, k-mer counts of its training split on both strands, add-half smoothing; a window goes to the
class whose chain gives it the highest likelihood). It needs no GPU and no training, and shows how much a
window of each length tells apart by composition alone.

Results: ``<out>/dna_context_sweep_<tag>.{md,json,png}``, rewritten after every run.

CPU check (CI): ``python benchmarks/dna_context_sweep.py --tiny --pretrained runs/dna_pretrain_context/chrX_pretrained.ckpt``
GPU (one H200), after ``dna_pretrain_context.py`` wrote the checkpoint: stage this script's files (only those of
``--tasks``) and the checkpoint into the ignored folder the device call carries, then run:
    python benchmarks/dna_context_sweep.py --stage-data .cache/dna --stage-xz --stage-ckpt <results>/chrX_pretrained.ckpt
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/dna_context_sweep.py --device cuda --data-dir .cache/dna \\
        --time-budget 470 --pretrained .cache/dna/chrX_pretrained_fp16.ckpt --out "$OUT" --tag h200
(staged: 13.9 MiB of FASTA as xz and a 2.8 MiB float16 checkpoint)
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
_BLOCKS = "random blocks: {test:.0%} of each genome's {block:,}-bp blocks held out (memorisation + context)"
TASKS = {
    "enterobacteria": {
        "files": {"E_coli": ["MG1655-K12.fasta.gz"], "K_pneumoniae": ["Klebs_HS11286.fna.xz"]},
        "split": "region", "short": "region",
        "split_name": "by region: the last {test:.0%} of every record (chromosomes, plasmids) held out; one genome "
                      "per species",
    },
    "plasmodium": {
        "files": {"P_falciparum": ["genome_1.fa.gz"], "P_knowlesi": ["cigar_ref.fa.gz"]},
        "split": "named", "split_records": {"test": rf"MAL({_CHR})|Pk\.({_CHR})\.\d+"}, "short": "chromosome",
        "split_name": f"by chromosome: chromosomes {', '.join(map(str, HELD_OUT_CHROMOSOMES))} of both species held out",
    },
    "strains": {
        "files": {s.split("_")[0]: [f"{s}.fasta.gz"] for s in C.AUREUS},
        "split": "blocks", "short": "random blocks", "split_name": _BLOCKS,
    },
    "vcholerae4": {
        "files": {s: [f"{s}.fasta.gz"] for s in C.VCHOLERAE},
        "split": "blocks", "short": "random blocks", "split_name": _BLOCKS,
    },
    "kpneumoniae4": {
        "files": {s: [f"{s}.fna.xz"] for s in C.KPNEUMONIAE},
        "split": "blocks", "short": "random blocks", "split_name": _BLOCKS,
    },
}
DEFAULT_TASKS = ["enterobacteria", "plasmodium"]
TINY = {"lengths": [64, 256], "tokens": "1024", "batch_tokens": 512, "test_windows": 4, "min_test_windows": 4,
        "backbone_overrides": '{"d_model": 32, "n_layer": 2, "d_state": 4}', "tag": "cpu_tiny", "lr": 3e-3,
        "markov_orders": [2, 4]}


def stage_ckpt(src: str, dest: Path) -> Path:
    """A float16 copy of a ``dna_pretrain_context.py`` checkpoint in ``dest`` (half the bytes, for the device
    machine's small working tree): floating tensors rounded to float16 (relative error <= 2^-11), everything else
    as it was; ``pretrained_ckpt`` loads it into the float32 model."""
    import io

    import torch

    from mambaverse.atomic import atomic_write_bytes

    ck = C.load_checkpoint(src, "--stage-ckpt")
    ck["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    ck["staged"] = f"float16 copy of {Path(src).name}"
    buf = io.BytesIO()
    torch.save(ck, buf)
    out = dest / (Path(src).stem + "_fp16.ckpt")
    atomic_write_bytes(out, buf.getvalue())
    print(f"staged {out} ({out.stat().st_size / 2**20:.1f} MiB, from {Path(src).stat().st_size / 2**20:.1f} MiB)")
    return out


def architecture(args) -> tuple[str, dict]:
    """Backbone preset and overrides: those of the pretrained checkpoint when there is one (scratch runs use the
    same, so the two inits differ only in their starting weights), else the command line's."""
    if args.pretrained:
        ck = C.load_checkpoint(args.pretrained, "--pretrained")
        hp = ck.get("hyper_parameters") or {}
        pre = ck.get("pretraining") or {}
        args.pretrained_note = "chrX causal LM"
        args.pretrained_note = "; ".join(x for x in (
            (f"chrX causal LM at context {pre['context']:,}, seed {pre.get('seed')}, {pre.get('steps')} steps, "
             f"held-out {pre['val_bpb']:.4f} bits/base") if "context" in pre and pre.get("val_bpb") is not None
            else "chrX causal LM", ck.get("staged")) if x)
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
        kw["split_fractions"] = (1.0 - args.test_fraction, 0.0, args.test_fraction)
        if spec["split"] == "blocks":
            kw["block_size"] = args.block_size
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


def markov_classifier(task: str, args) -> list[dict]:
    """The anchor: order-k Markov chains per class (k-mer counts of the class's training spans, both strands,
    add-half smoothing), each test window of each length given to the class whose chain scores it highest.
    Rows {task, context, order, accuracy, test_windows}; the test windows are the classifier runs' own."""
    import numpy as np

    def to4(ids):  # A, C, G, T -> 0..3; anything else -> 255 (breaks every k-mer that contains it)
        x = ids.astype(np.int16) - 4
        return np.where((x >= 0) & (x < 4), x, 255).astype(np.uint8)

    def codes(x, k1):
        n = max(0, len(x) - k1 + 1)
        ok, code = np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)
        for j in range(k1):
            xj = x[j:j + n]
            ok &= xj < 4
            code = code * 4 + np.minimum(xj, 3)
        return code[ok]

    rows, tables = [], None
    for L in args.lengths:
        t0 = time.time()
        dm = datamodule(task, L, args, 1, 1, test_windows(L, args))
        dm.setup("fit")
        read = lambda w: to4(dm.tokenizer.encode(dm.sources[w.source].fetch(w.record, w.start, w.end)))  # noqa: E731
        if tables is None:  # the training spans do not depend on the window length
            tables = {}
            for k in args.markov_orders:
                logp = []
                for li in range(dm.num_classes):
                    counts = np.zeros(4 ** (k + 1), dtype=np.int64)
                    for sp in (s for s in dm.spans["train"] if s.label == li):
                        x = read(sp)
                        for strand in (x, np.where(x < 4, 3 - x, 255).astype(np.uint8)[::-1]):
                            counts += np.bincount(codes(strand, k + 1), minlength=counts.size)
                    t = counts.reshape(-1, 4).astype(np.float64) + 0.5
                    logp.append(np.log(t / t.sum(1, keepdims=True)).reshape(-1))
                tables[k] = np.stack(logp)
        wins = dm.fixed_windows("test")
        seqs = [read(w) for w in wins]
        for k in args.markov_orders:
            pred = [int(np.argmax(tables[k][:, codes(x, k + 1)].sum(1))) for x in seqs]
            acc = float(np.mean([p == w.label for p, w in zip(pred, wins)])) if wins else None
            rows.append({"task": task, "split": split_name(task, args), "context": L, "order": k, "accuracy": acc,
                         "test_windows": len(wins),
                         "seconds": round(time.time() - t0, 1)})
            print(json.dumps({"markov_classifier": rows[-1]}), flush=True)
    return rows


def _anchor_job(args, queue) -> None:
    try:
        queue.put([r for task in args.tasks for r in markov_classifier(task, args)])
    except BaseException as exc:  # noqa: BLE001 - reported in the results instead of the anchor
        queue.put([{"error": f"{type(exc).__name__}: {exc}"}])


def probe(args) -> float:
    """Seconds per optimizer step (``--batch-tokens`` bases) at the shortest and the longest length, random tokens,
    the same model and precision; the slower of the two plans the budget."""
    import torch

    dev = torch.device(args.device)
    model = model_for(args.tasks[0], "scratch", args).to(dev)
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


def test_note(args) -> str:
    return (f"test windows per label = {args.test_bases:,} // length, between {args.min_test_windows} and "
            f"{args.test_windows}; fixed, evenly spaced over the held-out region, chromosomes or blocks (they overlap "
            f"where the held-out bases are fewer than the windows need)")


def split_name(task: str, args) -> str:
    return TASKS[task]["split_name"].format(block=args.block_size, test=args.test_fraction)


TASK_CHOICE = [
    "## Task choice",
    "",
    "The target is a rise of >= 10 points from 2^10 to the best length, so a task must be neither solved at 1 kb "
    "nor hopeless at 64 kb, and the split must keep every held-out base out of training.",
    "",
    "- **enterobacteria** (E. coli K-12 MG1655 vs K. pneumoniae HS11286, the closest pair of species on these "
    "machines, both Enterobacteriaceae; split by region, one genome per species): species identity is genome-wide "
    "(base and codon composition, k-mer spectrum), a single kilobase shows it only weakly, and each further base "
    "adds evidence, so context can help without memorisation; with one genome per species no homologous copy of a "
    "held-out region is in training. The Markov-classifier anchor shows the room: how far composition alone gets "
    "at each length (`dna_context_sweep_anchor_cpu.md` has it for every candidate task).",
    "- **plasmodium** (P. falciparum vs P. knowlesi, held-out chromosomes): honest and context helps, but it starts "
    "near its ceiling at 2^10 (see its rows and the anchor's above), so it cannot show 10 points; kept as the "
    "second task.",
    "- **strains of one species** (five S. aureus, four V. cholerae, four K. pneumoniae; random-block split) are not "
    "run on the GPU: ~99% identical genomes, the held-out strain's own alleles in a held-out block were never in "
    "training while the other strains' copies of that locus were, so memorisation points to a wrong strain. "
    "`dna_context_sweep_anchor_cpu.md` measures it with the same anchor: at or below chance at every length.",
]


def write_results(rows: list[dict], meta: dict, out: Path, tag: str, final: bool = True,
                  markov: list[dict] | None = None, choice: bool = True) -> list[Path]:
    base = out / f"dna_context_sweep_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    markov = markov or []
    C.write_json(base.with_suffix(".json"), {"meta": meta, "rows": rows, "markov": markov})
    lines = ["# DNA classification accuracy against context length", ""] + C.meta_lines(meta) + [""]
    for task in sorted({r["task"] for r in rows + markov}):
        r = next(r for r in rows + markov if r["task"] == task)
        lines.append(f"- split of {task} ({TASKS[task]['short']}): {r['split']}")
    lines.append("")
    done = [r for r in rows if r.get("accuracy") is not None]
    if rows:
        lines += ["| task | split | init | context (bp) | 2^k | accuracy | macro-F1 | MCC | test windows | steps × batch | "
                  "train bases | train s | status |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in sorted(done, key=lambda r: (r["task"], r["init"], r["context"])):
            lines.append(f"| {r['task']} | {TASKS[r['task']]['short']} | {r['init']} | {r['context']:,} | "
                         f"{r['context'].bit_length() - 1} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['mcc']:.3f} | "
                         f"{r['test_windows']} | {r['steps']} × {r['batch']} | {r['train_bases']:,} | {r['train_s']} | "
                         f"{r['status']} |")
        for r in rows:
            if r.get("accuracy") is None:
                lines.append(f"| {r['task']} | {TASKS[r['task']]['short']} | {r['init']} | {r['context']:,} | "
                             f"{r['context'].bit_length() - 1} | - | - | - | - | - | - | - | {r['status']} |")
    if markov:
        lines += ["", "Anchor (same run, same splits, same test windows): order-k Markov classifier, per class k-mer "
                  "counts of its training split (both strands), add-half smoothing, highest likelihood wins.", "",
                  "| task | order k | " + " | ".join(f"{L:,} bp" for L in sorted({m['context'] for m in markov})) + " |",
                  "|---|---:|" + "---:|" * len({m["context"] for m in markov})]
        for task, k in sorted({(m["task"], m["order"]) for m in markov}):
            by = {m["context"]: m for m in markov if (m["task"], m["order"]) == (task, k)}
            lines.append(f"| {task} | {k} | " + " | ".join(
                (f"{by[L]['accuracy']:.3f} ({by[L]['test_windows']})" if L in by and by[L]["accuracy"] is not None
                 else "-") for L in sorted({m["context"] for m in markov})) + " |")
        lines.append("")
        lines.append("(accuracy, with the number of test windows in brackets)")
    lines += ["", "## Summary (computed from the rows above)", ""]
    for task, init in sorted({(r["task"], r["init"]) for r in done}):
        rs = sorted((r for r in done if (r["task"], r["init"]) == (task, init)), key=lambda r: r["context"])
        best = max(rs, key=lambda r: r["accuracy"])
        gain = best["accuracy"] - rs[0]["accuracy"]
        lines.append(f"- {task}, {init}: {rs[0]['accuracy']:.3f} at {rs[0]['context']:,} bp, best {best['accuracy']:.3f} at "
                     f"{best['context']:,} bp (gain {100 * gain:+.1f} points; target +10: {'met' if gain >= 0.10 else 'not met'}); "
                     f"chance {1 / rs[0]['classes']:.3f}")
    for task, k in sorted({(m["task"], m["order"]) for m in markov if m["accuracy"] is not None}):
        ms = sorted((m for m in markov if (m["task"], m["order"]) == (task, k) and m["accuracy"] is not None),
                    key=lambda m: m["context"])
        best = max(ms, key=lambda m: m["accuracy"])
        lines.append(f"- anchor {task}, order-{k} Markov classifier: {ms[0]['accuracy']:.3f} at {ms[0]['context']:,} bp, "
                     f"best {best['accuracy']:.3f} at {best['context']:,} bp (gain {100 * (best['accuracy'] - ms[0]['accuracy']):+.1f} points); "
                     f"chance {1 / len(TASKS[task]['files']):.3f}")
    if choice:
        lines += [""] + TASK_CHOICE
    C.write_text(base.with_suffix(".md"), "\n".join(lines) + "\n")
    png = C.plot_or_skip(plot, done, markov, meta, base.with_suffix(".png"), every=0 if final else 20)
    return [base.with_suffix(".md"), base.with_suffix(".json")] + ([png] if png else [])


def plot(done: list[dict], markov: list[dict], meta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = dict(zip(TASKS, ("tab:green", "tab:blue", "tab:red", "tab:purple", "tab:brown")))
    for task in TASKS:
        for init, style in (("pretrained", "o-"), ("scratch", "s--")):
            rs = sorted((r for r in done if (r["task"], r["init"]) == (task, init)), key=lambda r: r["context"])
            if rs:
                ax.plot([r["context"] for r in rs], [r["accuracy"] for r in rs], style, color=colors[task],
                        label=f"{task} ({rs[0]['classes']} classes), {init}")
        for k, mk in zip(sorted({m["order"] for m in markov if m["task"] == task}), "x+"):
            ms = sorted((m for m in markov if (m["task"], m["order"]) == (task, k) and m["accuracy"] is not None),
                        key=lambda m: m["context"])
            if ms:
                ax.plot([m["context"] for m in ms], [m["accuracy"] for m in ms], mk + ":", color=colors[task], lw=1,
                        label=f"{task}, order-{k} Markov classifier (anchor)")
        if any(r["task"] == task for r in done + markov):
            ax.axhline(1 / len(TASKS[task]["files"]), color=colors[task], ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (bp)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if done or markov:
        ax.legend(fontsize=6, loc="lower right")
    splits = "; ".join(sorted({f"{t}: {TASKS[t]['short']} split" for t in {r["task"] for r in done + markov}}))
    ax.set_title(f"{splits} ({meta['device']})", fontsize=8)
    out = C.save_png(fig, path)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU check: lengths 64/256, 1k training bases per run, the d_model 32 model")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=list(TASKS))
    ap.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[2 ** k for k in range(10, 17, 2)])
    ap.add_argument("--pretrained", default=None, help="checkpoint from dna_pretrain_context.py (--save-ckpt)")
    ap.add_argument("--backbone", default="mamba_dna_paper_small", help="without --pretrained")
    ap.add_argument("--backbone-overrides", default=None, help="JSON dict, without --pretrained")
    ap.add_argument("--tokens", default="auto", help="training bases per run, or 'auto' (needs --time-budget)")
    ap.add_argument("--batch-tokens", type=int, default=1 << 17, help="bases per batch (batch = this // length)")
    ap.add_argument("--block-size", type=int, default=None, help="block-split tasks: block size (default: twice the "
                    "longest length, so that a held-out block holds a test window at every length)")
    ap.add_argument("--test-fraction", type=float, default=0.25, help="region and block splits: fraction of every "
                    "record (region) or of its blocks (blocks) held out")
    ap.add_argument("--test-bases", type=int, default=1 << 21, help="test windows per label = test_bases // length ...")
    ap.add_argument("--test-windows", type=int, default=128, help="... at most this many ...")
    ap.add_argument("--min-test-windows", type=int, default=16, help="... and at least this many")
    ap.add_argument("--markov-orders", nargs="*", type=int, default=[4, 8], help="orders of the Markov-classifier anchor "
                    "(none: no anchor)")
    ap.add_argument("--anchor-only", action="store_true", help="run only the Markov-classifier anchor of --tasks (CPU, "
                    "numpy) and write its table")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds for the whole script")
    ap.add_argument("--safety", type=float, default=0.9, help="fraction of the time left that the plan fills")
    ap.add_argument("--run-overhead", type=float, default=None, help="planned seconds per run besides training steps "
                    "(default 3 on GPU and CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers (default 0: reading a step's windows takes milliseconds)")
    ap.add_argument("--data-dir", default=None, help="folder holding the FASTA files (--stage-data makes it)")
    ap.add_argument("--stage-data", default=None, metavar="DIR", help="copy the FASTA files of --tasks (only those) "
                    "into DIR and exit")
    ap.add_argument("--stage-ckpt", default=None, metavar="CKPT", help="with --stage-data: also write a float16 copy "
                    "of this pretrained checkpoint there (<name>_fp16.ckpt, half the bytes; it loads into float32)")
    ap.add_argument("--stage-xz", action="store_true", help="with --stage-data: recompress .gz files with xz -9 (chrX "
                    "18.9 -> 15.0 MiB, about 3 CPU minutes once), for a small device working tree")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--work-dir", default="runs/dna_context_sweep")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    ap.add_argument("--append", action="store_true", help="keep the rows already in this tag's results file")
    ap.add_argument("--from-json", default=None, metavar="JSON", help="rewrite the markdown and the plot of a results "
                    "JSON (e.g. one written on the GPU machine) into --out, with --tag or the JSON's tag, and exit")
    args, given = C.parse_args(ap, argv)
    if args.stage_data:
        C.check_out_dir(args.stage_data, "--stage-data")
        if args.stage_ckpt:  # fail before copying data
            C.load_checkpoint(args.stage_ckpt, "--stage-ckpt")
        C.stage_data(args.stage_data, list(dict.fromkeys(f for t in args.tasks for fs in TASKS[t]["files"].values()
                                                         for f in fs)), xz=args.stage_xz)
        if args.stage_ckpt:
            stage_ckpt(args.stage_ckpt, Path(args.stage_data))
        return 0
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        tag = args.tag or Path(args.from_json).stem.removeprefix("dna_context_sweep_")
        print("wrote " + ", ".join(map(str, write_results(res["rows"], res["meta"], Path(args.out), tag,
                                                         markov=res.get("markov")))))
        return 0
    C.apply_tiny(args, given, TINY)
    C.check_lengths(args.lengths)
    C.check_time_budget(args.time_budget)
    C.check_out_dir(args.out, "--out")
    C.check_out_dir(args.work_dir, "--work-dir")
    args.lengths = sorted(set(args.lengths))
    args.block_size = args.block_size or 2 * max(args.lengths)
    args.num_workers = args.num_workers if args.num_workers is not None else 0
    if args.anchor_only:
        for task in args.tasks:
            for fs in TASKS[task]["files"].values():
                for f in fs:
                    C.data_path(f, args.data_dir)
        t0 = time.time()
        markov = [r for task in args.tasks for r in markov_classifier(task, args)]
        meta = {**C.run_meta(args, argv), "test": test_note(args), "total_s": round(time.time() - t0, 1)}
        tag = args.tag or "anchor_cpu"
        print("wrote " + ", ".join(map(str, write_results([], meta, Path(args.out), tag, markov=markov))))
        return 0
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
    if "pretrained" in inits:  # a checkpoint that does not fit the backbone fails now, not after the scratch runs
        model_for(args.tasks[0], "pretrained", args)
    for task in args.tasks:  # fail before any training when a file is missing
        for fs in TASKS[task]["files"].values():
            for f in fs:
                C.data_path(f, args.data_dir)
    runs = [(t, i, L) for L in [min(args.lengths), max(args.lengths)] + C.bisect_order(args.lengths[1:-1])
            for t in args.tasks for i in inits]
    runs = list(dict.fromkeys(runs))  # one length only: the shortest is the longest
    for task in args.tasks:  # decompress and index every file once, before the anchor's child forks
        datamodule(task, min(args.lengths), args, 1, 1, 1).setup("fit")
    anchor = C.BackgroundJob(_anchor_job, args, "markov classifier anchor", bool(args.markov_orders))  # forked before anything touches CUDA
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
                     f"pooling); "
                     + (f"init pretrained = backbone and embedding of {args.pretrained} ({args.pretrained_note}); "
                        if args.pretrained else "no pretrained checkpoint; ")
                     + f"AdamW lr {args.lr}, {args.lr_warmup_steps} warmup steps then cosine, "
                     f"precision {args.precision}",
            "budget": f"{steps} steps × {args.batch_tokens:,} bases = {steps * args.batch_tokens:,} training bases per run "
                      f"(batch = {args.batch_tokens:,} // length windows); time budget {args.time_budget} s"
                      + (f", planned from a probe of {sps:.3f} s per step" if sps else ""),
            "test": test_note(args)}
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
        write_results(rows, meta, out, tag, final=False, markov=anchor.poll())
    markov = anchor.poll(wait=max(1.0, min(300.0, clock.left() - 3)) if args.time_budget is not None else 600.0)
    meta["total_s"] = round(clock.elapsed(), 1)
    paths = write_results(rows, meta, out, tag, markov=markov)
    print(f"dna_context_sweep: {sum(r.get('accuracy') is not None for r in rows)} runs in {clock.elapsed() / 60:.1f} min; "
          f"wrote " + ", ".join(map(str, paths)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(C.run_main(main))
