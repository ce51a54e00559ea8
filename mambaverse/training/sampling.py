"""Resumable sampling: training batches that are a pure function of (seed, epoch, index).

One piece shared by every domain's data module (genomics windows, audio clips, images and masks), so that a run
killed mid-epoch and resumed from its checkpoint trains on exactly the batches of an uninterrupted run.

* :class:`EpochSampler` yields keys ``(epoch, i, length)``: item ``i`` of epoch ``epoch`` -- in order, or through
  the permutation ``numpy.random.default_rng([seed, epoch]).permutation(n)`` when ``shuffle`` -- and ``length``
  (a sequence-length warmup's current length, or 0). It draws nothing from the global random state.
* :class:`EpochSeeded` wraps a plain map-style dataset: ``dataset[i]`` runs under :func:`item_rng` seeded with
  ``(seed, epoch, i)``, so random crops, flips and colour jitter (torch, numpy or Python ``random``, as timm and
  torchvision use them) depend on that key alone: not on the process, the DataLoader worker, or where a run was
  resumed. The global random state of the caller is left as it was.
* :class:`ResumableSampling` (a LightningDataModule mixin) builds the training DataLoader from both and keeps
  ``{seed, epoch, consumed}`` in Lightning checkpoints (``state_dict``/``load_state_dict``); the first training
  iteration after a restore skips the ``consumed`` samples of that epoch that were already trained on.

Lightning restores weights, optimiser, schedulers and loop counters; ``FaultTolerance`` restores the global random
state (dropout, masking); this module makes the data stream the third part.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "EpochSeeded", "ResumableSampling", "item_rng", "seed_words"]

_MASK63 = 2**63 - 1


def seed_words(*key: int, n: int = 4) -> np.ndarray:
    """``n`` uint32 words from numpy's SeedSequence of the non-negative ints ``key`` (e.g. seed, epoch, index)."""
    return np.random.SeedSequence([int(k) & _MASK63 for k in key]).generate_state(n)


