"""Fault tolerance for Lightning fits: exact resume, a checkpoint on SIGTERM, atomic checkpoint files.

``mambaverse fit`` installs both pieces on every trainer (:func:`install`); a script that builds its own
``Trainer`` can add them by hand (``callbacks=[FaultTolerance()], plugins=[AtomicCheckpointIO()]``).

* :class:`FaultTolerance` (callback)

  - keeps the random number generators (torch CPU and CUDA, numpy, Python) in the checkpoint and restores them
    when training resumes, so that dropout, masking and any other draw continue as in an uninterrupted run
    (Lightning restores weights, optimizer, schedulers and loop counters; the data's position is the
    datamodule's part, e.g. ``FastaDataModule.state_dict``);
  - when a fit resumes with other optimiser settings than the checkpoint's (``lr``, ``weight_decay``, ``betas``,
    ... in the config; ``mambaverse fit`` lets those differ, not the architecture), gives them to the restored
    optimiser: Lightning restores the optimiser's param groups, which would silently keep the old values. A new
    base ``lr`` scales the restored (scheduled) one and the schedulers' ``base_lrs``;
  - at the end of a fit, makes ``last.ckpt`` (when a ModelCheckpoint asks for one) hold the final state;
  - on SIGTERM (a scheduler's pre-emption or time limit, ``kill``), Lightning finishes the current step and
    stops; this callback then writes a resumable ``last.ckpt`` into the ModelCheckpoint folder (or
    ``<default_root_dir>/checkpoints``) and the command exits with status 143 (128 + SIGTERM) instead of 0.
    Resume with ``mambaverse fit --config <config> --ckpt_path <folder>/last.ckpt``.

* :class:`AtomicCheckpointIO` (checkpoint-IO plugin): ``torch.save`` into a temporary file in the checkpoint's
  own folder, mode per the umask, then ``os.replace``. Lightning's default writes through fsspec to a file in
  the system temp folder and *copies* it when that is another file system (a kill then leaves a truncated
  checkpoint) and leaves the temporary behind on a kill.
"""
from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..atomic import atomic_write

__all__ = ["AtomicCheckpointIO", "FaultTolerance", "SIGTERM_STATUS", "install"]

SIGTERM_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints under a temporary name in their folder, then rename (see the module docstring)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint: storage_options is not supported; "
                            f"got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def _rng_state() -> dict:
    # tensors and plain containers only: checkpoints are read with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


_GROUP_KEYS = ("weight_decay", "betas", "eps", "momentum", "dampening", "nesterov", "amsgrad")


def _apply_config_hparams(trainer: pl.Trainer, fresh: list) -> dict:
    """Give the restored optimisers the settings the config built (``fresh``: their param groups before the
    restore) where they differ; returns ``{"lr": (old, new), ...}``."""
    changed: dict = {}
    for opt, groups in zip(trainer.optimizers, fresh):
        if len(opt.param_groups) != len(groups):
            continue  # another parameter grouping: the checkpoint's optimiser is not this one
        for g, f in zip(opt.param_groups, groups):
            base = "initial_lr" if "initial_lr" in f and "initial_lr" in g else "lr"
            if f.get(base) is not None and g.get(base) and f[base] != g[base]:
                changed["lr"] = (g[base], f[base])
                if base == "initial_lr":  # a schedule's multiplier stays; its base changes
                    g["lr"] = g["lr"] * f[base] / g[base]
                g[base] = f[base]
            for key in _GROUP_KEYS:
                if key in f and key in g and f[key] != g[key]:
                    changed[key] = (g[key], f[key])
                    g[key] = f[key]
    if "lr" in changed:
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            groups = sched.optimizer.param_groups
            if hasattr(sched, "base_lrs") and all("initial_lr" in g for g in groups):
                sched.base_lrs = [g["initial_lr"] for g in groups]
                sched._last_lr = [g["lr"] for g in groups]
    return changed


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where a resumable checkpoint goes: ``last.ckpt`` (ModelCheckpoint's name for it) in the folder of the
    trainer's first ModelCheckpoint, else ``<default_root_dir>/checkpoints``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class FaultTolerance(pl.Callback):
    """Random-state checkpointing and a resumable checkpoint on SIGTERM (see the module docstring).

    After a SIGTERM, ``saved_on_sigterm`` holds the path written (None before)."""

    def __init__(self):
        super().__init__()
        self._restore: dict | None = None
        self._fresh_groups: list | None = None
        self.saved_on_sigterm: Path | None = None
        self.changed_on_resume: dict = {}

    def state_dict(self) -> dict:
        return {"rng": _rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self._restore = state.get("rng")

    def on_fit_start(self, trainer, pl_module) -> None:
        # the optimisers as the config builds them, before Lightning restores a checkpoint's param groups
        self._fresh_groups = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                              for opt in trainer.optimizers]

    def on_train_start(self, trainer, pl_module) -> None:
        # the latest point before the first resumed step: model set-up and the sanity check are behind us
        if self._restore is not None:
            _set_rng_state(self._restore)
            self._restore = None
        if self._fresh_groups is not None and trainer.ckpt_path:
            self.changed_on_resume = _apply_config_hparams(trainer, self._fresh_groups)
        self._fresh_groups = None

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning (2.6) refreshes a monitoring ModelCheckpoint's last.ckpt only when it also writes a top-k
        # checkpoint, so after a run whose metric stopped improving (or one stopped by max_time) last.ckpt is an
        # older state; the run asked for a last checkpoint, so it gets the final one
        for cb in trainer.checkpoint_callbacks:
            if (isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath
                    and getattr(cb, "_last_global_step_saved", -1) != trainer.global_step):
                trainer.save_checkpoint(last_checkpoint_path(trainer), weights_only=False)
                break

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking or trainer.global_step == 0 and trainer.current_epoch == 0:
            return  # nothing trained yet: nothing to resume from
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint: optimizer, loops, callbacks
        self.saved_on_sigterm = path


def install(trainer: pl.Trainer) -> pl.Trainer:
    """Add :class:`FaultTolerance` (unless the trainer has one) and, where the strategy still uses Lightning's
    default checkpoint IO, :class:`AtomicCheckpointIO`. Returns the trainer."""
    if not any(isinstance(cb, FaultTolerance) for cb in trainer.callbacks):
        trainer.callbacks.append(FaultTolerance())
    for cb in trainer.checkpoint_callbacks:
        # a resumed run must overwrite last.ckpt, not write last-v1.ckpt beside a stale last.ckpt (Lightning's
        # version counter); our writes are atomic, so overwriting is safe
        if isinstance(cb, ModelCheckpoint) and cb.save_last:
            cb._enable_version_counter = False
    strategy = trainer.strategy
    io = getattr(strategy, "_checkpoint_io", None)
    if io is None or type(io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def sigterm_checkpoint(trainer: pl.Trainer | None) -> Path | None:
    """The checkpoint written on SIGTERM by the trainer's FaultTolerance callback, if any."""
    for cb in getattr(trainer, "callbacks", []) or []:
        if isinstance(cb, FaultTolerance) and cb.saved_on_sigterm is not None:
            return cb.saved_on_sigterm
    return None

