"""DNA tasks as LightningModules: sequence classification and LM pretraining (causal or masked).

Both build a core backbone by preset name (``backbone`` + ``backbone_overrides``) and add a token
embedding and a head; for RC-equivariant backbones (``RCPSBackbone``) the embedding is
RC-equivariant and the heads RC-invariant (classification) or RC-equivariant (LM), so the whole
model respects reverse complement exactly. ``pretrained_ckpt`` loads matching backbone, embedding,
stem (and same-size head) weights from a Lightning checkpoint of either task (or a
``save_pretrained`` folder of a backbone).
"""
from __future__ import annotations

import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaverse.errors import ConfigError, ShapeError
from mambaverse.rc import PostHocConjoin
from mambaverse.registry import create_model

from .errors import GenomicsDataError
from .metrics import atomic_write_json, classification_metrics, save_confusion_png
from .models import (LMHead, RCPatchStem, RCTokenEmbedding, SequenceHead, TokenEmbedding, insert_cls, is_causal,
                     is_rc_equivariant)
from .tokenizer import MASK_ID, NUCLEOTIDE_IDS, DNATokenizer

_TRANSFERABLE = ("backbone.", "embed.", "stem.", "head.")


def _check_writable(path, key: str) -> None:
    """ConfigError unless ``path`` is a folder that exists or can be created, and is writable."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is not a folder" if not probe.is_dir() else "is not writable"
        raise ConfigError(f"{key}: {path} cannot be created or written ({probe} {why}); expected a writable folder")


def _describe(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_pretrained_weights(module: nn.Module, path: str, allow_partial: bool = False) -> list[str]:
    """Copy backbone/embedding/stem (and classifier head) weights with matching names and shapes; return the names
    loaded. A head of another size (or an LM checkpoint, which has none) leaves the head as initialised, and so
    does a stem or embedding that the checkpoint has none of (a stem added for fine-tuning; a backbone folder).

    Every other backbone/embedding/stem tensor must be in the checkpoint with the same shape: a checkpoint of a
    model with another ``d_state``, ``dt_rank``, ``d_model`` or depth raises GenomicsDataError naming each
    mismatched key with both shapes and each missing or unexpected key, unless ``allow_partial`` (then the
    matching tensors load and the rest are listed in a warning).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise GenomicsDataError(f"pretrained_ckpt: {p} not found; expected a Lightning .ckpt or a save_pretrained folder")
    if p.is_dir():
        from mambaverse.persistence import from_pretrained

        state = {f"backbone.{k}": v for k, v in from_pretrained(p).state_dict().items()}
    else:
        # weights_only=True: a checkpoint is untrusted input, and a full unpickle runs whatever code it names
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise GenomicsDataError(f"pretrained_ckpt: {p} holds objects other than tensors and plain containers, which "
                                    f"are refused unread ({first}); expected a Lightning .ckpt or a save_pretrained folder") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise GenomicsDataError(f"pretrained_ckpt: cannot read {p} ({type(exc).__name__}); expected a Lightning .ckpt") from None
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise GenomicsDataError(f"pretrained_ckpt: {p} holds no state_dict; expected a Lightning .ckpt")
    own = module.state_dict()
    take = {k: v for k, v in state.items() if k.startswith(_TRANSFERABLE) and k in own and own[k].shape == v.shape}
    # the backbone must match in full; the embedding and stem only if the checkpoint has them (a save_pretrained
    # folder holds a backbone alone; an LM checkpoint has no stem); the head is always the task's own
    required = ("backbone.",) + tuple(pre for pre in ("embed.", "stem.") if any(k.startswith(pre) for k in state))
    shapes = [f"{k} {tuple(state[k].shape)} in the checkpoint vs {tuple(own[k].shape)} here"
              for k in sorted(own) if k.startswith(required) and k in state and state[k].shape != own[k].shape]
    missing = sorted(k for k in own if k.startswith(required) and k not in state)
    unexpected = sorted(k for k in state if k.startswith(required) and k not in own)
    problems = ([f"shape mismatch: {_describe(shapes)}"] if shapes else []) + \
        ([f"not in the checkpoint: {_describe(missing)}"] if missing else []) + \
        ([f"not in this model: {_describe(unexpected)}"] if unexpected else [])
    if not any(k.startswith("backbone.") for k in take):
        raise GenomicsDataError(f"pretrained_ckpt: {p} has no backbone weights matching backbone "
                                f"{module.hparams.get('backbone')!r} with these overrides"
                                + (f" ({'; '.join(problems)})" if problems else ""))
    if problems:
        msg = (f"pretrained_ckpt: {p} matches {len(take)} of {sum(k.startswith(_TRANSFERABLE) for k in own)} tensors "
               f"({'; '.join(problems)})")
        if not allow_partial:
            raise GenomicsDataError(msg + "; use a checkpoint of the same model (backbone_overrides) or set "
                                          "pretrained_allow_partial: true to load only the matching tensors")
        warnings.warn(msg + "; the others keep their initial values (pretrained_allow_partial)", stacklevel=2)
    module.load_state_dict(take, strict=False)
    return sorted(take)


