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
* Evaluation, two ways, on the same held-out targets for every L: ``--val-tiles`` tiles of ``max(lengths)``
  consecutive bases, starting ``max(lengths) / 2`` bases into the held-out region (N targets skipped).
  (a) *all positions* (the paper's validation loss): the targets cut into sequences of L, each target
  predicted from the start of its sequence, so its context is 0 to L - 1 bases (L / 2 on average);
  (b) *context >= L/2*: sequences of L + 1 bases every L / 2 bases, each scoring only its second half, so every
  target is predicted from L / 2 to L - 1 preceding held-out bases. (b) removes the sequence-start penalty that
  (a) charges short contexts, so a gain in (b) is the model using distant bases, not just fewer cold starts.
* Noise: every length in ``--noise-lengths`` (default: the shortest and the longest) is run with every seed.
* Anchor, measured in the same run: order-k Markov chains (k-mer counts of the whole training region, both
  strands, add-one smoothing) on the same held-out targets.
* Several devices (``--gpus 0,1``): one worker process per device; each probes its device, the main process
  plans one step count for all runs (same tokens at every length) and shares the runs out by their measured
  cost; the workers write their rows after every run and the main process merges them into one table, plot
  and JSON (``--gpus cpu,cpu`` runs the same path on CPU, for CI).

Results go to ``<out>/dna_pretrain_context_<tag>.{md,json,png}`` after every run (a cut-short run leaves a
partial table); the ``--handoff-length`` model of the first seed is written to ``--save-ckpt`` (state_dict and
hyperparameters, readable by ``pretrained_ckpt`` of the DNA tasks) for ``dna_context_sweep.py``.

The peak learning rate, 8e-3, is at the flat optimum of a 120-step check on CPU with a smaller stand-in model
(``results/dna_pretrain_lr_check_cpu.md``).

CPU check (CI runs it): ``python benchmarks/dna_pretrain_context.py --tiny`` (``--gpus cpu,cpu``: the worker path)
GPU (two H200). Stage chrX into the ignored folder the device call carries (xz: 15.0 MiB instead of 18.9), then:
    python benchmarks/dna_pretrain_context.py --stage-data .cache/dna --stage-xz
    python3 benchmarks/dna_pretrain_context.py --device cuda --gpus 0,1 --data-dir .cache/dna --time-budget 470 \\
        --save-ckpt "$OUT/chrX_pretrained.ckpt" --out "$OUT" --tag h200
(about 470 s in all; the checkpoint comes back with the results, for ``dna_context_sweep.py --pretrained``).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dna_common as C  # noqa: E402

CHRX = "hs37chrXtrunc.fa.gz"
TINY = {"lengths": [64, 256, 1024], "backbone_overrides": '{"d_model": 32, "n_layer": 2, "d_state": 4}', "tokens": "4096",
        "val_tiles": 2, "chunk_len": "512", "markov_orders": [2, 4], "markov_train_bases": 2_000_000,
        "lr": 1e-2, "tag": "cpu_tiny", "time_budget": None, "noise_lengths": [1024]}


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


class HeldOut:
    """The held-out targets: ``tiles * T`` consecutive bases from ``first`` = region start + T / 2 + 1 (T: the
    longest length), so that every length L <= T finds L / 2 held-out bases of context before the first target.

    ``sequences(L, half)`` gives the (n, L + 1) token sequences that score these targets: ``half=False`` cuts
    them into consecutive sequences (context 0..L-1), ``half=True`` takes sequences every L / 2 bases whose
    second halves tile the targets (context L/2..L-1)."""

    def __init__(self, dm, tiles: int, T: int):
        span = dm.spans["val"][0]
        self.record, self.src, self.tok, self.T = span.record, dm.sources[span.source], dm.tokenizer, T
        self.region = (span.start, span.end)
        self.tiles = min(tiles, (span.end - span.start - T // 2 - 1) // T)
        if self.tiles < 1:
            raise SystemExit(f"held-out region {span.record}:{span.start}-{span.end} is shorter than one tile of "
                             f"{T} bases after {T // 2} bases of context; raise --val-fraction or lower the lengths")
        self.first = span.start + T // 2 + 1
        self.bases = self.tiles * T
        self._ids = None

    def ids(self):
        """int64 tensor of the held-out region from its start to the last target."""
        import torch

        if self._ids is None:
            a = self.region[0]
            self._ids = torch.from_numpy(self.tok.encode(self.src.fetch(self.record, a, self.first + self.bases))
                                         .astype("int64"))
        return self._ids

    def sequences(self, L: int, half: bool):
        x, a = self.ids(), self.region[0]
        if half:
            h = L // 2
            s = self.first - 1 - h - a
            return x[s:s + self.bases + h + 1].unfold(0, L + 1, h)
        s = self.first - 1 - a
        return x[s:s + self.bases + 1].unfold(0, L + 1, L)


def evaluate(model, held: HeldOut, L: int, device: str, amp: bool, tokens_per_batch: int) -> dict:
    """Held-out bits per base of ``model`` at context L, both ways (see ``HeldOut``): {"all": bpb, "half": bpb,
    "targets": scored targets}. Forward passes of about ``tokens_per_batch`` tokens, bf16 autocast if ``amp``."""
    import torch

    from mambaverse.genomics.tokenizer import NUCLEOTIDE_IDS

    dev = torch.device(device)
    model = model.to(dev).eval()
    bases = torch.tensor(NUCLEOTIDE_IDS, device=dev)
    out = {}
    with torch.no_grad():
        for half in (False, True):
            seqs = held.sequences(L, half)
            bs = max(1, tokens_per_batch // L)
            nll, n = torch.zeros((), dtype=torch.float64, device=dev), 0
            for i in range(0, seqs.shape[0], bs):
                b = seqs[i:i + bs].to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(b[:, :-1])
                tgt = b[:, 1:]
                lp = torch.log_softmax(logits.float(), -1).gather(-1, tgt.clamp(0, logits.shape[-1] - 1)[..., None])[..., 0]
                keep = torch.isin(tgt, bases)
                if half:
                    keep[:, :L // 2] = False
                nll += -(lp[keep]).double().sum()
                n += int(keep.sum())
            out["half" if half else "all"] = float(nll) / max(1, n) / math.log(2)
            out["targets_half" if half else "targets"] = n
    return out


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
def markov_anchor(dm, held: HeldOut, orders: list[int], max_train_bases: int | None) -> list[dict]:
    """Order-k Markov chains with add-one smoothing, counted on the training region (both strands), scored on
    the held-out targets (those whose k preceding bases are A/C/G/T)."""
    import numpy as np

    tok = dm.tokenizer
    train = []
    for span in dm.spans["train"]:
        n = span.end - span.start if max_train_bases is None else min(span.end - span.start, max_train_bases)
        train.append(tok.encode(dm.sources[span.source].fetch(span.record, span.start, span.start + n)))

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
        val = tok.encode(held.src.fetch(held.record, held.first - k, held.first + held.bases))  # k context + targets
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


def sps_at(probe_s: dict, L: int) -> float:
    """Seconds per step at length L: linear in log2(L) between the probed shortest and longest lengths."""
    pts = sorted((int(k), float(v)) for k, v in probe_s.items())
    if len(pts) == 1 or L <= pts[0][0]:
        return pts[0][1]
    (a, sa), (b, sb) = pts[0], pts[-1]
    if L >= b:
        return sb
    t = (math.log2(L) - math.log2(a)) / (math.log2(b) - math.log2(a))
    return sa + t * (sb - sa)


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
    """The anchor in a child process (numpy only, its own file handles), so that it overlaps the runs."""
    try:
        dm = make_datamodule(args, args.seeds[0], 1)
        queue.put(markov_anchor(dm, HeldOut(dm, args.val_tiles, max(args.lengths)), args.markov_orders,
                                args.markov_train_bases))
    except BaseException as exc:  # noqa: BLE001 - reported in the results instead of the anchor
        queue.put([{"error": f"{type(exc).__name__}: {exc}"}])


def run_one(args, L: int, seed: int, plan: dict, held_holder: dict, max_seconds: float) -> dict:
    import lightning.pytorch as pl
    import torch

    steps, every, chunk_len = plan["steps"], plan["every"], plan["chunk_len"]
    pl.seed_everything(seed, verbose=False)
    T = max(args.lengths)
    dm = make_datamodule(args, seed, steps)
    if "held" not in held_holder:
        held_holder["held"] = HeldOut(dm, args.val_tiles, T)
    held = held_holder["held"]
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
    ev = evaluate(model, held, L, "cuda" if gpu else "cpu", args.precision.startswith("bf16"),
                  T * args.batch_windows)
    val_s = time.time() - t0
    tail = [r[2] for r in hist.rows[-max(1, len(hist.rows) // 10):]]
    row = {"context": L, "seed": seed, "val_bpb": ev["all"], "val_ppl": 2 ** ev["all"], "val_bpb_half": ev["half"],
           "val_targets": ev["targets"], "train_bpb_end": sum(tail) / len(tail) if tail else None, "steps": done,
           "planned_steps": steps, "sequences_per_step": args.batch_windows * T // L,
           "train_tokens": done * args.batch_windows * T,
           "length_warmup": (f"{min(args.start_len, L)} -> {L}, x2 every {max(1, every)} steps"
                             if L > args.start_len else "none"),
           "chunk_len": chunk_len or 0, "train_s": round(train_s, 1), "val_s": round(val_s, 1),
           "tokens_per_s": round(done * args.batch_windows * T / max(train_s, 1e-9)),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
           "val_bases": held.bases, "worker": plan.get("worker", 0),
           "status": "done" if done >= steps else f"cut by time after {done} of {steps} steps",
           "curve": [list(r) for r in hist.rows]}
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    if args.save_ckpt and seed == args.seeds[0] and L == args.handoff_length:
        save_handoff(model, args, row)
    del trainer, dm, model
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


# ------------------------------------------------------------------------------------------------ planning
def run_list(args) -> list[tuple[int, int]]:
    """(length, seed) runs in priority order: the two ends, the other seeds at the noise lengths, then the
    lengths between in bisection order (so a cut-short run still spans the range)."""
    Lmin, Lmax = min(args.lengths), max(args.lengths)
    runs = [(Lmin, args.seeds[0]), (Lmax, args.seeds[0])]
    runs += [(L, s) for s in args.seeds[1:] for L in sorted(args.noise_lengths, reverse=True)]
    runs += [(L, args.seeds[0]) for L in C.bisect_order([L for L in args.lengths if L not in (Lmin, Lmax)])]
    return list(dict.fromkeys(runs))  # one length only: Lmin is Lmax


def assign_runs(runs: list, cost: dict, n_workers: int) -> list[list]:
    """Share ``runs`` (in priority order) out to ``n_workers``: each run goes to the worker with the least planned
    cost so far (``cost[run]``, seconds), so the workers finish together and each one's list keeps the order."""
    load, out = [0.0] * n_workers, [[] for _ in range(n_workers)]
    for r in runs:
        w = min(range(n_workers), key=lambda i: (load[i], i))
        out[w].append(r)
        load[w] += cost[r]
    return out


def plan_steps(seconds_left: float, per_run_fixed: float, sps: dict, shares: list[list]) -> int:
    """The most steps per run such that every worker's runs fit ``seconds_left``: per worker,
    sum over its runs of (steps * sps[L] + per_run_fixed) <= seconds_left."""
    best = math.inf
    for share in shares:
        if share:
            best = min(best, (seconds_left - len(share) * per_run_fixed) / sum(sps[L] for L, _ in share))
    return int(best) if math.isfinite(best) else 0


def make_plan(args, probe_s: dict, chunk_len, n_workers: int, seconds_left: float | None) -> dict:
    """Steps per run, the length-warmup and LR-warmup steps, and the runs of each worker."""
    runs, T = run_list(args), max(args.lengths) * args.batch_windows
    sps = {L: sps_at(probe_s, L) for L in args.lengths} if probe_s else {L: 1.0 for L in args.lengths}
    # evaluation: 3 forward passes over the held-out tiles (all positions once, context >= L/2 twice), a forward
    # pass costing about a third of a training step
    eval_s = (sps[max(args.lengths)] * 3 * args.val_tiles * max(args.lengths) / T / 3.0) if probe_s else 0.0
    fixed = args.run_overhead + eval_s
    shares = assign_runs(runs, {(L, s): sps[L] * 100 + fixed for L, s in runs}, n_workers)
    if args.tokens == "auto":
        if seconds_left is None:
            raise SystemExit("--tokens auto needs --time-budget (or give --tokens N)")
        steps = plan_steps(seconds_left * args.safety, fixed, sps, shares)
        if steps < 4:
            raise SystemExit(f"--time-budget {args.time_budget}: {seconds_left:.0f} s left leave {steps} steps per run "
                             f"({max(sps.values()):.2f} s per step of {T:,} tokens, {len(runs)} runs on {n_workers} "
                             f"workers); raise the budget")
    else:
        steps = max(1, int(args.tokens) // T)
    n_doublings = max(1, int(round(math.log2(max(args.lengths) / args.start_len))))
    return {"steps": steps, "every": max(1, int(round(args.length_warmup_fraction * steps / n_doublings))),
            "lr_warmup_steps": args.lr_warmup_steps if args.lr_warmup_steps is not None else max(1, steps // 10),
            "chunk_len": chunk_len, "eval_s": eval_s, "seconds_per_step": {str(L): v for L, v in sps.items()},
            "planned_run_s": {str(L): (sps[L] * steps if probe_s else 0.0) for L in args.lengths},
            "shares": [[list(r) for r in share] for share in shares], "probed": bool(probe_s)}


def do_runs(args, plan: dict, runs: list, deadline: float | None, on_row) -> list[dict]:
    """Train and evaluate ``runs`` one after the other; a run that would not finish before ``deadline`` (unix
    time) becomes a "not run" row. ``on_row(rows)`` after every run."""
    args.lr_warmup_steps = plan["lr_warmup_steps"]
    rows, holder = [], {}
    for L, seed in runs:
        planned = plan["planned_run_s"][str(L)]
        need = planned + args.run_overhead + plan["eval_s"]
        left = math.inf if deadline is None else deadline - time.time()
        if left < need * 1.05:
            rows.append({"context": L, "seed": seed, "val_bpb": None, "worker": plan.get("worker", 0),
                         "status": f"not run: {left:.0f} s left of the time budget, about {need:.0f} s needed"})
            print(json.dumps(rows[-1]), flush=True)
        else:
            cap = (planned * 1.5 + 10) if plan["probed"] else 1e9
            cap = min(cap, left - args.run_overhead - plan["eval_s"])
            rows.append(run_one(args, L, seed, plan, holder, cap))
        on_row(rows)
    return rows


# ------------------------------------------------------------------------------------------------ workers
def worker_main(args, wdir: Path, index: int) -> int:
    """One device's worker: probe it, wait for the main process's plan, run this worker's share, and write its
    rows to ``rows_<index>.json`` after every run."""
    chunk_len = None if args.chunk_len in ("auto", "0", 0) else int(args.chunk_len)
    if args.tokens == "auto" or args.chunk_len == "auto":
        probe_s, chunk_len = probe(args, chunk_len, args.lengths)
    else:
        probe_s = {}
    C.write_json(wdir / f"probe_{index}.json", {"probe": {str(k): v for k, v in probe_s.items()}, "chunk_len": chunk_len,
                                                "device": C.device_name(args.device)})
    parent = os.getppid()
    while not (wdir / "plan.json").exists():
        if os.getppid() != parent:  # the main process is gone: nobody would read the rows
            return 1
        time.sleep(0.2)
    plan = json.loads((wdir / "plan.json").read_text())
    plan["worker"] = index
    runs = [tuple(r) for r in plan["shares"][index]]
    do_runs(args, plan, runs, plan["deadline"], lambda rows: C.write_json(wdir / f"rows_{index}.json", rows))
    return 0


def worker_env(entry: str) -> tuple[dict, str]:
    """(environment, --device) of the worker for one ``--gpus`` entry: a CUDA index (of the GPUs this process
    sees) becomes that worker's only visible GPU; 'cpu' runs on the CPU."""
    env = dict(os.environ)
    if entry == "cpu":
        return env, "cpu"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    i = int(entry)
    if visible and i >= len(visible):
        raise SystemExit(f"--gpus {entry}: this process sees {len(visible)} GPUs (CUDA_VISIBLE_DEVICES="
                         f"{os.environ['CUDA_VISIBLE_DEVICES']}); expected an index below {len(visible)}")
    env["CUDA_VISIBLE_DEVICES"] = visible[i] if visible else str(i)
    return env, "cuda"


def parse_gpus(value: str | None) -> list[str]:
    if not value:
        return []
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out or any(not (v == "cpu" or v.isdigit()) for v in out):
        raise SystemExit(f"--gpus {value!r}: expected a comma-separated list of CUDA device indices (0,1) or 'cpu' entries")
    cuda = [v for v in out if v != "cpu"]
    if len(set(cuda)) < len(cuda):
        raise SystemExit(f"--gpus {value!r}: a CUDA index appears twice; expected each GPU once (one worker per GPU)")
    return out


def check_gpus_visible(value: str, gpus: list[str]) -> None:
    """Every CUDA index of ``--gpus`` names a GPU this process sees, checked before any worker starts (a worker
    on a missing GPU would fail inside Lightning). Counts through NVML, without initialising CUDA here."""
    cuda = [int(g) for g in gpus if g != "cpu"]
    if not cuda:
        return
    import torch

    n = torch.cuda.device_count()
    if max(cuda) >= n:
        raise SystemExit(f"--gpus {value!r}: no CUDA device {max(cuda)} (this process sees {n}); expected "
                         + (f"indices below {n}, or 'cpu' entries" if n else "'cpu' entries on a machine without a GPU"))


# ------------------------------------------------------------------------------------------------ results
def write_results(rows: list[dict], markov: list[dict], meta: dict, out: Path, tag: str, final: bool = True) -> list[Path]:
    base = out / f"dna_pretrain_context_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    C.write_json(base.with_suffix(".json"), {"meta": meta, "rows": rows, "markov": markov})
    done = sorted((r for r in rows if r.get("val_bpb") is not None), key=lambda r: (r["context"], r["seed"]))
    lines = ["# Causal DNA LM on human chrX: held-out bits per base against context length", ""] + C.meta_lines(meta)
    lines += ["", "| context (bp) | 2^k | seed | held-out bits/base, all positions | perplexity | held-out bits/base, "
              "context >= L/2 | train bits/base (last 10% of steps) | steps × sequences | train tokens | length warmup | "
              "chunk | train s | tokens/s | peak GiB | worker | status |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in done:
        tb = f"{r['train_bpb_end']:.4f}" if r.get("train_bpb_end") is not None else "-"
        half = f"{r['val_bpb_half']:.4f}" if r.get("val_bpb_half") is not None else "-"
        lines.append(f"| {r['context']:,} | {r['context'].bit_length() - 1} | {r['seed']} | {r['val_bpb']:.4f} | "
                     f"{r['val_ppl']:.3f} | {half} | {tb} | {r['steps']} × {r['sequences_per_step']} | "
                     f"{r['train_tokens']:,} | {r['length_warmup']} | {r['chunk_len'] or '-'} | {r['train_s']} | "
                     f"{r['tokens_per_s']:,} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} | "
                     f"{r.get('worker', 0)} | {r['status']} |")
    for r in rows:
        if r.get("val_bpb") is None:
            lines.append(f"| {r['context']:,} | {r['context'].bit_length() - 1} | {r['seed']} | - | - | - | - | - | - | "
                         f"- | - | - | - | - | {r.get('worker', '-')} | {r['status']} |")
    if markov:
        lines += ["", "Anchor on the same held-out targets (same run): order-k Markov chains, k-mer counts of the "
                  "training region (both strands), add-one smoothing.", "",
                  "| order k | held-out bits/base | scored targets | training bases counted | s |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {m['order']} | {m['bpb']:.4f} | {m['targets']:,} | {m['train_bases']:,} | {m['seconds']} |"
                  for m in markov]
    lines += ["", "## Summary (computed from the rows above)", ""] + summary(done, markov)
    C.write_text(base.with_suffix(".md"), "\n".join(lines) + "\n")
    png = C.plot_or_skip(plot, done, markov, meta, base.with_suffix(".png"), every=0 if final else 20)
    return [base.with_suffix(".md"), base.with_suffix(".json")] + ([png] if png else [])


def by_length(done: list[dict], key: str) -> dict[int, list[float]]:
    by: dict[int, list[float]] = {}
    for r in done:
        if r.get(key) is not None:
            by.setdefault(r["context"], []).append(r[key])
    return by


def noise_of(done: list[dict], key: str = "val_bpb") -> list[tuple[int, float]]:
    """[(length, max - min held-out bpb over seeds)] at the lengths run with more than one seed."""
    return [(L, max(v) - min(v)) for L, v in sorted(by_length(done, key).items()) if len(v) > 1]


def summary(done: list[dict], markov: list[dict]) -> list[str]:
    out = []
    for key, name in (("val_bpb", "all positions"), ("val_bpb_half", "context >= L/2")):
        by = by_length(done, key)
        if len(by) < 2:
            continue
        mean = {L: sum(v) / len(v) for L, v in by.items()}
        Ls = sorted(mean)
        a, b = Ls[0], Ls[-1]
        seeds = lambda L: f" (mean of {len(by[L])} seeds)" if len(by[L]) > 1 else ""  # noqa: E731
        out.append(f"- {name}: held-out bits/base {mean[a]:.4f} at {a:,} bp{seeds(a)} -> {mean[b]:.4f} at {b:,} bp"
                   f"{seeds(b)} (change {mean[b] - mean[a]:+.4f}; ratio {mean[b] / mean[a]:.4f}); best "
                   f"{min(mean.values()):.4f} at {min(mean, key=mean.get):,} bp")
        nz = noise_of(done, key)
        if nz:
            d = max(x for _, x in nz)
            out.append(f"  - run-to-run noise (max - min over seeds): "
                       + ", ".join(f"{x:.4f} at {L:,} bp" for L, x in nz) + f"; the noise used below: {d:.4f}")
            ups = [f"{p:,} -> {q:,}" for p, q in zip(Ls, Ls[1:]) if mean[q] - mean[p] > d]
            out.append(f"  - falls monotonically within the noise from {a:,} to {b:,} bp: "
                       + ("yes" if not ups else f"no (rises by more than the noise at {', '.join(ups)})"))
            gain = mean[a] - mean[b]
            out.append(f"  - longest beats shortest by more than the noise: {'yes' if gain > d else 'no'} "
                       f"(gain {gain:+.4f} vs noise {d:.4f})")
    if markov:
        m = min(markov, key=lambda m: m["bpb"])
        out.append(f"- best Markov anchor: order {m['order']}, {m['bpb']:.4f} bits/base")
        best = min((r["val_bpb"] for r in done), default=None)
        if best is not None:
            out.append(f"- best model row over the best anchor: ratio {best / m['bpb']:.4f}")
    return out or ["- fewer than two lengths finished"]


def plot(done: list[dict], markov: list[dict], meta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    seeds = sorted({r["seed"] for r in done})
    for key, ls, what in (("val_bpb", "-", "all positions"), ("val_bpb_half", "--", "context >= L/2")):
        for s, marker, color in zip(seeds, "os^v", ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            rs = sorted((r for r in done if r["seed"] == s and r.get(key) is not None), key=lambda r: r["context"])
            if rs:
                ax.plot([r["context"] for r in rs], [r[key] for r in rs], marker + (ls if len(rs) > 1 else ""),
                        color=color, mfc=color if key == "val_bpb" else "none", label=f"Mamba, seed {s}, {what}")
    for m, ls in zip(sorted(markov, key=lambda m: m["order"]), (":", "--", "-.", ":")):
        ax.axhline(m["bpb"], color="gray", ls=ls, lw=1, label=f"order-{m['order']} Markov (anchor)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (bp)")
    ax.set_ylabel("held-out bits per base (chrX, last region)")
    ax.grid(alpha=0.3)
    if done or markov:
        ax.legend(fontsize=7)
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
    if lengths:
        ax2.legend(fontsize=7, title="context", title_fontsize=7)
    fig.tight_layout()
    out = C.save_png(fig, path)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU check (under a minute on 2 cores): lengths 64/256/1024, a d_model 32 "
                    "2-layer model, 4k tokens per run (defaults below are replaced unless given)")
    ap.add_argument("--lengths", nargs="+", type=int, default=[2 ** k for k in range(10, 21, 2)])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="the first seed runs every length; all of "
                    "them run at --noise-lengths")
    ap.add_argument("--noise-lengths", nargs="+", type=int, default=None, help="lengths run with every seed "
                    "(default: the shortest and the longest)")
    ap.add_argument("--handoff-length", type=int, default=None, help="length whose first-seed model goes to "
                    "--save-ckpt (default: the longest)")
    ap.add_argument("--backbone", default="mamba_dna_paper_small")
    ap.add_argument("--backbone-overrides", default=None, help="JSON dict")
    ap.add_argument("--tokens", default="auto", help="training tokens per run, or 'auto': the most that fits "
                    "--time-budget, from a measured probe")
    ap.add_argument("--batch-windows", type=int, default=1, help="windows of max(lengths) bases per optimizer step")
    ap.add_argument("--start-len", type=int, default=None, help="first length of the warmup (default: the shortest)")
    ap.add_argument("--length-warmup-fraction", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=8e-3)
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
    ap.add_argument("--safety", type=float, default=0.88, help="fraction of the time left that the plan fills")
    ap.add_argument("--run-overhead", type=float, default=None, help="planned seconds per run outside training steps "
                    "and evaluation (default 6 on GPU, 3 on CPU)")
    ap.add_argument("--probe-steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpus", default=None, help="comma-separated CUDA indices, one worker process each (e.g. 0,1); "
                    "'cpu' entries run a worker on the CPU (CI). Default: one run after the other in this process")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers (default 0: reading a step's windows takes milliseconds)")
    ap.add_argument("--data-dir", default=None, help=f"folder holding {CHRX} (default: the smalt-examples path)")
    ap.add_argument("--stage-data", default=None, metavar="DIR", help=f"copy the one FASTA file this script reads "
                    f"({CHRX}) into DIR and exit")
    ap.add_argument("--stage-xz", action="store_true", help="with --stage-data: recompress .gz files with xz -9 (chrX "
                    "18.9 -> 15.0 MiB, about 3 CPU minutes once), for a small device working tree")
    ap.add_argument("--cache-dir", default=None, help="decompressed FASTA cache (default ~/.cache/mambaverse/fasta)")
    ap.add_argument("--save-ckpt", default="runs/dna_pretrain_context/chrX_pretrained.ckpt")
    ap.add_argument("--work-dir", default="runs/dna_pretrain_context")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    ap.add_argument("--from-json", default=None, metavar="JSON", help="rewrite the markdown and the plot of a results "
                    "JSON (e.g. one written on the GPU machine) into --out, with --tag or the JSON's tag, and exit")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args, given = C.parse_args(ap, argv_list)
    if args.stage_data:
        C.check_out_dir(args.stage_data, "--stage-data")
        C.stage_data(args.stage_data, [CHRX], xz=args.stage_xz)
        return 0
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        tag = args.tag or Path(args.from_json).stem.removeprefix("dna_pretrain_context_")
        print("wrote " + ", ".join(map(str, write_results(res["rows"], res.get("markov") or [], res["meta"],
                                                         Path(args.out), tag))))
        return 0
    if args.tiny and "lengths" in given and "noise_lengths" not in given:
        given.add("noise_lengths")  # --tiny's noise length (1024) is its own longest, not the given lengths'
        args.noise_lengths = [max(args.lengths)]
    C.apply_tiny(args, given, TINY)
    C.check_lengths(args.lengths)
    C.check_time_budget(args.time_budget)
    args.lengths = sorted(set(args.lengths))
    Lmax, Lmin = max(args.lengths), min(args.lengths)
    if any(Lmax % L for L in args.lengths) or any(L % 2 for L in args.lengths):
        raise SystemExit(f"--lengths {args.lengths}: every length must be even and divide the longest ({Lmax})")
    args.start_len = args.start_len or Lmin
    args.noise_lengths = sorted(set(args.noise_lengths or [Lmin, Lmax]))
    if not set(args.noise_lengths) <= set(args.lengths):
        raise SystemExit(f"--noise-lengths {args.noise_lengths}: every one must be in --lengths {args.lengths}")
    args.handoff_length = args.handoff_length or Lmax
    gpus = parse_gpus(args.gpus)
    if args.worker is None:
        check_gpus_visible(args.gpus, gpus)
        for flag, folder in (("--out", args.out), ("--work-dir", args.work_dir),
                             ("--save-ckpt", Path(args.save_ckpt).parent if args.save_ckpt else None)):
            if folder is not None:
                C.check_out_dir(folder, flag)
    gpu = args.device.startswith("cuda") or any(g != "cpu" for g in gpus)
    args.precision = args.precision or ("bf16-mixed" if args.device.startswith("cuda") else "32-true")
    args.num_workers = args.num_workers if args.num_workers is not None else 0
    args.run_overhead = args.run_overhead if args.run_overhead is not None else (6.0 if gpu else 3.0)
    args.chrx = C.data_path(CHRX, args.data_dir)
    if not args.device.startswith("cuda"):
        C.set_cpu_threads()
    if args.worker is not None:
        return worker_main(args, Path(args.worker_dir), args.worker)

    clock = C.Clock(args.time_budget)
    t_start = time.time()
    tag = args.tag or ("cuda" if gpu else args.device.split(":")[0])
    dm = make_datamodule(args, args.seeds[0], 1)  # decompress and index once, so every process finds the cache ready
    HeldOut(dm, args.val_tiles, Lmax)  # fail now if the held-out region is too short
    del dm
    anchor = C.BackgroundJob(_markov_job, args, "markov anchor", bool(args.markov_orders))  # forked before anything touches CUDA
    chunk_len = None if args.chunk_len in ("auto", "0", 0) else int(args.chunk_len)
    need_probe = args.tokens == "auto" or args.chunk_len == "auto"
    procs, wdir = [], None
    if gpus:
        wdir = Path(args.work_dir) / f"workers_{tag}_{os.getpid()}"
        wdir.mkdir(parents=True, exist_ok=True)
        for i, g in enumerate(gpus):
            env, dev = worker_env(g)
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv_list, "--device", dev, "--worker", str(i),
                   "--worker-dir", str(wdir)]
            procs.append(subprocess.Popen(cmd, env=env))
        print(json.dumps({"workers": [{"index": i, "gpu": g, "pid": p.pid} for i, (g, p) in enumerate(zip(gpus, procs))]}),
              flush=True)
        probes = wait_for_probes(procs, wdir, timeout=min(300.0, 0.5 * clock.left()) if args.time_budget else 1800.0)
        alive = sorted(probes)
        if not alive:
            raise SystemExit("no worker finished its probe (see the worker output above)")
        probe_s = {}
        for i in alive:  # the slowest device plans every run; chunking if any device needed it
            for L, s in probes[i]["probe"].items():
                probe_s[int(L)] = max(probe_s.get(int(L), 0.0), s)
        chunk_len = max([c for c in [chunk_len] + [probes[i]["chunk_len"] for i in alive] if c], default=None)
        devices = [probes[i].get("device", "?") for i in alive]
        n_workers = len(gpus)
    else:
        probe_s, chunk_len = probe(args, chunk_len, args.lengths) if need_probe else ({}, chunk_len)
        alive, n_workers = [0], 1
    # the plan fills the time left, less a final margin for the anchor, the merge and the plot
    left = (clock.left() - 10.0) if args.time_budget is not None else None
    plan = make_plan(args, probe_s, chunk_len, len(alive), left)
    if gpus:  # shares over the live workers, indexed by worker
        shares = [[] for _ in range(n_workers)]
        for i, share in zip(alive, plan["shares"]):
            shares[i] = share
        plan["shares"] = shares
    plan["deadline"] = (t_start + args.time_budget - 5.0) if args.time_budget is not None else None
    T = Lmax * args.batch_windows
    steps = plan["steps"]
    args.lr_warmup_steps = plan["lr_warmup_steps"]
    params = sum(p.numel() for p in build_model(args, None).parameters())
    sps = max(probe_s.values()) if probe_s else None
    meta = {**C.run_meta(argparse.Namespace(**{**vars(args), "device": "cpu"}) if gpus else args, argv),  # no CUDA here
            **({"device": f"{len(devices)} × {devices[0]}" if len(set(devices)) == 1 else " + ".join(devices)}
               if gpus else {}),
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
                      f"time budget {args.time_budget} s, planned from a probe of {sps if sps else 0:.3f} s per step "
                      f"at the slowest length",
            "workers": (f"{n_workers} worker processes, one per device ({', '.join(gpus)}), runs shared by measured cost: "
                        + "; ".join(f"worker {i}: " + ", ".join(f"{L:,}/seed {s}" for L, s in share)
                                    for i, share in enumerate(plan["shares"])) if gpus else "one process"),
            "evaluation": f"{args.val_tiles} tiles of {Lmax:,} consecutive held-out targets (from {Lmax // 2:,} bases "
                          f"into the held-out region), the same targets for every L; all positions: sequences of L "
                          f"(context 0..L-1, the paper's validation loss); context >= L/2: sequences of L + 1 every L/2 "
                          f"bases, each scoring its second half",
            "anchor": "order-k Markov chains on the same held-out targets (table below); the published reference is the "
                      "Mamba paper's Figure 5 right (HG38, far more tokens), not run here"}
    print(json.dumps({"plan": {k: v for k, v in plan.items() if k != "deadline"}}), flush=True)
    out = Path(args.out)

    def progress(rows):
        meta["total_s"] = round(clock.elapsed(), 1)
        write_results(rows, anchor.poll(), meta, out, tag, final=False)

    if gpus:
        rows = supervise(procs, wdir, plan, progress, hard_stop=(t_start + args.time_budget + 20.0)
                         if args.time_budget is not None else None)
    else:
        rows = do_runs(args, plan, [tuple(r) for r in plan["shares"][0]], plan["deadline"], progress)
    markov = anchor.poll(wait=max(1.0, min(600.0, clock.left() - 3)) if args.time_budget is not None else 600.0)
    meta["total_s"] = round(clock.elapsed(), 1)
    paths = write_results(rows, markov, meta, out, tag)
    print(f"dna_pretrain_context: {sum(r.get('val_bpb') is not None for r in rows)} of {len(run_list(args))} runs in "
          f"{clock.elapsed() / 60:.1f} min; wrote " + ", ".join(map(str, paths)), flush=True)
    return 0


def wait_for_probes(procs, wdir: Path, timeout: float) -> dict[int, dict]:
    """{worker index: its probe file} for every worker that wrote one; a worker that exits first is left out."""
    t0, got = time.monotonic(), {}
    while time.monotonic() - t0 < timeout:
        for i, p in enumerate(procs):
            f = wdir / f"probe_{i}.json"
            if i not in got and f.exists():
                got[i] = json.loads(f.read_text())
        if all(i in got or p.poll() is not None for i, p in enumerate(procs)):
            break
        time.sleep(0.2)
    for i, p in enumerate(procs):
        if i not in got and p.poll() is None:
            p.kill()  # no probe in time: its share goes to the others
            print(f"worker {i}: no probe after {timeout:.0f} s; stopped", flush=True)
    return got


def supervise(procs, wdir: Path, plan: dict, progress, hard_stop: float | None) -> list[dict]:
    """Hand the plan to the workers, merge their rows files whenever one changes (``progress(rows)``), and return
    the merged rows once every worker has exited; after ``hard_stop`` (unix time) the workers still running are
    stopped and their unfinished runs say so."""
    C.write_json(wdir / "plan.json", plan)
    seen: dict[int, float] = {}
    rows_of: dict[int, list[dict]] = {}

    def collect() -> bool:
        changed = False
        for i in range(len(procs)):
            f = wdir / f"rows_{i}.json"
            if f.exists() and f.stat().st_mtime != seen.get(i):
                seen[i] = f.stat().st_mtime
                try:
                    rows_of[i] = json.loads(f.read_text())
                    changed = True
                except ValueError:
                    pass
        return changed

    while any(p.poll() is None for p in procs):
        if collect():
            progress(merged(rows_of))
        if hard_stop is not None and time.time() > hard_stop:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    p.kill()
                    print(f"worker {i}: still running past the time budget; stopped", flush=True)
            break
        time.sleep(1.0)
    for p in procs:
        p.wait()
    collect()
    rows = merged(rows_of)
    for i, share in enumerate(plan["shares"]):
        have = {(r["context"], r["seed"]) for r in rows_of.get(i, [])}
        for L, s in share:
            if (L, s) not in have:
                rows.append({"context": L, "seed": s, "val_bpb": None, "worker": i,
                             "status": f"not run: worker {i} exited (code {procs[i].returncode}) before this run"})
    return rows


def merged(rows_of: dict[int, list[dict]]) -> list[dict]:
    return [r for i in sorted(rows_of) for r in rows_of[i]]


if __name__ == "__main__":
    sys.exit(C.run_main(main))
