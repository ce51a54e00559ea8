"""Lightning callbacks for long-context training.

``SequenceLengthWarmup`` (HyenaDNA-style): train at ``start_len`` first and double the length on a schedule
until ``target_len``; the length at epoch e (or step s) is ``min(target_len, start_len * 2 ** (e // every))``,
plus ``extra`` positions (e.g. 1 for a causal LM whose windows carry the next-base target; with context
parallel this keeps ``length`` divisible by the ranks while the window is ``length + 1``).

How the data follows (``mode``):

* ``"datamodule"``: the datamodule implements the hook

      def set_seq_len(self, length: int) -> None:
          '''Make the next train_dataloader() yield sequences of `length` positions.'''

  The callback calls it before each training epoch's dataloader is built and sets the trainer's
  ``reload_dataloaders_every_n_epochs`` to 1 so that the new length takes effect (epoch schedule only).
* ``"crop"``: the datamodule always yields ``target_len``; the callback crops the batch's sequence tensors
  (``keys``, along dim 1) to the current length at the start of each training batch. Works with any
  datamodule and with a per-step schedule.
* ``"auto"`` (default): ``"datamodule"`` if it has ``set_seq_len`` and the schedule is per epoch, else crop.

The current length is logged as ``seq_len``. Validation and test data are left at their own length.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from ..errors import ConfigError

__all__ = ["SequenceLengthWarmup"]


class SequenceLengthWarmup(pl.Callback):
    """Double the training sequence length from ``start_len`` to ``target_len``; see the module docstring.

    Args:
        target_len: final training length.
        start_len: first training length (<= target_len).
        every: epochs (or steps, with ``interval="step"``) between doublings.
        interval: ``"epoch"`` or ``"step"``.
        mode: ``"auto"``, ``"datamodule"`` or ``"crop"``.
        keys: batch entries cropped in crop mode (dict batches); a tensor batch is cropped itself.
        random_crop: in crop mode, take a random window of the current length (else the first positions).
        extra: positions added to every length (the data's length is ``length_at(t) + extra``).
    """

    def __init__(self, target_len: int, start_len: int = 1024, every: int = 1, interval: str = "epoch",
                 mode: str = "auto", keys: tuple[str, ...] | list[str] = ("input_ids",), random_crop: bool = False,
                 extra: int = 0):
        super().__init__()
        for name, v in (("target_len", target_len), ("start_len", start_len), ("every", every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"SequenceLengthWarmup: {name}={v!r}; expected a positive int")
        if start_len > target_len:
            raise ConfigError(f"SequenceLengthWarmup: start_len={start_len} exceeds target_len={target_len}")
        if interval not in ("epoch", "step"):
            raise ConfigError(f"SequenceLengthWarmup: interval={interval!r}; expected 'epoch' or 'step'")
        if mode not in ("auto", "datamodule", "crop"):
            raise ConfigError(f"SequenceLengthWarmup: mode={mode!r}; expected 'auto', 'datamodule' or 'crop'")
        if mode == "datamodule" and interval == "step":
            raise ConfigError("SequenceLengthWarmup: mode 'datamodule' changes the length between epochs; "
                              "expected interval='epoch' (or mode='crop' for a per-step schedule)")
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
            raise ConfigError(f"SequenceLengthWarmup: extra={extra!r}; expected an int >= 0")
        self.target_len, self.start_len, self.every, self.extra = target_len, start_len, every, extra
        self.interval, self.mode, self.keys, self.random_crop = interval, mode, tuple(keys), random_crop
        self.current = start_len + extra
        self._mode = None

    @property
    def crops_batches(self) -> bool:
        """Whether this run crops batches (mode "crop", resolved at setup); strategies that shard batches
        ask it so that the whole sequence is cropped before it is split."""
        return self._mode == "crop"

    def length_at(self, t: int) -> int:
        """Training length of the data at epoch (or step) t (``extra`` included)."""
        doublings = min(t // self.every, 62)
        return min(self.target_len, self.start_len << doublings) + self.extra

    # -------------------------------------------------------------- resolution of the mode
    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        dm = trainer.datamodule
        has_hook = dm is not None and callable(getattr(dm, "set_seq_len", None))
        mode = self.mode
        if mode == "auto":
            mode = "datamodule" if has_hook and self.interval == "epoch" else "crop"
        if mode == "datamodule":
            if not has_hook:
                raise ConfigError(f"SequenceLengthWarmup: mode 'datamodule' needs a datamodule with set_seq_len(length); "
                                  f"{type(dm).__name__ if dm is not None else 'no datamodule'} has none (use mode='crop')")
            if not trainer.reload_dataloaders_every_n_epochs:
                trainer.reload_dataloaders_every_n_epochs = 1
        self._mode = mode
        if mode == "datamodule":
            self._set(trainer, self.length_at(trainer.current_epoch))

    def _set(self, trainer, length):
        self.current = length
        trainer.datamodule.set_seq_len(length)

    # -------------------------------------------------------------- datamodule mode: before each epoch's loader
    def on_train_epoch_end(self, trainer, pl_module):
        if self._mode == "datamodule":  # the next epoch's dataloader is built after this hook
            self._set(trainer, self.length_at(trainer.current_epoch + 1))

    def on_train_epoch_start(self, trainer, pl_module):
        if self._mode == "crop" and self.interval == "epoch":
            self.current = self.length_at(trainer.current_epoch)

    # -------------------------------------------------------------- crop mode
    def crop_batch(self, trainer, batch):
        """Crop ``batch``'s sequence tensors to the current length (dict batches in place; also returned).

        The window start is the same for every key and, with ``random_crop``, drawn from a generator seeded
        by the global step, so that all ranks of a context-parallel group cut the same window.
        ``ContextParallelStrategy`` calls this before it shards the batch over the ranks."""
        if self.interval == "step":
            self.current = self.length_at(trainer.global_step)
        length = self.current
        items = batch if isinstance(batch, dict) else None
        if items is None and isinstance(batch, list):
            items = dict(enumerate(batch))
        if items is None:
            return batch  # tuples and bare tensors cannot be changed in place; datamodules should yield dicts
        keys = self.keys if isinstance(batch, dict) else [0]
        for key in keys:
            t = items.get(key)
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] > length:
                start = 0
                if self.random_crop:
                    g = torch.Generator().manual_seed(int(trainer.global_step))
                    start = int(torch.randint(0, t.shape[1] - length + 1, (), generator=g).item())
                batch[key] = t[:, start:start + length]
        return batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._mode == "crop":
            self.crop_batch(trainer, batch)  # a no-op on batches already cropped (e.g. by the CP strategy)
        pl_module.log("seq_len", float(self.current), on_step=True, on_epoch=False, prog_bar=False,
                      batch_size=1)

    def state_dict(self):
        return {"current": self.current}

    def load_state_dict(self, state):
        self.current = int(state.get("current", self.current))
