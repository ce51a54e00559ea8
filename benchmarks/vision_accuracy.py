"""Accuracy runs on real data, under a time budget:

1. Fashion-MNIST classification with Vim trained from scratch (official 10,000-image test set).
2. AAL brain-slice segmentation (background + 7 lobes, colin27 T1 from mricron-data): our VMamba against a
   timm CNN of about the same parameter count, with the same UPerNet-style decoder, data, epochs,
   optimiser and schedule; test mIoU and per-class IoU.

    python benchmarks/vision_accuracy.py --budget-minutes 6        # GPU: the whole job in one command
    python benchmarks/vision_accuracy.py --budget-minutes 6        # CPU (no GPU): small models, subsets
    python benchmarks/vision_accuracy.py --smoke                   # CPU, seconds: checks the script runs

The budget is split 50 / 25 / 25 between the three trainings. Each run first times a few training
steps and picks the number of epochs that fits its share, so the cosine schedule completes (the
segmentation pair gets the epochs the slower model affords, so both train the same schedule).
Writes ``<out>.md`` / ``<out>.json`` and copies the confusion-matrix and overlay PNGs next to them.
Needs no omegaconf/jsonargparse (no CLI); nibabel only if the AAL slice folder is not built yet. On a
machine without the Debian data, build and copy them first (``mambaverse aal-slices runs/data/aal_slices_gpu
--axes axial coronal sagittal --step 1``; the IDX files into ``.cache/fashion-mnist``) and pass
``--fmnist-root .cache/fashion-mnist``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROFILES = {
    # Vim-Ti width, half depth, on 7x7 patches of 4 px; full data
    "gpu": dict(
        fmnist_model=dict(img_size=28, patch_size=4, embed_dim=192, depth=12, drop_path_rate=0.05),
        fmnist_data=dict(batch_size=256, val_size=5000, train_subset=None, test_subset=None,
                         train_transform={"scale": (0.75, 1.0), "ratio": (0.9, 1.1), "re_prob": 0.25}),
        fmnist_task=dict(lr=2e-3, weight_decay=0.05, label_smoothing=0.1),
        max_epochs=60, seg_max_epochs=200, precision="bf16-mixed", workers=6,
        seg_data=dict(img_size=128, batch_size=16, axes=("axial", "coronal", "sagittal"), step=1),
        seg_ours=("vmamba_tiny", dict(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2)), (0, 1, 2, 3)),
        seg_cnn=("resnet14t", {}, (1, 2, 3, 4)),
        seg_task=dict(decoder_dim=128, lr=1e-3, weight_decay=0.05),
    ),
    "cpu": dict(
        fmnist_model=dict(img_size=28, patch_size=4, embed_dim=48, depth=2, d_state=8),
        fmnist_data=dict(batch_size=64, val_size=500, train_subset=4000, test_subset=2000,
                         train_transform={"scale": (0.75, 1.0), "ratio": (0.9, 1.1)}),
        fmnist_task=dict(lr=3e-3, weight_decay=0.05, label_smoothing=0.0),
        max_epochs=20, seg_max_epochs=40, precision="32-true", workers=0,
        seg_data=dict(img_size=64, batch_size=8, axes=("axial", "coronal"), step=2),
        seg_ours=("vmamba_tiny", dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), d_state=8), (0, 1, 2, 3)),
        seg_cnn=("resnet10t", dict(channels=(18, 36, 72, 144)), (1, 2, 3, 4)),
        seg_task=dict(decoder_dim=32, lr=3e-3, weight_decay=0.05),
    ),
}
PROFILES["smoke"] = {**PROFILES["cpu"],
                     "fmnist_model": dict(img_size=28, patch_size=7, embed_dim=16, depth=1, d_state=4),
                     "fmnist_data": dict(batch_size=32, val_size=64, train_subset=128, test_subset=64),
                     "max_epochs": 1, "seg_max_epochs": 1,
                     "seg_data": dict(img_size=32, batch_size=4, axes=("axial",), step=12),
                     "seg_ours": ("vmamba_tiny", dict(dims=(8, 16), depths=(1, 1), d_state=4), (0, 1)),
                     "seg_cnn": ("resnet10t", dict(channels=(8, 16, 32, 64)), (1, 2)),
                     "seg_task": dict(decoder_dim=8, lr=3e-3, weight_decay=0.05)}


def _trainer(epochs, precision, budget_s, out_dir):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="auto", devices=1, max_epochs=epochs, precision=precision, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      max_time=datetime.timedelta(seconds=budget_s), default_root_dir=str(out_dir),
                      num_sanity_val_steps=0)


def _seconds_per_epoch(task, dm, precision, probe_steps=6) -> float:
    """Time `probe_steps` training steps (after 2 warm-up steps) on a throwaway copy; scale to one epoch."""
    import copy

    import lightning.pytorch as pl

    probe = copy.deepcopy(task)

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 2:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

    clock = Clock()
    trainer = pl.Trainer(accelerator="auto", devices=1, max_steps=probe_steps + 2, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(probe, datamodule=dm)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - clock.start) / probe_steps
    return per_step * len(dm.train_dataloader()) * 1.1  # + validation


def run_fmnist(p, budget_s, out_dir, workers, root, fixed_epochs=None):
    from mambaverse.vision.data import FashionMNISTDataModule
    from mambaverse.vision.tasks import ImageClassifier

    t0 = time.perf_counter()
    dm = FashionMNISTDataModule(root=root, in_chans=1, img_size=28, num_workers=workers, **p["fmnist_data"])
    dm.setup("fit")
    make = lambda: ImageClassifier(10, "vim_tiny", dict(p["fmnist_model"]), in_chans=1,  # noqa: E731
                                   warmup_steps=max(1, len(dm.train_dataloader()) // 2),
                                   output_dir=str(out_dir / "fmnist"), **p["fmnist_task"])
    task = make()
    if fixed_epochs:  # no timing probe, no time limit (busy shared CPUs make timings unreliable)
        epochs, limit = fixed_epochs, 10 ** 6
    else:
        epoch_s = _seconds_per_epoch(task, dm, p["precision"])
        remaining = budget_s - (time.perf_counter() - t0)
        epochs = int(max(1, min(p["max_epochs"], remaining * 0.9 // epoch_s)))
        limit = remaining * 1.3  # max_time only as a safety net
    trainer = _trainer(epochs, p["precision"], limit, out_dir)
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    train_s = time.perf_counter() - start
    trainer.test(task, datamodule=dm, verbose=False)
    metrics = json.loads((out_dir / "fmnist" / "test_metrics.json").read_text())
    return {"task": "fashion_mnist", "model": "VimBackbone", "overrides": p["fmnist_model"],
            "params_m": sum(x.numel() for x in task.model.parameters()) / 1e6, "epochs_planned": epochs,
            "epochs_done": trainer.current_epoch, "train_images": len(dm.train_set), "test_images": metrics["n"],
            "train_s": round(train_s, 1), "top1": metrics["top1"], "top5": metrics.get("top5")}


def run_segmentation(p, budget_s, out_dir, workers, cache_dir, fixed_epochs=None):
    from mambaverse.vision.data import AALSliceDataModule
    from mambaverse.vision.tasks import SemanticSegmenter

    t0 = time.perf_counter()
    dm = AALSliceDataModule(cache_dir=str(cache_dir), labels="lobes", num_workers=workers, **p["seg_data"])
    dm.setup("fit")
    tasks = {}
    for tag, (backbone, overrides, out_indices) in (("ours", p["seg_ours"]), ("cnn", p["seg_cnn"])):
        torch.manual_seed(0)
        tasks[tag] = SemanticSegmenter(8, backbone, dict(overrides), in_chans=1, out_indices=list(out_indices),
                                       ignore_index=None, warmup_steps=max(1, len(dm.train_dataloader())),
                                       output_dir=str(out_dir / f"aal_{tag}"), **p["seg_task"])
    if fixed_epochs:
        epochs, limit = fixed_epochs, 10 ** 6
    else:
        epoch_s = max(_seconds_per_epoch(t, dm, p["precision"]) for t in tasks.values())
        remaining = budget_s - (time.perf_counter() - t0)
        epochs = int(max(1, min(p["seg_max_epochs"], remaining / 2 * 0.9 // epoch_s)))
        limit = remaining / 2 * 1.3
    rows = []
    for tag, task in tasks.items():
        trainer = _trainer(epochs, p["precision"], limit, out_dir)
        start = time.perf_counter()
        trainer.fit(task, datamodule=dm)
        train_s = time.perf_counter() - start
        trainer.test(task, datamodule=dm, verbose=False)
        metrics = json.loads((out_dir / f"aal_{tag}" / "test_metrics.json").read_text())
        backbone, overrides, _ = p[f"seg_{tag}"]
        rows.append({"task": "aal_lobes", "model": backbone, "overrides": overrides,
                     "backbone_params_m": sum(x.numel() for x in task.model.backbone.parameters()) / 1e6,
                     "params_m": sum(x.numel() for x in task.model.parameters()) / 1e6,
                     "epochs_planned": epochs, "epochs_done": trainer.current_epoch, "train_s": round(train_s, 1),
                     "train_slices": len(dm.train_set), "test_slices": len(dm.test_set),
                     "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
                     "per_class_iou": metrics["per_class_iou"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=6.0,
                        help="whole job (default 6; the epochs are planned to fit, max_time stops at 1.3x a share)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models and data, about a minute")
    parser.add_argument("--only", choices=("fmnist", "aal"), default=None)
    parser.add_argument("--fmnist-epochs", type=int, default=None, help="fixed epochs instead of fitting the budget")
    parser.add_argument("--seg-epochs", type=int, default=None, help="fixed epochs (both backbones) instead of the budget")
    parser.add_argument("--fmnist-root", default="/usr/share/datasets/fashion-mnist",
                        help="folder with the four Fashion-MNIST IDX .gz files (Debian dataset-fashion-mnist)")
    parser.add_argument("--aal-dir", default=None, help="built AAL slice folder (default runs/data/aal_slices_<profile>)")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/results/vision_accuracy_<device>)")
    args = parser.parse_args(argv)

    import lightning.pytorch as pl

    gpu = torch.cuda.is_available() and not args.smoke
    profile = "smoke" if args.smoke else ("gpu" if gpu else "cpu")
    p = PROFILES[profile]
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    device_name = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    slug = device_name.lower().replace("nvidia ", "").replace(" ", "_").replace("(", "").replace(")", "")
    out = Path(args.out or (f"runs/bench/vision_accuracy_smoke" if args.smoke else f"benchmarks/results/vision_accuracy_{'gpu_' + slug if gpu else 'cpu'}"))
    work = Path("runs/bench") / out.name
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    aal_dir = Path(args.aal_dir or f"runs/data/aal_slices_{profile}")
    budget = args.budget_minutes * 60
    pl.seed_everything(0, verbose=False)
    t0 = time.perf_counter()
    results = []
    if args.only in (None, "fmnist"):
        results.append(run_fmnist(p, budget * (0.5 if args.only is None else 1.0), work, p["workers"], args.fmnist_root,
                                  args.fmnist_epochs))
        print(json.dumps(results[-1]), flush=True)
    if args.only in (None, "aal"):
        left = budget - (time.perf_counter() - t0)
        results += run_segmentation(p, left, work, p["workers"], aal_dir, args.seg_epochs)
        print(json.dumps(results[-2:]), flush=True)

    import timm

    meta = {"device": device_name, "profile": profile, "precision": p["precision"], "budget_minutes": args.budget_minutes,
            "wall_s": round(time.perf_counter() - t0, 1),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "lightning": pl.__version__}}
    lines = [f"# Vision accuracy ({profile} profile, {args.budget_minutes:g}-minute budget)", "",
             f"Device: {device_name}; {p['precision']}; {meta['date']}; torch {torch.__version__}, timm {timm.__version__}, "
             f"lightning {pl.__version__}. Whole run {meta['wall_s']} s. "
             f"Command: `python benchmarks/vision_accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    for r in results:
        if r["task"] == "fashion_mnist":
            lines += ["## Fashion-MNIST, Vim from scratch", "",
                      "| model | params (M) | train images | epochs | train s | test images | top-1 | top-5 |",
                      "|---|---|---|---|---|---|---|---|",
                      f"| Vim {r['overrides']} | {r['params_m']:.3f} | {r['train_images']} | {r['epochs_done']} | "
                      f"{r['train_s']} | {r['test_images']} | {r['top1']:.4f} | {r['top5']:.4f} |", "",
                      "Target in the issue: top-1 >= 0.93.", ""]
    seg = [r for r in results if r["task"] == "aal_lobes"]
    if seg:
        names = list(seg[0]["per_class_iou"])
        lines += ["## AAL lobe segmentation (one brain; held-out slices), same decoder and schedule", "",
                  "| backbone | backbone params (M) | total params (M) | train / test slices | epochs | train s | mIoU | pixel acc | "
                  + " | ".join(names) + " |", "|---" * (8 + len(names)) + "|"]
        for r in seg:
            per = " | ".join("—" if r["per_class_iou"][n] is None else f"{r['per_class_iou'][n]:.3f}" for n in names)
            lines.append(f"| {r['model']} {r['overrides'] or ''} | {r['backbone_params_m']:.3f} | {r['params_m']:.3f} | "
                         f"{r['train_slices']} / {r['test_slices']} | {r['epochs_done']} | {r['train_s']} | {r['miou']:.4f} | "
                         f"{r['pixel_accuracy']:.4f} | {per} |")
        lines += ["", "One subject only: the test slices are unseen slices of the same brain, so this measures "
                  "in-subject generalisation, not across brains.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    for src, suffix in (("fmnist/confusion_matrix.png", "_fmnist_confusion.png"), ("aal_ours/overlays.png", "_aal_ours_overlays.png"),
                        ("aal_cnn/overlays.png", "_aal_cnn_overlays.png")):
        if (work / src).is_file():
            shutil.copy(work / src, str(out) + suffix)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