@contextmanager
def item_rng(*key: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's global ``RandomState`` and Python's ``random`` from ``key`` for the
    duration of the block, then put back the states they had. CUDA generators are not touched (the data
    pipeline runs on the CPU)."""
    words = seed_words(*key)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        torch.random.default_generator.manual_seed(int(words[0]) << 32 | int(words[1]))
        np.random.seed(words)
        random.seed(int(words[2]) << 32 | int(words[3]))
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _key(key) -> tuple[int, int, int]:
    """``(epoch, i[, length])`` or a plain ``i`` (epoch 0) -> ``(epoch, i, length)``; length 0 = the default."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1]), int(key[2]) if len(key) > 2 and key[2] else 0
    return 0, int(key), 0


class EpochSampler(DistributedSampler):
    """Keys ``(epoch, i, length)`` over ``samples`` items, with exact mid-epoch resume (see the module docstring).

    Args:
        samples: items per epoch (the dataset's length).
        length_fn: called when an epoch's iteration starts; its value is the keys' ``length`` (0 if None).
        num_replicas, rank: under DDP, rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of the epoch's order.
        resume_fn: called with the epoch when its iteration starts; returns how many samples of it (over all ranks)
            a resumed run already trained on; those are skipped.
        shuffle: visit the items in the order ``default_rng([seed, epoch]).permutation(samples)``, else ``0..n-1``.
        seed: the permutation's seed.

    A :class:`DistributedSampler` so that Lightning keeps it under DDP and calls ``set_epoch`` before every epoch.
    ``len`` is always the full epoch, so the step count and learning-rate schedule are those of the
    uninterrupted run; a resumed epoch yields fewer keys.
    """

    def __init__(self, samples: int, length_fn: Callable[[], int] | None = None, num_replicas: int = 1,
                 rank: int = 0, resume_fn: Callable[[int], int] | None = None, shuffle: bool = False,
                 seed: int = 0):
        # DistributedSampler.__init__ would query torch.distributed; set its fields directly instead
        self.samples, self.length_fn, self.resume_fn = int(samples), length_fn, resume_fn
        self.num_replicas, self.rank, self.epoch = int(num_replicas), int(rank), 0
        self.shuffle, self.drop_last, self.seed = bool(shuffle), False, int(seed)
        self.num_samples = math.ceil(self.samples / self.num_replicas) if self.samples else 0
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's item order, (samples,) int64."""
        if self.shuffle:
            return np.random.default_rng([self.seed & _MASK63, int(epoch)]).permutation(self.samples)
        return np.arange(self.samples)

    def __iter__(self):
        epoch = self.epoch
        consumed = int(self.resume_fn(epoch)) if self.resume_fn is not None else 0
        skip = -(-consumed // self.num_replicas)  # per rank
        length = int(self.length_fn()) if self.length_fn is not None else 0
        order = self.order(epoch) if self.samples else np.zeros(0, dtype=np.int64)
        for j in range(skip, self.num_samples):
            yield (epoch, int(order[(self.rank + j * self.num_replicas) % self.samples]), length)


class EpochSeeded(Dataset):
    """``dataset[i]`` for keys ``(epoch, i[, length])``, its random draws seeded by ``(seed, epoch, i)``
    (:func:`item_rng`). A plain int key means epoch 0. ``len`` is the wrapped dataset's."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i, _ = _key(key)
        with item_rng(self.seed, epoch, i):
            return self.dataset[i]


class _LazyLoader(DataLoader):
    """A DataLoader whose iterator (and its workers' first index requests) is created at the first ``next``,
    not at ``iter``: Lightning calls ``iter`` before it restores the loop counters of a checkpoint, and the sampler
    must see the restored epoch, position and length."""

    def __iter__(self):
        yield from super().__iter__()


class ResumableSampling:
    """Mixin for a LightningDataModule (list it before ``LightningDataModule``): a resumable training DataLoader
    and the checkpoint state that restores it. The module needs ``seed`` and ``batch_size`` attributes.

    ``state_dict()`` -> ``{"seed", "batch_size", "epoch", "consumed"}`` (``consumed``: training samples of the
    current epoch over all ranks, from the trainer's count of finished batches); ``load_state_dict`` takes the
    checkpoint's seed (the stream continues even if the config's seed changed) and the position.
    """

    _resume_at: tuple[int, int] | None = None  # (epoch, consumed samples) restored from a checkpoint

    def resumable_loader(self, dataset: Dataset, *, shuffle: bool, per_item_seed: bool = True,
                         length_fn: Callable[[], int] | None = None, drop_last: bool = False,
                         num_workers: int | None = None, collate_fn=None) -> DataLoader:
        """The training DataLoader: ``dataset`` through :class:`EpochSampler` (and :class:`EpochSeeded` when
        ``per_item_seed``; a dataset that takes ``(epoch, i, length)`` keys itself passes False)."""
        import torch.distributed as dist

        world, rank = ((dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized()
                       else (1, 0))
        seed = int(self.seed)
        sampler = EpochSampler(len(dataset), length_fn, world, rank, self._take_resume, shuffle=shuffle, seed=seed)
        workers = self.num_workers if num_workers is None else num_workers
        # its own generator: worker seeds then draw nothing from the global torch RNG, which a resumed run restores
        return _LazyLoader(EpochSeeded(dataset, seed) if per_item_seed else dataset, batch_size=self.batch_size,
                           sampler=sampler, num_workers=workers, persistent_workers=workers > 0, drop_last=drop_last,
                           collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed & _MASK63))

    def sampling_state(self) -> dict:
        state = {"seed": int(self.seed), "batch_size": int(self.batch_size)}
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            world = max(1, int(getattr(trainer, "world_size", 1) or 1))
            state.update(epoch=int(trainer.current_epoch), consumed=done * int(self.batch_size) * world)
        return state

    def load_sampling_state(self, state: dict) -> None:
        if not state:
            return
        self.seed = state.get("seed", self.seed)
        if "epoch" in state and state.get("consumed", 0) > 0:
            self._resume_at = (int(state["epoch"]), int(state["consumed"]))

    def state_dict(self) -> dict:
        """Saved in Lightning checkpoints (see the class docstring)."""
        return self.sampling_state()

    def load_state_dict(self, state: dict) -> None:
        """Restore the training stream of a checkpoint; the next training iteration of its epoch skips the samples
        already trained on."""
        self.load_sampling_state(state)

    def _take_resume(self, epoch: int) -> int:
        """Samples of ``epoch`` already trained on (once, for the first iteration after a restore)."""
        at, self._resume_at = self._resume_at, None
        return at[1] if at is not None and at[0] == epoch else 0