class _DNABase(pl.LightningModule):
    def _build_trunk(self, backbone: str, backbone_overrides: dict | None, patch_size: int = 1, stem: str = "patch"):
        self.tokenizer = DNATokenizer()
        self.backbone = create_model(backbone, **(backbone_overrides or {}))
        d = self.backbone.d_model
        self.rc = is_rc_equivariant(self.backbone)
        self.causal = is_causal(self.backbone)
        V = self.tokenizer.vocab_size
        self.embed = RCTokenEmbedding(V, d, self.tokenizer.complement_map) if self.rc else TokenEmbedding(V, d)
        if patch_size < 1:
            raise ConfigError(f"patch_size: got {patch_size}, expected >= 1")
        if stem not in ("patch", "conv"):
            raise ConfigError(f"stem: got {stem!r}, expected 'patch' or 'conv'")
        self.stem = RCPatchStem(d, patch_size, self.rc, stem) if patch_size > 1 or stem == "conv" else None

    def _check_hparams(self, lr, weight_decay, warmup_steps, dropout=0.0):
        """One-line ConfigErrors for optimiser and regularisation values out of range (NaN included)."""
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or not math.isfinite(lr):
            raise ConfigError(f"model.lr: got {lr!r}; expected a finite number > 0")
        if not isinstance(weight_decay, (int, float)) or not weight_decay >= 0 or not math.isfinite(weight_decay):
            raise ConfigError(f"model.weight_decay: got {weight_decay!r}; expected a finite number >= 0")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"model.warmup_steps: got {warmup_steps!r}; expected an integer >= 0")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout: got {dropout!r}; expected a probability in [0, 1)")

    def check_length(self, length: int, who: str = "window") -> None:
        """Raise ConfigError unless a sequence of ``length`` bases runs exactly (and RC-exactly) through this model:
        a multiple of the stem's patch_size (a stem would drop the tail), and even for a middle [CLS] token of an
        RC-equivariant model (an odd length has no RC-symmetric middle)."""
        if length < 1:
            raise ShapeError(f"{who}: length {length}; expected at least one base")
        ps = self.stem.patch_size if self.stem is not None else 1
        if length < ps or length % ps:
            raise ConfigError(f"{who}: {length} bases is not a positive multiple of patch_size={ps}; the stem would "
                              f"drop {length % ps if length >= ps else length} tail bases; use a window of "
                              + " or ".join(map(str, sorted({max(ps, length - length % ps), length + ps - length % ps}))))
        if getattr(self.hparams, "pooling", None) == "cls" and self.rc and not self.causal and length % 2:
            raise ConfigError(f"{who}: {length} bases is odd, but pooling: cls puts [CLS] in the middle, which only an "
                              f"even length keeps RC-symmetric; use window {length - 1} or {length + 1}")

    def _check_data(self) -> None:
        """Check the datamodule's window against the model (called from setup)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        window = getattr(dm, "window", None)
        if isinstance(window, int):
            self.check_length(window, "data.window")

    def on_load_checkpoint(self, checkpoint) -> None:
        """Refuse a checkpoint of another model (``--ckpt_path`` with another config), naming the keys."""
        hp = checkpoint.get("hyper_parameters") or {}
        arch = ("backbone", "backbone_overrides", "patch_size", "stem", "pooling", "num_classes", "objective")
        diff = [f"{k}: {hp[k]!r} in the checkpoint vs {self.hparams[k]!r} in the config" for k in arch
                if k in hp and k in self.hparams and (hp[k] or None) != (self.hparams[k] or None)]
        own = self.state_dict()
        state = checkpoint.get("state_dict") or {}
        diff += [f"{k} {tuple(v.shape)} in the checkpoint vs {tuple(own[k].shape)} here" for k, v in state.items()
                 if k in own and hasattr(v, "shape") and v.shape != own[k].shape][:12]
        missing = sorted(set(own) - set(state))
        if state and missing:
            diff.append(f"not in the checkpoint: {_describe(missing)}")
        if diff:
            raise ConfigError(f"ckpt_path: the checkpoint is of another model than the config's ({'; '.join(diff)}); "
                              f"use the config the checkpoint was trained with")

    def on_test_start(self) -> None:
        trainer = self.trainer
        if getattr(trainer, "ckpt_path", None) is None and self.global_step == 0:
            if not getattr(self, "loaded_pretrained", None):
                raise ConfigError("ckpt_path: test was given no checkpoint and the model is untrained (no pretrained_ckpt "
                                  "either); pass --ckpt_path runs/<run>/checkpoints/best.ckpt")
            warnings.warn(f"test: no --ckpt_path; testing the weights of pretrained_ckpt "
                          f"{self.hparams.get('pretrained_ckpt')} ({len(self.loaded_pretrained)} tensors) with the rest "
                          f"as initialised", stacklevel=2)

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        if self.stem is not None:
            h = self.stem(h)
        return self.backbone(h)

    def _optim(self, lr, weight_decay, warmup_steps):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "embed" in name or name.endswith(("A_log", ".D")) else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1000

        def schedule(step):  # linear warm-up, then cosine down to 10%
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DNAClassifier(_DNABase):
    """Sequence classification of DNA windows.

    Args:
        num_classes: number of labels (the datamodule's ``files`` keys, in order).
        backbone: a model preset name (``mambaverse models`` lists them), e.g. ``caduceus_ps_dna_small``.
        backbone_overrides: hyperparameters overriding the preset's.
        pooling: ``mean`` over positions, ``last`` token, or a ``cls`` token (middle for bidirectional
            backbones, end for causal ones); RC-invariant for RC-equivariant backbones.
        patch_size: >1 shortens the sequence patch_size-fold before the backbone, with the ``stem``:
        stem: ``patch`` (a linear conv of width and stride patch_size) or ``conv`` (a conv of width 9 at every
            base, GELU, then the mean over patch_size bases: a learned k-mer counter; RC-equivariant too).
        conjoin: at evaluation, average the logits of x and of its reverse complement (Caduceus-Ph style).
        class_names: names for plots (default: the datamodule's labels).
        output_dir: where test metrics JSON and the confusion-matrix PNG go (default: the trainer's log dir).
        pretrained_ckpt: Lightning checkpoint (or save_pretrained folder) to take backbone weights from.
        pretrained_allow_partial: load only the matching tensors of a checkpoint of another model (default: refuse it,
            naming the mismatched keys).

    Raises ConfigError for values out of range (lr, dropout, num_classes, ...) and, at setup, for a data window
    that is not a multiple of patch_size (or odd with pooling: cls on an RC-equivariant backbone).
    """

    def __init__(self, num_classes: int, backbone: str = "caduceus_ps_dna_small", backbone_overrides: dict | None = None,
                 pooling: Literal["mean", "last", "cls"] = "mean", patch_size: int = 1,
                 stem: Literal["patch", "conv"] = "patch", conjoin: bool = False,
                 dropout: float = 0.0, lr: float = 2e-3, weight_decay: float = 0.01, warmup_steps: int = 20,
                 class_names: list[str] | None = None, output_dir: str | None = None,
                 pretrained_ckpt: str | None = None, pretrained_allow_partial: bool = False):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"model.num_classes: got {num_classes!r}, expected an integer >= 2")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int):
            raise ConfigError(f"model.patch_size: got {patch_size!r}, expected an integer >= 1")
        self._check_hparams(lr, weight_decay, warmup_steps, dropout)
        if output_dir:
            _check_writable(output_dir, "model.output_dir")
        self.save_hyperparameters()
        self._build_trunk(backbone, backbone_overrides, patch_size, stem)
        if pooling == "cls" and self.stem is not None:
            raise ConfigError("pooling: 'cls' cannot be combined with a stem (patch_size > 1 or stem: conv); use 'mean' or 'last'")
        self.head = SequenceHead(self.backbone.d_model, num_classes, pooling, self.rc, dropout)
        self.loaded_pretrained: list[str] = []
        if pretrained_ckpt:
            self.loaded_pretrained = load_pretrained_weights(self, pretrained_ckpt, pretrained_allow_partial)
        self._eval: dict[str, list] = {}
        self.test_results: dict | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ forward
    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, d) -- RC-invariant (B, d // 2) for RC-equivariant backbones."""
        self.check_length(ids.shape[-1], f"input of {ids.shape[-1]} bases")
        cls_index = None
        if self.hparams.pooling == "cls":
            ids, cls_index = insert_cls(ids, self.causal)
        return self.head.features(self._hidden(ids), cls_index)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.head.dropout(self.features(ids)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.hparams.conjoin and not self.training:
            return PostHocConjoin(self._logits, self.tokenizer.rc_tokens)(ids)
        return self._logits(ids)

    # ------------------------------------------------------------------ steps
    def setup(self, stage: str) -> None:
        self._check_data()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", None)
        if n is not None and n != self.hparams.num_classes:
            raise ConfigError(f"model.init_args.num_classes is {self.hparams.num_classes} but the data has {n} labels "
                              f"({', '.join(dm.labels)}); set num_classes: {n}")

    def training_step(self, batch, batch_idx):
        logits = self(batch["input_ids"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        self.log_dict({"train_loss": loss, "train_acc": acc}, prog_bar=True, batch_size=len(logits))
        return loss

    def _eval_step(self, stage, batch):
        logits = self(batch["input_ids"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log(f"{stage}_loss", loss, batch_size=len(logits))
        buf = self._eval.setdefault(stage, [])
        buf.append((logits.argmax(-1).cpu(), batch["label"].cpu()))

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def _class_names(self) -> list[str]:
        if self.hparams.class_names:
            return list(self.hparams.class_names)
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "labels", [str(i) for i in range(self.hparams.num_classes)]))

    def _finish(self, stage) -> dict:
        buf = self._eval.pop(stage, [])
        if not buf:
            return {}
        pred = torch.cat([p for p, _ in buf]).numpy()
        true = torch.cat([t for _, t in buf]).numpy()
        m = classification_metrics(true, pred, self.hparams.num_classes)
        self.log_dict({f"{stage}_acc": m["accuracy"], f"{stage}_macro_f1": m["macro_f1"], f"{stage}_mcc": m["mcc"]},
                      prog_bar=stage == "val")
        return m

    def on_validation_epoch_end(self):
        m = self._finish("val")
        if m and not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, "step": self.global_step, "val_acc": m["accuracy"]})

    def output_path(self) -> Path:
        if self.hparams.output_dir:
            return Path(self.hparams.output_dir)
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def on_test_epoch_end(self):
        m = self._finish("test")
        if not m:
            return
        names = self._class_names()
        out = self.output_path()
        png = save_confusion_png(m["confusion_matrix"], names, out / "confusion_matrix.png",
                                 title=f"test accuracy {m['accuracy']:.3f}")
        dm = getattr(self.trainer, "datamodule", None)
        self.test_results = {**m, "class_names": names, "window": getattr(dm, "window", None),
                             "confusion_png": str(png)}
        if self.history:  # validation curve of this process's fit (none when testing a checkpoint alone)
            self.test_results["val_history"] = self.history
        atomic_write_json(out / "test_metrics.json", self.test_results)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        feats = self.features(batch["input_ids"])
        logits = self.head.fc(feats)
        return {"embedding": feats.float().cpu(), "probs": logits.softmax(-1).float().cpu(),
                **{k: batch[k] for k in ("record", "start", "end", "strand", "label", "file") if k in batch}}

    def on_save_checkpoint(self, checkpoint):
        # the pretrained weights are inside this checkpoint now; do not ask load_from_checkpoint to read them again
        hp = checkpoint.get("hyper_parameters")
        if hp and hp.get("pretrained_ckpt"):
            hp["pretrained_ckpt"] = None

    def configure_optimizers(self):
        return self._optim(self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)


class DNALanguageModel(_DNABase):
    """LM pretraining on DNA windows: ``causal`` (next base; CausalBackbone presets) or ``masked``
    (BERT-style 80/10/10 on A/C/G/T positions; any backbone). Logs loss, bits per base and perplexity
    over bases (targets that are N are ignored).

    Args:
        backbone: a model preset name; backbone_overrides: its overridden hyperparameters.
        objective: ``causal``, ``masked``, or ``auto`` (causal for causal backbones, masked otherwise).
        mask_prob: fraction of bases selected for the masked objective.
        pretrained_ckpt: resume weights (backbone/embedding) from a checkpoint.
        pretrained_allow_partial: load only the matching tensors of a checkpoint of another model.

    A batch with no target (an all-N window; a masked batch whose random mask picked no base) has loss 0 and no
    gradient; in training it is a skipped step (``training_step`` returns None), in evaluation it is not counted.
    """

    def __init__(self, backbone: str = "caduceus_ps_dna_small", backbone_overrides: dict | None = None,
                 objective: Literal["auto", "causal", "masked"] = "auto", mask_prob: float = 0.15,
                 lr: float = 2e-3, weight_decay: float = 0.01, warmup_steps: int = 20,
                 pretrained_ckpt: str | None = None, pretrained_allow_partial: bool = False):
        super().__init__()
        self._check_hparams(lr, weight_decay, warmup_steps)
        if not isinstance(mask_prob, (int, float)) or not 0.0 < mask_prob < 1.0:
            raise ConfigError(f"model.mask_prob: got {mask_prob!r}; expected a fraction in (0, 1)")
        self.save_hyperparameters()
        self._build_trunk(backbone, backbone_overrides)
        if objective == "auto":
            objective = "causal" if self.causal else "masked"
        if objective == "causal" and not self.causal:
            raise ConfigError(f"objective: 'causal' needs a causal backbone, but {backbone!r} sees both directions; "
                              f"use objective: masked")
        self.objective = objective
        self.lm_head = LMHead(self.backbone.d_model, self.tokenizer.vocab_size, self.rc, self.tokenizer.complement_map)
        self.register_buffer("_bases", torch.tensor(NUCLEOTIDE_IDS), persistent=False)
        self.loaded_pretrained: list[str] = []
        if pretrained_ckpt:
            self.loaded_pretrained = load_pretrained_weights(self, pretrained_ckpt, pretrained_allow_partial)

    def setup(self, stage: str) -> None:
        self._check_data()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-position vocabulary logits (B, L, V)."""
        return self.lm_head(self._hidden(ids))

    def _mask(self, ids: torch.Tensor):
        is_base = torch.isin(ids, self._bases)
        sel = (torch.rand(ids.shape, device=ids.device) < self.hparams.mask_prob) & is_base
        r = torch.rand(ids.shape, device=ids.device)
        inp = ids.clone()
        inp[sel & (r < 0.8)] = MASK_ID
        rand_sel = sel & (r >= 0.8) & (r < 0.9)
        inp[rand_sel] = self._bases[torch.randint(0, 4, (int(rand_sel.sum()),), device=ids.device)]
        target = torch.where(sel, ids, torch.full_like(ids, -100))
        return inp, target

    def lm_loss(self, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.objective == "causal":
            logits = self(ids[:, :-1])
            target = ids[:, 1:]
            target = torch.where(torch.isin(target, self._bases), target, torch.full_like(target, -100))
        else:
            inp, target = self._mask(ids)
            logits = self(inp)
        n = int((target != -100).sum())
        if n == 0:  # cross_entropy's mean over no targets is 0/0 = NaN
            return logits.float().sum() * 0.0, 0
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)
        return loss, n

    def training_step(self, batch, batch_idx):
        loss, n = self.lm_loss(batch["input_ids"])
        if n == 0:
            if self._trainer is not None and self.trainer.world_size > 1:
                return loss  # every rank must run backward under DDP: a zero loss with zero gradients
            return None  # Lightning skips the optimiser step of this batch
        self.log_dict({"train_loss": loss, "train_bpb": loss / math.log(2)}, prog_bar=True,
                      batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, stage, batch):
        if self.objective == "masked":  # a fixed mask per batch so that evaluation is deterministic
            g = torch.random.fork_rng(devices=[])
            with g:
                torch.manual_seed(1234 + int(batch["start"][0]) % 100000)
                loss, n = self.lm_loss(batch["input_ids"])
        else:
            loss, n = self.lm_loss(batch["input_ids"])
        if n == 0:  # nothing to score in this batch
            return
        self.log_dict({f"{stage}_loss": loss, f"{stage}_bpb": loss / math.log(2), f"{stage}_ppl": torch.exp(loss)},
                      prog_bar=stage == "val", batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        h = self._hidden(batch["input_ids"])
        emb = SequenceHead(h.shape[-1], 2, "mean", self.rc).features(h)
        return {"embedding": emb.float().cpu(),
                **{k: batch[k] for k in ("record", "start", "end", "strand", "label", "file") if k in batch}}

    def configure_optimizers(self):
        return self._optim(self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)
