#!/usr/bin/env python
"""Causal DNA LM pretraining on human chrX: held-out bits per base against context length (issue 15, item 1).

The Mamba paper's context-length experiment (Gu & Dao 2023, sec. 4.3.2, Figure 5 right), on the data this
machine has: human chrX (``hs37chrXtrunc.fa.gz``, the first 70 Mb of hs37 chrX, smalt-examples).

* Split by chromosome region: training windows come from ``[0, a)`` and the held-out bases are ``[a, n)``,
  the last ``--val-fraction`` of the chromosome (the q-arm end; no N there); no training window reaches it.
* Model: ``mamba_dna_paper_small``, the paper's context-scaling size (6 Transformer-style layers of width 128 =
  12 Mamba blocks, d_state 16, 1.45M parameters), trained with ``DNALanguageModel`` (next base) and a
  Lightning ``Trainer`` on a ``FastaDataModule``, the suite's own training path.
* Same training tokens at every context length L: each optimizer step reads the same
  ``--batch-windows`` random windows of ``max(lengths) + 1`` bases (the same windows, in the same order, for
  every L of one seed) and cuts them into ``max(lengths) / L`` sequences of ``L + 1`` bases (L inputs, L
  next-base targets), so a longer context means fewer, longer sequences and the number of steps is the same.
* Sequence-length warmup (``mambaverse.training.SequenceLengthWarmup``, here cutting the same windows into
  shorter pieces, so every step keeps its token count): runs at L > ``--start-len`` begin at ``--start-len``
  and double every ``E`` steps up to L, where ``E`` makes the longest run spend ``--length-warmup-fraction`` of
  its steps warming up.
* Long sequences train whole, with exact gradients; ``--chunk-len`` cuts them into state-carrying chunks
  (``backbone_overrides.chunk_len``) when device memory needs it (``auto``: only if an unchunked step at the
  longest length runs out of memory in the probe).
* Evaluation: the held-out region is tiled into ``--val-tiles`` consecutive tiles of ``max(lengths)`` bases,
  and each tile is cut into sequences of L + 1 bases overlapping by one, so every model predicts exactly the
  same held-out bases, each once, with the context its own length gives (N targets are skipped).
* Noise: the ``--noise-length`` run is repeated with every seed in ``--seeds``.
* Anchor, measured in the same run: order-k Markov chains (k-mer counts of the whole training region, both
  strands, add-one smoothing) on the same held-out bases.

Results go to ``<out>/dna_pretrain_context_<tag>.{md,json,png}`` after every run (a cut-short run leaves a
partial table); the longest-context model of the first seed is written to ``--save-ckpt`` (state_dict and
hyperparameters, readable by ``pretrained_ckpt`` of the DNA tasks) for ``dna_context_sweep.py``.

CPU check (CI runs it): ``python benchmarks/dna_pretrain_context.py --tiny``
GPU (one H200; data staged into an ignored folder first: ``--stage-data .cache/dna``):
    python benchmarks/dna_pretrain_context.py --device cuda --data-dir .cache/dna --time-budget 470 \\
        --save-ckpt .cache/dna/chrX_pretrained.ckpt --out "$OUT" --tag h200
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dna_common as C  # noqa: E402

CHRX = "hs37chrXtrunc.fa.gz"
TINY = {"lengths": [64, 256, 1024], "backbone_overrides": '{"d_model": 32, "n_layer": 2, "d_state": 4}', "tokens": "4096",
        "val_tiles": 2, "chunk_len": "512", "markov_orders": [2, 4], "markov_train_bases": 2_000_000,
        "lr": 1e-2, "tag": "cpu_tiny", "time_budget": None}


# ------------------------------------------------------------------------------------------------ pieces
def fold(ids, length: int):
    """(B, T + 1) token ids -> (B * T / length, length + 1): consecutive sequences overlapping by one base, so
    that the T next-base targets of each window are all kept, each once."""
    T = ids.shape[1] - 1
    if T % length:
        raise ValueError(f"fold: window of {T} + 1 bases does not cut into sequences of {length}")
    return ids.unfold(1, length + 1, length).reshape(-1, length + 1)


def make_warmup(target_len: int, start_len: int, every: int):
    """A SequenceLengthWarmup whose "crop" cuts the whole batch into shorter sequences instead of dropping the
    rest of each window: the token count per step stays the same through the warmup (the paper's setting of a
    fixed number of tokens per batch)."""
    from mambaverse.training import SequenceLengthWarmup

    class FoldingLengthWarmup(SequenceLengthWarmup):
        def crop_batch(self, trainer, batch):
            if self.interval == "step":
                self.current = self.length_at(trainer.global_step)
            t = batch["input_ids"]
            piece = self.current - self.extra
            if t.shape[1] - self.extra > piece:
                batch["input_ids"] = fold(t, piece)
            return batch

    return FoldingLengthWarmup(target_len=target_len, start_len=min(start_len, target_len), every=max(1, every),
                               interval="step", mode="crop", extra=1)


class TiledRegion:
    """The held-out region as ``tiles`` consecutive windows of ``T + 1`` bases (tile i starts at start + i*T)."""

    def __init__(self, dm, tiles: int, T: int):
        span = dm.spans["val"][0]
        self.record, self.start = span.record, span.start
        self.tiles = min(tiles, (span.end - span.start - 1) // T)
        if self.tiles < 1:
            raise SystemExit(f"held-out region {span.record}:{span.start}-{span.end} is shorter than one tile of "
                             f"{T + 1} bases; raise --val-fraction or lower the lengths")
        self.T, self.src, self.tok = T, dm.sources[span.source], dm.tokenizer

    def ids(self, i: int):
        a = self.start + i * self.T
        return self.tok.encode(self.src.fetch(self.record, a, a + self.T + 1))

    def loader(self, length: int):
        import torch
        from torch.utils.data import DataLoader

        tiles = [torch.from_numpy(self.ids(i).astype("int64")) for i in range(self.tiles)]
        return DataLoader(tiles, batch_size=1, collate_fn=lambda b: {"input_ids": fold(b[0][None], length)})

    @property
    def bases(self) -> int:
        return self.tiles * self.T


class History:
    """Per-step training loss (bits per base) and sequence length, for the learning-curve panel."""

    def __init__(self):
        import lightning.pytorch as pl

        hist = self

        class _CB(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                if loss is not None:
                    hist.rows.append((trainer.global_step, int(batch["input_ids"].shape[1]) - 1,
                                      float(loss.detach()) / math.log(2)))

        self.rows: list[tuple[int, int, float]] = []
        self.callback = _CB()


# ------------------------------------------------------------------------------------------------ anchor
def markov_anchor(dm, tiled: TiledRegion, orders: list[int], max_train_bases: int | None) -> list[dict]:
    """Order-k Markov chains with add-one smoothing, counted on the training region (both strands), scored on
    the held-out tiles' targets (those whose k preceding bases in the region are A/C/G/T)."""
    import numpy as np

    tok = dm.tokenizer
    train = []
    for span in dm.spans["train"]:
        n = span.end - span.start if max_train_bases is None else min(span.end - span.start, max_train_bases)
        train.append(tok.encode(dm.sources[span.source].fetch(span.record, span.start, span.start + n)))
    a = tiled.start
    val = tok.encode(tiled.src.fetch(tiled.record, a, a + tiled.bases + 1))

    def to4(ids):  # A, C, G, T -> 0..3; anything else -> 255 (breaks every k-mer that contains it)
        x = ids.astype(np.int16) - 4
        return np.where((x >= 0) & (x < 4), x, 255).astype(np.uint8)

    def codes(x, k1):
        ok = np.ones(len(x) - k1 + 1, dtype=bool)
        code = np.zeros(len(x) - k1 + 1, dtype=np.int64)
        for j in range(k1):
            xj = x[j:len(x) - k1 + 1 + j]
            ok &= xj < 4
            code = code * 4 + np.minimum(xj, 3)
        return code[ok], ok

    rows = []
    for k in orders:
        t0 = time.time()
        counts = np.zeros(4 ** (k + 1), dtype=np.int64)
        for ids in train:
            x = to4(ids)
            for strand in (x, np.where(x < 4, 3 - x, 255).astype(np.uint8)[::-1]):
                for c0 in range(0, len(strand), 1 << 23):  # bounded memory: 8M-base pieces overlapping by k
                    c, _ = codes(strand[c0:c0 + (1 << 23) + k], k + 1)
                    counts += np.bincount(c, minlength=counts.size)
        table = counts.reshape(-1, 4).astype(np.float64) + 1.0
        logp = np.log2(table / table.sum(1, keepdims=True)).reshape(-1)
        c, ok = codes(to4(val), k + 1)
        rows.append({"order": k, "bpb": float(-logp[c].mean()), "targets": int(ok.sum()),
                     "train_bases": int(sum(len(t) for t in train)), "seconds": round(time.time() - t0, 1)})
        print(json.dumps({"markov": rows[-1]}), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ one run
def build_model(args, chunk_len):
    from mambaverse.genomics import DNALanguageModel

    overrides = dict(json.loads(args.backbone_overrides or "{}"))
    if chunk_len:
        overrides["chunk_len"] = int(chunk_len)
    return DNALanguageModel(backbone=args.backbone, backbone_overrides=overrides or None, objective="causal",
                            lr=args.lr, weight_decay=args.weight_decay,
                            warmup_steps=args.lr_warmup_steps if args.lr_warmup_steps is not None else 1)  # unset while probing


def probe(args, chunk_len, lengths: list[int]) -> tuple[dict, int | None]:
    """Seconds per optimizer step at the shortest and longest length, on random tokens, outside Lightning (the
    same model, optimizer and precision). With ``--chunk-len auto`` an out-of-memory step at the longest length
    switches chunking on. Returns ({length: seconds}, chunk_len)."""
    import torch

    dev = torch.device(args.device)
    amp = args.precision.startswith("bf16")
    T = max(lengths) * args.batch_windows
    out = {}
    for L in sorted({min(lengths), max(lengths)}, reverse=True):  # the longest first: it is the one memory limits
        while L not in out:
            oom = False
            model = build_model(args, chunk_len).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            ids = torch.randint(4, 8, (T // L, L + 1), device=dev)

            def step():
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss, _ = model.lm_loss(ids)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            try:
                out[L] = C.seconds_per_step(step, warm=1, timed=args.probe_steps, device=args.device)
            except torch.cuda.OutOfMemoryError:
                oom = True  # handled below, once the exception (and the tensors its frames hold) is gone
            del model, opt, ids, step
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if oom:
                # chunking bounds the memory of long sequences only; a short-sequence OOM is a batch problem
                if args.chunk_len != "auto" or chunk_len or L <= 65536:
                    raise SystemExit(f"probe: out of memory at length {L} (chunk_len {chunk_len}, {T:,} tokens per "
                                     f"step); lower --batch-windows or set --chunk-len")
                chunk_len = 65536
                print(f"probe: out of memory at {L} unchunked; chunk_len {chunk_len}", flush=True)
        print(json.dumps({"probe_length": L, "seconds_per_step": round(out[L], 4), "tokens_per_step": T}), flush=True)
    return out, chunk_len


def make_datamodule(args, seed: int, steps: int):
    """chrX windows of max(lengths) + 1 bases, region split: training in the first part, held out at the end."""
    from mambaverse.genomics import FastaDataModule

    dm = FastaDataModule({"human_chrX": [args.chrx]}, window=max(args.lengths) + 1, batch_size=args.batch_windows,
                         split="region", split_fractions=(1.0 - args.val_fraction, args.val_fraction, 0.0),
                         train_samples=steps * args.batch_windows, val_windows=0, test_windows=0,
                         max_n_fraction=args.max_n_fraction, rc_prob=0.5, cache_dir=args.cache_dir,
                         num_workers=args.num_workers, seed=seed)
    dm.setup("fit")
    return dm


def _markov_job(args, queue) -> None:
    """The anchor in a child process (numpy only, its own file handles), so that it overlaps the GPU runs."""
    try:
        dm = make_datamodule(args, args.seeds[0], 1)
        queue.put(markov_anchor(dm, TiledRegion(dm, args.val_tiles, max(args.lengths)), args.markov_orders,
                                args.markov_train_bases))
    except BaseException as exc:  # noqa: BLE001 - reported in the results instead of the anchor
        queue.put([{"error": f"{type(exc).__name__}: {exc}"}])


class Anchor:
    """Starts the Markov anchor beside the runs (a forked process, started before CUDA is touched) and hands
    its rows over once they exist."""

    def __init__(self, args):
        import multiprocessing as mp

        self.rows: list[dict] = []
        self.proc = None
        if not args.markov_orders:
            return
        make_datamodule(args, args.seeds[0], 1)  # decompress and index here, so both processes find the cache ready
        ctx = mp.get_context("fork")
        self.queue = ctx.Queue()
        self.proc = ctx.Process(target=_markov_job, args=(args, self.queue), daemon=True)
        self.proc.start()

    def poll(self, wait: float = 0.0) -> list[dict]:
        import queue as q

        if self.proc is not None and not self.rows:
            try:
                got = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except q.Empty:
                return self.rows
            errors = [r["error"] for r in got if "error" in r]
            if errors:
                print(f"markov anchor failed: {errors[0]}", flush=True)
            self.rows = [r for r in got if "error" not in r]
            self.proc.join(timeout=5)
        return self.rows


def run_one(args, L: int, seed: int, steps: int, every: int, chunk_len, tiled_holder: dict, max_seconds: float) -> dict:
    import lightning.pytorch as pl
    import torch

    pl.seed_everything(seed, verbose=False)
    T = max(args.lengths)
    dm = make_datamodule(args, seed, steps)
    if "tiled" not in tiled_holder:
        tiled_holder["tiled"] = TiledRegion(dm, args.val_tiles, T)
    tiled = tiled_holder["tiled"]
    model = build_model(args, chunk_len)
    hist = History()
    warm = make_warmup(L, args.start_len, every)
    gpu = args.device.startswith("cuda")
    trainer = pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision=args.precision, max_steps=steps,
                         max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[warm, hist.callback],
                         max_time={"seconds": max(1.0, max_seconds)}, default_root_dir=args.work_dir)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    train_s = time.time() - t0
    done = trainer.global_step
    t0 = time.time()
    # a trainer of its own: the fit trainer's limit_val_batches=0 would skip validate() too
    evaluator = pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision=args.precision, logger=False,
                           enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                           default_root_dir=args.work_dir)
    evaluator.validate(model, dataloaders=tiled.loader(L), verbose=False)
    val_s = time.time() - t0
    bpb = float(evaluator.callback_metrics["val_bpb"])
    tail = [r[2] for r in hist.rows[-max(1, len(hist.rows) // 10):]]
    row = {"context": L, "seed": seed, "val_bpb": bpb, "val_ppl": 2 ** bpb,
           "train_bpb_end": sum(tail) / len(tail) if tail else None, "steps": done, "planned_steps": steps,
           "sequences_per_step": args.batch_windows * T // L, "train_tokens": done * args.batch_windows * T,
           "length_warmup": (f"{min(args.start_len, L)} -> {L}, x2 every {max(1, every)} steps"
                             if L > args.start_len else "none"),
           "chunk_len": chunk_len or 0, "train_s": round(train_s, 1), "val_s": round(val_s, 1),
           "tokens_per_s": round(done * args.batch_windows * T / max(train_s, 1e-9)),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
           "val_bases": tiled.bases, "status": "done" if done >= steps else f"cut by time after {done} of {steps} steps",
           "curve": [list(r) for r in hist.rows]}
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    if args.save_ckpt and seed == args.seeds[0] and L == args.handoff_length:
        save_handoff(model, args, row)
    del trainer, evaluator, dm
    if gpu:
        torch.cuda.empty_cache()
    return row


def save_handoff(model, args, row: dict) -> None:
    """The trained model for fine-tuning (``pretrained_ckpt``): state_dict and hyperparameters, atomically."""
    import torch

    from mambaverse.atomic import atomic_write_bytes

    hp = dict(model.hparams)
    overrides = dict(hp.get("backbone_overrides") or {})
    overrides.pop("chunk_len", None)  # how it was trained, not what it is
    hp["backbone_overrides"] = overrides or None
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "hyper_parameters": hp,
                "pretraining": {k: v for k, v in row.items() if k != "curve"}}, buf)
    atomic_write_bytes(args.save_ckpt, buf.getvalue())
    print(f"pretrained checkpoint (context {row['context']}, seed {row['seed']}): {args.save_ckpt}", flush=True)


# ------------------------------------------------------------------------------------------------ results
def write_results(rows: list[dict], markov: list[dict], meta: dict, out: Path, tag: str, final: bool = True) -> list[Path]:
    base = out / f"dna_pretrain_context_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    C.write_json(base.with_suffix(".json"), {"meta": meta, "rows": rows, "markov": markov})
    done = sorted((r for r in rows if r.get("val_bpb") is not None), key=lambda r: (r["context"], r["seed"]))
    lines = ["# Causal DNA LM on human chrX: held-out bits per base against context length", ""] + C.meta_lines(meta)
    lines += ["", "| context (bp) | 2^k | seed | held-out bits/base | perplexity | train bits/base (last 10% of steps) | "
              "steps × sequences | train tokens | length warmup | chunk | train s | tokens/s | peak GiB | status |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in done:
        tb = f"{r['train_bpb_end']:.4f}" if r.get("train_bpb_end") is not None else "-"
        lines.append(f"| {r['context']:,} | {r['context'].bit_length() - 1} | {r['seed']} | {r['val_bpb']:.4f} | "
                     f"{r['val_ppl']:.3f} | {tb} | {r['steps']} × {r['sequences_per_step']} | {r['train_tokens']:,} | "
                     f"{r['length_warmup']} | {r['chunk_len'] or '-'} | {r['train_s']} | {r['tokens_per_s']:,} | "
                     f"{r['peak_gib'] if r['peak_gib'] is not None else '-'} | {r['status']} |")
    for r in rows:
        if r.get("val_bpb") is None:
            lines.append(f"| {r['context']:,} | {r['context'].bit_length() - 1} | {r['seed']} | - | - | - | - | - | - | - "
                         f"| - | - | - | {r['status']} |")
    if markov:
        lines += ["", "Anchor on the same held-out bases (same run): order-k Markov chains, k-mer counts of the "
                  "training region (both strands), add-one smoothing.", "",
                  "| order k | held-out bits/base | scored targets | training bases counted | s |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {m['order']} | {m['bpb']:.4f} | {m['targets']:,} | {m['train_bases']:,} | {m['seconds']} |"
                  for m in markov]
    lines += ["", "## Summary (computed from the rows above)", ""] + summary(done, markov)
    C.write_text(base.with_suffix(".md"), "\n".join(lines) + "\n")
    png = C.plot_or_skip(plot, done, markov, meta, base.with_suffix(".png"), every=0 if final else 20)
    return [base.with_suffix(".md"), base.with_suffix(".json")] + ([png] if png else [])


def noise_of(done: list[dict]) -> tuple[int, float] | None:
    """(length, max - min held-out bpb over seeds) at the length run with more than one seed."""
    by = {}
    for r in done:
        by.setdefault(r["context"], []).append(r["val_bpb"])
    multi = [(L, max(v) - min(v)) for L, v in by.items() if len(v) > 1]
    return multi[0] if multi else None


def summary(done: list[dict], markov: list[dict]) -> list[str]:
    first = {}
    for r in done:
        first.setdefault(r["context"], r)  # the first seed's row of each length
    pts = sorted(first.values(), key=lambda r: r["context"])
    out = []
    if len(pts) >= 2:
        a, b = pts[0], pts[-1]
        out.append(f"- held-out bits/base {a['val_bpb']:.4f} at {a['context']:,} bp -> {b['val_bpb']:.4f} at "
                   f"{b['context']:,} bp (change {b['val_bpb'] - a['val_bpb']:+.4f}; ratio {b['val_bpb'] / a['val_bpb']:.4f})")
        best = min(pts, key=lambda r: r["val_bpb"])
        out.append(f"- best: {best['val_bpb']:.4f} at {best['context']:,} bp")
        nz = noise_of(done)
        if nz:
            L, d = nz
            out.append(f"- run-to-run noise: held-out bits/base differ by {d:.4f} between seeds at {L:,} bp")
            ups = [f"{p['context']:,} -> {q['context']:,}" for p, q in zip(pts, pts[1:]) if q["val_bpb"] - p["val_bpb"] > d]
            out.append(f"- falls monotonically within the noise from {a['context']:,} to {b['context']:,} bp: "
                       + ("yes" if not ups else f"no (rises by more than the noise at {', '.join(ups)})"))
            gain = a["val_bpb"] - b["val_bpb"]
            out.append(f"- longest beats shortest by more than the noise: {'yes' if gain > d else 'no'} "
                       f"(gain {gain:+.4f} vs noise {d:.4f})")
    if markov:
        m = min(markov, key=lambda m: m["bpb"])
        out.append(f"- best Markov anchor: order {m['order']}, {m['bpb']:.4f} bits/base")
    return out or ["- fewer than two lengths finished"]


def plot(done: list[dict], markov: list[dict], meta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    seeds = sorted({r["seed"] for r in done})
    for s, marker in zip(seeds, "os^v"):
        rs = sorted((r for r in done if r["seed"] == s), key=lambda r: r["context"])
        ax.plot([r["context"] for r in rs], [r["val_bpb"] for r in rs], marker + ("-" if s == seeds[0] else ""),
                color="tab:blue" if s == seeds[0] else "tab:orange", label=f"Mamba, seed {s}")
    for m, ls in zip(sorted(markov, key=lambda m: m["order"]), (":", "--", "-.", ":")):
        ax.axhline(m["bpb"], color="gray", ls=ls, lw=1, label=f"order-{m['order']} Markov (anchor)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (bp)")
    ax.set_ylabel("held-out bits per base (chrX, last region)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"chrX causal LM, same tokens per length ({meta['device']})", fontsize=9)
    cmap = plt.get_cmap("viridis")
    lengths = sorted({r["context"] for r in done})
    for i, L in enumerate(lengths):
        r = next(r for r in done if r["context"] == L)
        if r.get("curve"):
            tok = r["train_tokens"] / max(1, r["steps"])
            ax2.plot([c[0] * tok for c in r["curve"]], [c[2] for c in r["curve"]], lw=1,
                     color=cmap(i / max(1, len(lengths) - 1)), label=f"{L:,}")
    ax2.set_xlabel("training tokens")
    ax2.set_ylabel("training bits per base")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, title="context", title_fontsize=7)
    fig.tight_layout()
    out = C.save_png(fig, path)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU check in about a minute: lengths 64/256/1024, a d_model 32 "
                    "2-layer model, 4k tokens per run (defaults below are replaced unless given)")
    ap.add_argument("--lengths", nargs="+", type=int, default=[2 ** k for k in range(10, 21, 2)])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="the first seeds every length; all of them "
                    "run at --noise-length")
    ap.add_argument("--noise-length", type=int, default=None, help="length run with every seed (default: the longest)")
    ap.add_argument("--handoff-length", type=int, default=None, help="length whose first-seed model goes to "
                    "--save-ckpt (default: the longest)")
    ap.add_argument("--backbone", default="mamba_dna_paper_small")
    ap.add_argument("--backbone-overrides", default=None, help="JSON dict")
    ap.add_argument("--tokens", default="auto", help="training tokens per run, or 'auto': the most that fits "
                    "--time-budget, from a measured probe")
    ap.add_argument("--batch-windows", type=int, default=1, help="windows of max(lengths) bases per optimizer step")
    ap.add_argument("--start-len", type=int, default=None, help="first length of the warmup (default: the shortest)")
    ap.add_argument("--length-warmup-fraction", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--lr-warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of chrX (0.1: 63.0-70.0 Mb)")
    ap.add_argument("--val-tiles", type=int, default=6, help="held-out tiles of max(lengths) bases")
    ap.add_argument("--max-n-fraction", type=float, default=0.1, help="training windows with more N are redrawn")
    ap.add_argument("--chunk-len", default="auto", help="'auto', 0 (off) or positions per state-carrying chunk")
    ap.add_argument("--markov-orders", nargs="*", type=int, default=[4, 8, 11])
    ap.add_argument("--markov-train-bases", type=int, default=None, help="cap on the training bases the anchor counts")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds for the whole script (plans --tokens auto "
                    "and stops starting runs that would not finish)")
    ap.add_argument("--safety", type=float, default=0.85, help="fraction of the time left that the plan fills")
    ap.add_argument("--run-overhead", type=float, default=None, help="planned seconds per run outside training steps "
                    "(default 4 on GPU, 3 on CPU)")
    ap.add_argument("--probe-steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers (default 0: reading a step's windows takes milliseconds)")
    ap.add_argument("--data-dir", default=None, help=f"folder holding {CHRX} (default: the smalt-examples path)")
    ap.add_argument("--stage-data", default=None, metavar="DIR", help="copy the FASTA files of both DNA benchmarks "
                    "into DIR and exit")
    ap.add_argument("--cache-dir", default=None, help="decompressed FASTA cache (default ~/.cache/mambaverse/fasta)")
    ap.add_argument("--save-ckpt", default="runs/dna_pretrain_context/chrX_pretrained.ckpt")
    ap.add_argument("--work-dir", default="runs/dna_pretrain_context")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    ap.add_argument("--from-json", default=None, metavar="JSON", help="rewrite the markdown and the plot of a results "
                    "JSON (e.g. one written on the GPU machine) into --out, with --tag or the JSON's tag, and exit")
    args, given = C.parse_args(ap, argv)
    if args.stage_data:
        C.stage_data(args.stage_data, list(C.DATA))
        return 0
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        tag = args.tag or Path(args.from_json).stem.removeprefix("dna_pretrain_context_")
        print("wrote " + ", ".join(map(str, write_results(res["rows"], res.get("markov") or [], res["meta"],
                                                         Path(args.out), tag))))
        return 0
    C.apply_tiny(args, given, TINY)
    args.lengths = sorted(set(args.lengths))
    Lmax, Lmin = max(args.lengths), min(args.lengths)
    if any(Lmax % L for L in args.lengths):
        raise SystemExit(f"--lengths {args.lengths}: every length must divide the longest ({Lmax})")
    args.start_len = args.start_len or Lmin
    args.noise_length = args.noise_length or Lmax
    args.handoff_length = args.handoff_length or Lmax
    clock = C.Clock(args.time_budget)
    gpu = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    args.num_workers = args.num_workers if args.num_workers is not None else 0
    args.run_overhead = args.run_overhead if args.run_overhead is not None else (4.0 if gpu else 3.0)
    args.chrx = C.data_path(CHRX, args.data_dir)
    if not gpu:
        C.set_cpu_threads()
    tag = args.tag or args.device.split(":")[0]
    chunk_len = None if args.chunk_len in ("auto", "0", 0) else int(args.chunk_len)

    runs = [(Lmin, args.seeds[0]), (Lmax, args.seeds[0])]
    runs += [(args.noise_length, s) for s in args.seeds[1:]]
    runs += [(L, args.seeds[0]) for L in C.bisect_order([L for L in args.lengths if L not in (Lmin, Lmax)])]
    runs = list(dict.fromkeys(runs))  # one length only: Lmin is Lmax
    T = Lmax * args.batch_windows

    anchor = Anchor(args)  # before the probe: the child is forked before CUDA starts
    probe_s, chunk_len = probe(args, chunk_len, args.lengths) if (args.tokens == "auto" or args.chunk_len == "auto") \
        else ({}, chunk_len)
    sps = max(probe_s.values()) if probe_s else None
    eval_s = (sps * args.val_tiles * Lmax / T / 2.5) if sps else 0.0  # forward only: about 1/3 of a training step
    n_doublings = max(1, int(round(math.log2(Lmax / args.start_len))))
    if args.tokens == "auto":
        if args.time_budget is None:
            raise SystemExit("--tokens auto needs --time-budget (or give --tokens N)")
        left = clock.left() * args.safety - len(runs) * (args.run_overhead + eval_s)
        steps = int(left / (len(runs) * sps))
        if steps < 4:
            raise SystemExit(f"--time-budget {args.time_budget}: {clock.left():.0f} s left leave {steps} steps per run "
                             f"({sps:.2f} s per step of {T:,} tokens, {len(runs)} runs); raise the budget")
    else:
        steps = max(1, int(args.tokens) // T)
    if args.lr_warmup_steps is None:
        args.lr_warmup_steps = max(1, steps // 10)
    every = max(1, int(round(args.length_warmup_fraction * steps / n_doublings)))
    params = sum(p.numel() for p in build_model(args, None).parameters())
    meta = {**C.run_meta(args, argv),
            "model": f"DNALanguageModel(backbone={args.backbone}, overrides={args.backbone_overrides or '{}'}, "
                     f"causal), {params:,} parameters; AdamW lr {args.lr} (betas 0.9/0.95, weight decay "
                     f"{args.weight_decay}), {args.lr_warmup_steps} warmup steps then cosine to 10%, gradient clip 1.0, "
                     f"precision {args.precision}",
            "data": f"{CHRX} (human chrX 0-70 Mb, hs37); region split: training windows in the first "
                    f"{1 - args.val_fraction:.0%}, held-out bases in the last {args.val_fraction:.0%}; training "
                    f"windows with more than {args.max_n_fraction:.0%} N redrawn, N targets skipped; reverse-complement "
                    f"augmentation 0.5",
            "budget": f"{steps} steps × {T:,} tokens = {steps * T:,} training tokens per run at every length "
                      f"(the same windows for every length of one seed, cut into sequences of the length); "
                      f"time budget {args.time_budget} s, planned from a probe of {sps if sps else 0:.3f} s per step",
            "evaluation": f"{args.val_tiles} consecutive held-out tiles of {Lmax:,} bases, each cut into sequences of "
                          f"L + 1 bases overlapping by one: the same held-out targets for every L",
            "anchor": "order-k Markov chains on the same held-out bases (table below); the published reference is the "
                      "Mamba paper's Figure 5 right (HG38, far more tokens), not run here"}
    print(json.dumps({"plan": {"steps": steps, "tokens_per_run": steps * T, "runs": runs, "length_warmup_every": every,
                               "chunk_len": chunk_len, "seconds_per_step": sps}}), flush=True)

    rows: list[dict] = []
    holder: dict = {}
    out = Path(args.out)
    planned_run_s = (sps * steps) if sps else None
    for L, seed in runs:
        need = (planned_run_s or 0) + args.run_overhead + eval_s
        if args.time_budget is not None and clock.left() < need * 1.05:
            rows.append({"context": L, "seed": seed, "val_bpb": None,
                         "status": f"not run: {clock.left():.0f} s left of the time budget, about {need:.0f} s needed"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        cap = (planned_run_s * 1.5 + 10) if planned_run_s else 1e9
        if args.time_budget is not None:
            cap = min(cap, clock.left() - args.run_overhead - eval_s)
        rows.append(run_one(args, L, seed, steps, every, chunk_len, holder, cap))
        meta["total_s"] = round(clock.elapsed(), 1)
        write_results(rows, anchor.poll(), meta, out, tag, final=False)
    markov = anchor.poll(wait=max(1.0, min(600.0, clock.left() - 5)))
    meta["total_s"] = round(clock.elapsed(), 1)
    paths = write_results(rows, markov, meta, out, tag)
    print(f"dna_pretrain_context: {sum(r.get('val_bpb') is not None for r in rows)} of {len(runs)} runs in "
          f"{clock.elapsed() / 60:.1f} min; wrote " + ", ".join(map(str, paths)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
