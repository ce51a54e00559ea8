"""Vision tasks as LightningModules: image classification and semantic segmentation.

Both build their backbone through timm's registry, so ``backbone`` is one of our presets (``vim_tiny``,
``vmamba_t``, ..., i.e. timm's ``mambaverse_<preset>``) or any timm model (``resnet18``, ``deit_tiny_patch16_224``),
with ``backbone_overrides`` passed to ``timm.create_model``.

- `ImageClassifier`: cross-entropy (soft-target under mixup/cutmix), top-1/top-5 accuracy (torchmetrics),
  a confusion-matrix PNG and ``test_metrics.json`` after ``test``, ``predictions.csv`` after ``predict``.
- `SemanticSegmenter`: a UPerNet-style `FPNDecoder` on the backbone's feature pyramid, cross-entropy with
  ``ignore_index``, mIoU and per-class IoU (torchmetrics), pixel accuracy; after ``test`` a PNG of
  prediction overlays and ``test_metrics.json``; after ``predict`` one mask PNG per image.
Optimiser: AdamW without weight decay on norms, biases, position embeddings, class tokens and the SSM's
A_log/D (timm's ``param_groups_weight_decay``); linear warmup then cosine decay, stepped per batch.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix,
                                         MulticlassJaccardIndex)

from mambaverse.atomic import atomic_write
from mambaverse.errors import ConfigError

from .heads import SegmentationModel

_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "A_log", ".D")


def timm_name(backbone: str) -> str:
    """A preset of ours -> timm's ``mambaverse_<preset>``; any other name is taken as a timm model."""
    import timm

    import mambaverse.vision  # noqa: F401  (registers our presets in timm)

    if timm.is_model(f"mambaverse_{backbone}"):
        return f"mambaverse_{backbone}"
    if timm.is_model(backbone):
        return backbone
    raise ConfigError(f"backbone {backbone!r}: not a vision preset (mambaverse models 'v*') nor a timm model name")


def build_backbone(backbone: str, **kwargs) -> nn.Module:
    """``timm.create_model`` of a preset or timm name; unknown keyword arguments raise ConfigError (one line)."""
    import timm

    name = timm_name(backbone)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"backbone {backbone!r} ({name}): {exc}; check backbone_overrides") from None


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


