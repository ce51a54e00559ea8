"""The genomics demo: train a small bidirectional RC-equivariant (Caduceus-PS-style) DNA classifier on
CPU through the ``mambaverse`` CLI, test it, and say where the checkpoint and plots are.

    python -m mambaverse.genomics.demo                     # task (a): species, about 4 min on 2 idle cores
    python -m mambaverse.genomics.demo --config genomics/configs/strains.yaml   # task (b): S. aureus strains

Training is budgeted in steps (the config's ``max_steps`` / ``max_epochs``), so a slow or busy machine takes
longer but trains the same model. ``--max-minutes`` adds a wall-clock cap; if it cuts training short, the
summary says so, with the steps done, the best validation accuracy and its checkpoint. Every run starts by
removing the checkpoints and metrics of an earlier run in the same folder, and the checkpoint printed is the
one this run's ModelCheckpoint recorded as best, so it never points at an older model. A run stopped by
SIGTERM (or killed) continues with ``--resume``, from its ``checkpoints/last.ckpt``.

On a busy shared machine, run it with ``OMP_WAIT_POLICY=PASSIVE`` (``make demo`` does): torch's OpenMP threads
then sleep instead of spinning while they wait, which on a loaded 2-core box made a training step 8x faster.

The run's resolved config is written next to its outputs, so the same run can be repeated with
``mambaverse fit --config <output>/config.yaml``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

from mambaverse.atomic import atomic_write_bytes


def default_config() -> Path:
    return Path(str(resources.files("mambaverse.genomics") / "configs" / "demo.yaml"))


def _retarget(cfg: dict, out: Path, max_minutes: float | None) -> dict:
    """Point every output path of the config at ``out``; cap the training time if asked (else no cap)."""
    tr = cfg.setdefault("trainer", {})
    tr["default_root_dir"] = str(out)
    tr["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out), "name": "logs"}}
    cbs = [c for c in tr.get("callbacks", []) or [] if not c["class_path"].endswith("ModelCheckpoint")]
    cbs.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(out / "checkpoints"), "filename": "best", "monitor": "val_acc", "mode": "max",
                              "save_last": True}})
    tr["callbacks"] = cbs
    tr.pop("max_time", None)
    if max_minutes:
        tr["max_time"] = {"seconds": int(max_minutes * 60)}
    cfg["model"].setdefault("init_args", {})["output_dir"] = str(out)
    return cfg


def planned_steps(cfg: dict) -> int:
    """The optimizer steps the config asks for: ``max_steps``, or ``max_epochs`` x batches per epoch."""
    tr, data = cfg.get("trainer", {}), cfg["data"].get("init_args", {})
    per_epoch = -(-int(data.get("train_samples", 2048)) // int(data.get("batch_size", 16)))
    by_epochs = per_epoch * int(tr.get("max_epochs") or 1000)
    max_steps = int(tr.get("max_steps") or -1)
    return min(max_steps, by_epochs) if max_steps > 0 else by_epochs


def fit_outcome(ckpt_dir: Path) -> tuple[int | None, float | None, Path | None]:
    """(steps trained, best monitored score, best checkpoint) as this run's ModelCheckpoint recorded them in
    last.ckpt; the best path is the one it wrote, never a file an earlier run left."""
    import torch

    last = ckpt_dir / "last.ckpt"
    if not last.exists():
        return None, None, None
    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    best_score, best = None, None
    for key, cb in (state.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and cb.get("best_model_path"):
            best = Path(cb["best_model_path"])
            score = cb.get("best_model_score")
            best_score = float(score) if score is not None else None
            break
    return int(state.get("global_step", 0)), best_score, best if best is not None and best.exists() else last


def _learning_curve(out: Path) -> Path | None:
    from mambaverse.genomics.metrics import save_figure

    logs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    fit_logs = [p for p in logs if "train_loss" in p.read_text().split("\n", 1)[0]]
    if not fit_logs:
        return None
    rows = list(csv.DictReader(open(fit_logs[-1])))
    tl = [(int(r["step"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
    va = [(int(r["step"]), float(r["val_acc"])) for r in rows if r.get("val_acc")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if tl:
        ax.plot(*zip(*tl), color="tab:gray", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    if va:
        ax2 = ax.twinx()
        ax2.plot(*zip(*va), "o-", color="tab:blue", label="val accuracy")
        ax2.set_ylabel("val accuracy")
        ax2.set_ylim(0, 1.02)
    handles = [h for a in fig.axes for h in a.get_lines()]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], loc="center right")
    ax.set_title("genomics demo: learning curve")
    path = save_figure(fig, out / "learning_curve.png")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="classification YAML (default: the packaged configs/demo.yaml)")
    ap.add_argument("--output", default="runs/genomics_demo", help="folder for checkpoints, plots and metrics")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --output from its checkpoints/last.ckpt (after a kill or SIGTERM)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="wall-clock cap on training (default: none; the config's step budget decides)")
    args = ap.parse_args(argv)

    from mambaverse.cli import main as cli

    src = Path(args.config) if args.config else default_config()
    if not src.exists():
        print(f"demo: error: config {src} not found", file=sys.stderr)
        return 2
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = _retarget(yaml.safe_load(src.read_text()), out, args.max_minutes)
    run_cfg = out / "config.yaml"
    atomic_write_bytes(run_cfg, yaml.safe_dump(cfg, sort_keys=False).encode())
    resume = out / "checkpoints" / "last.ckpt"
    if args.resume and not resume.exists():
        print(f"demo: error: --resume: {resume} not found; run the demo without --resume first", file=sys.stderr)
        return 2
    # an earlier run's files must not pass for this run's (ModelCheckpoint would also name a new best
    # "best-v1.ckpt" beside an old best.ckpt); a resumed run keeps its own checkpoints
    old_ckpts = [] if args.resume else list((out / "checkpoints").glob("*.ckpt"))
    for stale in [*old_ckpts, out / "test_metrics.json", out / "confusion_matrix.png", out / "learning_curve.png"]:
        stale.unlink(missing_ok=True)

    t0 = time.time()
    steps = planned_steps(cfg)
    cap = f", at most {args.max_minutes:g} min" if args.max_minutes else ""
    print(f"demo: training {cfg['model']['init_args'].get('backbone')} on {len(cfg['data']['init_args']['files'])} labels "
          f"(window {cfg['data']['init_args'].get('window')}) for {steps} steps{cap}; config {run_cfg}", flush=True)
    rc = cli(["fit", "--config", str(run_cfg), *(["--ckpt_path", str(resume)] if args.resume else [])])
    if rc:
        if rc == 143:
            print(f"demo: stopped by SIGTERM; continue with: python -m mambaverse.genomics.demo --resume "
                  f"--output {out}", file=sys.stderr)
        return rc
    done, best_score, ckpt = fit_outcome(out / "checkpoints")
    if ckpt is None:
        print(f"demo: error: training wrote no checkpoint into {out / 'checkpoints'}", file=sys.stderr)
        return 1
    rc = cli(["test", "--config", str(run_cfg), "--ckpt_path", str(ckpt)])
    if rc:
        return rc
    metrics = json.loads((out / "test_metrics.json").read_text())
    curve = _learning_curve(out)
    mins = (time.time() - t0) / 60
    print("\n" + "=" * 72)
    print(f"demo: test accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  MCC {metrics['mcc']:.4f}  "
          f"on {metrics['n']} held-out windows ({', '.join(metrics['class_names'])}); {mins:.1f} min")
    if done is not None and done < steps:
        why = f"the {args.max_minutes:g}-min cap stopped" if args.max_minutes else "stopped"
        best_txt = f"best val_acc {best_score:.4f}" if best_score is not None else "no validation yet"
        print(f"demo: STOPPED EARLY    {why} training after {done} of {steps} steps; {best_txt}; tested {ckpt}")
    print(f"demo: checkpoint       {ckpt}")
    print(f"demo: confusion matrix {metrics['confusion_png']}")
    if curve:
        print(f"demo: learning curve   {curve}")
    print(f"demo: metrics          {out / 'test_metrics.json'}")
    print(f"demo: rerun with       mambaverse fit --config {run_cfg}")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    sys.exit(main())
