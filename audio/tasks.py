"""The waveform language-modelling task: a LightningModule that trains a registered waveform model (e.g.
``sashimi_mamba_6m``) by next-sample cross-entropy on mu-law codes and reports NLL in bits per sample.

Logged: ``train_nll``, ``val_nll``, ``test_nll`` (bits per sample, averaged over samples), ``lr``.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from mambaverse.errors import ConfigError
from mambaverse.registry import create_model

from .heads import nll_bits_per_sample


class WaveformLM(pl.LightningModule):
    """Autoregressive waveform model trained on batches (codes (B, L) int64, labels (B,) int64).

    Args:
        model: a registered preset name (``mambaverse models 'sashimi*'``).
        model_overrides: hyperparameters overriding the preset's (e.g. ``{d_model: 48}``).
        conditional: condition on the digit label (sets ``n_conditions=10``); batches must then carry labels
            0-9 (the datamodule's ``require_labels``).
        lr, weight_decay, betas: AdamW; no decay on biases, norms, embeddings and the SSM's A, D, dt biases.
        warmup_steps: linear warm-up, then cosine decay to ``min_lr_ratio * lr`` over the run's steps.
    """

    def __init__(self, model: str = "sashimi_mamba_tiny", model_overrides: dict | None = None,
                 conditional: bool = False, lr: float = 2e-3, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 sample_rate: int = 16000):
        super().__init__()
        self.save_hyperparameters()
        overrides = dict(model_overrides or {})
        if conditional:
            overrides["n_conditions"] = 10
        self.net = create_model(model, **overrides)
        self.conditional = conditional
        self.sample_rate = sample_rate

    def setup(self, stage: str) -> None:
        self.check_datamodule(getattr(self._trainer, "datamodule", None))

    def check_datamodule(self, datamodule) -> None:
        """Raise a one-line ConfigError if the datamodule's sample rate differs from the model's ``sample_rate``
        (generated clips would play at the wrong speed), or its mu-law levels (``quantization_channels``) differ
        from the model's output classes (codes >= n_classes would index past the embedding; fewer levels would
        train a head with dead classes). Lightning calls it at setup through :meth:`setup`."""
        rate = getattr(datamodule, "sample_rate", None)
        if rate is not None and rate != self.sample_rate:  # clips would be generated and played at the wrong speed
            raise ConfigError(f"data.sample_rate: got {rate} Hz; expected the model's sample_rate {self.sample_rate} Hz "
                              f"(set model.init_args.sample_rate: {rate})")
        levels = getattr(datamodule, "quantization_channels", None)
        if levels is not None and levels != self.net.n_classes:
            raise ConfigError(f"data.quantization_channels: got {levels}; expected the model's n_classes "
                              f"{self.net.n_classes} (set model.init_args.model_overrides.n_classes: {levels})")

    def forward(self, codes, labels=None):
        return self.net(codes, labels if self.conditional else None)

    def _nll(self, batch):
        codes, labels = batch
        if self.conditional and bool((labels < 0).any()):
            raise ConfigError("WaveformLM: conditional=True but a batch has clips without a digit label; "
                              "expected labels 0-9 (set require_labels: true in the datamodule)")
        return nll_bits_per_sample(self(codes, labels), codes)

    def training_step(self, batch, batch_idx):
        loss = self._nll(batch)
        self.log("train_nll", loss, prog_bar=True, batch_size=batch[0].shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=batch[0].shape[0])
        return loss * math.log(2)  # optimise nats; same minimiser, usual gradient scale

    def validation_step(self, batch, batch_idx):
        self.log("val_nll", self._nll(batch), prog_bar=True, batch_size=batch[0].shape[0])

    def test_step(self, batch, batch_idx):
        self.log("test_nll", self._nll(batch), batch_size=batch[0].shape[0])

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) or "embed" in name or "cond" in name
             else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr,
                                betas=tuple(self.hparams.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer is not None else 10 ** 6
        warm, floor = max(1, self.hparams.warmup_steps), self.hparams.min_lr_ratio

        def schedule(step):
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}}