class _VisionTask(pl.LightningModule):
    """Optimiser, schedule and output folder shared by the vision tasks."""

    def _optim_setup(self, lr, weight_decay, warmup_steps, min_lr_ratio):
        self.lr, self.weight_decay, self.warmup_steps, self.min_lr_ratio = lr, weight_decay, warmup_steps, min_lr_ratio

    def configure_optimizers(self):
        from timm.optim import param_groups_weight_decay

        no_decay = [n for n, _ in self.named_parameters() if n.endswith(_NO_DECAY_SUFFIXES)]
        groups = param_groups_weight_decay(self, self.weight_decay, no_weight_decay_list=no_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = max(1, int(total)) if math.isfinite(total) else 10 ** 9  # no epoch/step limit: no decay
        warmup = min(self.warmup_steps, max(0, total - 1))

        def factor(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        self.check_datamodule(getattr(self._trainer, "datamodule", None) if self._trainer is not None else None)

    def check_datamodule(self, datamodule) -> None:
        """Raise a one-line ConfigError if the data has more classes than the model's ``num_classes`` (a label past
        the head fails deep in cross-entropy or the metrics). Lightning calls it at setup, after the datamodule's
        own setup, through :meth:`setup`."""
        n = getattr(datamodule, "num_classes", None)
        if isinstance(n, int) and not isinstance(n, bool) and n > self.num_classes:
            raise ConfigError(f"model.init_args.num_classes: got {self.num_classes}; the data "
                              f"({type(datamodule).__name__}) has {n} classes; expected at least {n}")

    def _class_names(self, n: int) -> list[str]:
        if self.class_names:
            return list(self.class_names)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "classes", None)
        return [str(c) for c in names] if names and len(names) == n else [str(i) for i in range(n)]

    def _out(self) -> Path | None:
        return Path(self.output_dir) if self.output_dir else None


class ImageClassifier(_VisionTask):
    """Image classification with a timm-interface backbone.

    Args:
        num_classes: classes.
        backbone: preset (``vim_tiny``, ``vim_t``, ``vmamba_t``, ...) or timm model name.
        backbone_overrides: keyword arguments for ``timm.create_model`` (e.g. ``{img_size: 28, patch_size: 4}``).
        in_chans: image channels (1 for grayscale data).
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW and the warmup + cosine schedule (per step).
        label_smoothing: for hard labels (mixup's soft labels carry their own smoothing).
        grad_checkpointing: recompute blocks in backward (``set_grad_checkpointing``).
        output_dir: where test/predict write confusion_matrix.png, test_metrics.json, predictions.csv.
        class_names: names for the outputs (default: the data module's ``classes``).
    Batches: (images (B, C, H, W) float, labels (B,) int64 or soft (B, num_classes) float); predict: (images, paths).
    """

    def __init__(self, num_classes: int, backbone: str = "vim_tiny", backbone_overrides: dict | None = None,
                 in_chans: int = 3, lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 100,
                 min_lr_ratio: float = 0.01, label_smoothing: float = 0.0, grad_checkpointing: bool = False,
                 output_dir: str | None = None, class_names: list[str] | None = None):
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}; expected at least 2")
        self.model = build_backbone(backbone, num_classes=num_classes, in_chans=in_chans, **(backbone_overrides or {}))
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self._optim_setup(lr, weight_decay, warmup_steps, min_lr_ratio)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.output_dir, self.class_names = output_dir, class_names
        top5 = min(5, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self._predictions: list[tuple[str, int, float]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes)."""
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        logits = self(images)
        if targets.dim() == 2:  # mixup/cutmix soft targets
            loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.val_top1.update(logits, labels)
        self.val_top5.update(logits, labels)
        self.log("val_loss", F.cross_entropy(logits.float(), labels), batch_size=images.shape[0])
        self.log("val_acc", self.val_top1, prog_bar=True, batch_size=images.shape[0])
        self.log("val_top5", self.val_top5, batch_size=images.shape[0])

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        for metric in (self.test_top1, self.test_top5, self.test_confusion):
            metric.update(logits, labels)
        self.log("test_loss", F.cross_entropy(logits.float(), labels), batch_size=images.shape[0])

    def on_test_epoch_end(self):
        top1, top5 = self.test_top1.compute().item(), self.test_top5.compute().item()
        confusion = self.test_confusion.compute()
        self.log_dict({"test_acc": top1, "test_top5": top5})
        out = self._out()
        if out is not None and self.trainer.is_global_zero:
            names = self._class_names(self.num_classes)
            _write_json(out / "test_metrics.json", {
                "top1": top1, f"top{min(5, self.num_classes)}": top5, "n": int(confusion.sum()),
                "classes": names, "confusion_matrix": confusion.tolist(),
                "per_class_recall": (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()})
            self._save_confusion(confusion, names, out / "confusion_matrix.png", top1)
        for metric in (self.test_top1, self.test_top5, self.test_confusion):
            metric.reset()

    def _save_confusion(self, confusion, names, path, top1):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metric = MulticlassConfusionMatrix(self.num_classes)
        metric.confmat = confusion.cpu()
        metric._update_count = 1
        fig, ax = metric.plot(labels=names)  # torchmetrics' own plot
        size = max(5.0, 0.45 * self.num_classes + 2)
        fig.set_size_inches(size, size)
        ax.set_title(f"test top-1 {top1:.4f} (n={int(confusion.sum())})")
        ax.tick_params(axis="x", labelrotation=90)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)

    def predict_step(self, batch, batch_idx):
        images, paths = batch
        probs = self(images).float().softmax(-1)
        conf, pred = probs.max(-1)
        rows = list(zip(paths, pred.tolist(), conf.tolist()))
        self._predictions += rows
        return {"paths": list(paths), "pred": pred, "prob": conf}

    def on_predict_epoch_end(self):
        out = self._out()
        if out is not None and self._predictions:
            names = self._class_names(self.num_classes)

            def write(tmp):
                with open(tmp, "w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(["path", "class_index", "class_name", "probability"])
                    for path, pred, conf in self._predictions:
                        w.writerow([path, pred, names[pred], f"{conf:.6f}"])

            atomic_write(out / "predictions.csv", write)
        self._predictions = []


class SemanticSegmenter(_VisionTask):
    """Semantic segmentation: timm ``features_only`` backbone + UPerNet-style `FPNDecoder`.

    Args:
        num_classes: classes including background.
        backbone: preset or timm model name (must support ``features_only``).
        backbone_overrides: keyword arguments for ``timm.create_model``.
        in_chans: image channels.
        out_indices: pyramid levels to take (None = the backbone's default: every VMamba stage, 4 Vim blocks).
        decoder_dim, pool_scales, decoder_dropout: `FPNDecoder` settings.
        ignore_index: mask value excluded from the loss and the metrics (None = none).
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW and the schedule.
        grad_checkpointing: recompute backbone blocks in backward.
        output_dir: where test/predict write overlays.png, test_metrics.json, predictions/<image>.png.
        class_names: names for the outputs (default: the data module's ``classes``).
        overlay_count: test images drawn in overlays.png.
    Batches: (images (B, C, H, W) float, masks (B, H, W) int64); predict: (images, paths).
    Metrics: mIoU = mean IoU over the classes present in the evaluated masks or predictions (absent ones are
    NaN and skipped, as mmseg does); per-class IoU; pixel accuracy.
    """

    def __init__(self, num_classes: int, backbone: str = "vmamba_tiny", backbone_overrides: dict | None = None,
                 in_chans: int = 3, out_indices: list[int] | None = None, decoder_dim: int = 128,
                 pool_scales: list[int] = (1, 2, 3, 6), decoder_dropout: float = 0.1, ignore_index: int | None = 255,
                 lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 100, min_lr_ratio: float = 0.01,
                 grad_checkpointing: bool = False, output_dir: str | None = None,
                 class_names: list[str] | None = None, overlay_count: int = 8):
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}; expected at least 2")
        kwargs = dict(features_only=True, in_chans=in_chans, **(backbone_overrides or {}))
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        backbone_module = build_backbone(backbone, **kwargs)
        if grad_checkpointing:
            backbone_module.model.set_grad_checkpointing(True) if hasattr(backbone_module, "model") else \
                backbone_module.set_grad_checkpointing(True)
        self.model = SegmentationModel(backbone_module, num_classes, decoder_dim, tuple(pool_scales), decoder_dropout)
        self._optim_setup(lr, weight_decay, warmup_steps, min_lr_ratio)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.output_dir, self.class_names, self.overlay_count = output_dir, class_names, overlay_count
        iou = dict(num_classes=num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan"))
        self.val_iou, self.test_iou = MulticlassJaccardIndex(**iou), MulticlassJaccardIndex(**iou)
        self.test_pixel_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
        self._overlay: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes, H, W)."""
        return self.model(images)

    def _loss(self, logits, masks):
        return F.cross_entropy(logits.float(), masks, ignore_index=-100 if self.ignore_index is None else self.ignore_index)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        loss = self._loss(self(images), masks)
        self.log("train_loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    @staticmethod
    def _miou(per_class: torch.Tensor) -> float:
        present = per_class[~torch.isnan(per_class)]
        return float(present.mean()) if present.numel() else float("nan")

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        logits = self(images)
        self.val_iou.update(logits.argmax(1), masks)
        self.log("val_loss", self._loss(logits, masks), batch_size=images.shape[0])

    def on_validation_epoch_end(self):
        self.log("val_miou", self._miou(self.val_iou.compute()), prog_bar=True)
        self.val_iou.reset()

    def test_step(self, batch, batch_idx):
        images, masks = batch
        logits = self(images)
        pred = logits.argmax(1)
        self.test_iou.update(pred, masks)
        self.test_pixel_acc.update(pred, masks)
        self.log("test_loss", self._loss(logits, masks), batch_size=images.shape[0])
        room = self.overlay_count - sum(len(o[0]) for o in self._overlay)
        if room > 0:
            self._overlay.append((images[:room].detach().cpu(), masks[:room].cpu(), pred[:room].cpu()))

    def on_test_epoch_end(self):
        per_class = self.test_iou.compute().cpu()
        miou, pixel_acc = self._miou(per_class), self.test_pixel_acc.compute().item()
        self.log_dict({"test_miou": miou, "test_pixel_acc": pixel_acc})
        out = self._out()
        if out is not None and self.trainer.is_global_zero:
            names = self._class_names(self.num_classes)
            _write_json(out / "test_metrics.json", {
                "miou": miou, "pixel_accuracy": pixel_acc,
                "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in zip(names, per_class.tolist())}})
            if self._overlay:
                self._save_overlays(out / "overlays.png", names, miou)
        self.test_iou.reset()
        self.test_pixel_acc.reset()
        self._overlay = []

    def _save_overlays(self, path, names, miou):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        images = torch.cat([o[0] for o in self._overlay])
        masks = torch.cat([o[1] for o in self._overlay])
        preds = torch.cat([o[2] for o in self._overlay])
        cmap = plt.get_cmap("tab20", max(self.num_classes, 2))
        fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.5 * len(images)), squeeze=False)
        for row, (img, mask, pred) in enumerate(zip(images, masks, preds)):
            gray = img.float().mean(0).numpy()
            gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-6)
            for col, (title, labels) in enumerate((("image", None), ("ground truth", mask), ("prediction", pred))):
                ax = axes[row, col]
                ax.imshow(gray, cmap="gray")
                if labels is not None:
                    shown = np.ma.masked_where(labels.numpy() == 0, labels.numpy())  # background stays clear
                    ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(self.num_classes - 1, 1), alpha=0.5,
                              interpolation="nearest")
                if row == 0:
                    ax.set_title(title)
                ax.axis("off")
        from matplotlib.patches import Patch

        shown = range(1, min(self.num_classes, 21))  # a legend for up to 20 foreground classes
        fig.legend(handles=[Patch(color=cmap(i), alpha=0.6, label=names[i]) for i in shown], loc="lower center",
                   ncol=4, fontsize=7, frameon=False)
        fig.suptitle(f"test mIoU {miou:.3f} (background left clear)", fontsize=9)
        fig.tight_layout(rect=(0, 0.04 + 0.015 * (len(shown) // 4), 1, 0.98))
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
        plt.close(fig)

    def predict_step(self, batch, batch_idx):
        from PIL import Image

        images, paths = batch
        pred = self(images).argmax(1).to(torch.uint8 if self.num_classes <= 256 else torch.int32).cpu().numpy()
        out = self._out()
        if out is not None:
            for path, mask in zip(paths, pred):
                target = out / "predictions" / f"{Path(path).stem}.png"
                atomic_write(target, lambda tmp, m=mask: Image.fromarray(m).save(tmp, format="PNG"))
        return {"paths": list(paths), "masks": torch.from_numpy(pred)}


__all__ = ["ImageClassifier", "SemanticSegmenter", "build_backbone", "timm_name"]
