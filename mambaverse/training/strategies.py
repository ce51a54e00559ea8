"""Lightning strategies for long sequences and large Mamba stacks, selectable from a YAML config.

- :class:`ContextParallelStrategy` (``strategy: context_parallel``): DDP whose ranks split each sequence's
  length (the computation is ``mambaverse.context_parallel``).
- :class:`BlockFSDPStrategy` (``strategy: fsdp_blocks``): FSDP with one unit per residual block.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, StrategyRegistry

from ..backbones import ResidualBlock
from .callbacks import SequenceLengthWarmup
from ..context_parallel import METHODS, enable_context_parallel, shard_sequence
from ..errors import ConfigError

__all__ = ["BlockFSDPStrategy", "ContextParallelStrategy"]




class ContextParallelStrategy(DDPStrategy):
    """DDP whose ranks, in groups of ``cp_size``, split each sequence's length between them.

    ``mambaverse fit`` selects it from a config::

        trainer:
          devices: 2
          strategy:
            class_path: mambaverse.training.ContextParallelStrategy
            init_args: {cp_size: 2, shard_keys: [input_ids], overlap: 0}

    What it does:
      * builds the context-parallel process groups (consecutive ranks; ``cp_size`` defaults to all ranks),
        and makes the distributed sampler hand the *same* batches to every rank of a group (data parallel
        runs across groups);
      * switches every Causal/Bidirectional backbone of the LightningModule to `context_parallel_forward`
        over its group (parameters and checkpoint names unchanged);
      * after moving each batch to the device, takes the group's first rank's copy of the ``shard_keys``
        tensors (``sync_batch``) and gives each rank its slice along dim 1 (``shard_sequence``, with
        ``overlap`` extra positions: 1 for a causal LM that shifts inputs and targets itself).
    Args:
        cp_size: ranks per context-parallel group (consecutive ranks); None = all ranks.
        shard_keys: batch entries (tensors (B, L, ...)) split along dim 1; other entries are left whole.
        overlap: extra positions each rank also receives from the next slice (length = world * s + overlap).
        sync_batch: broadcast the group root's copy of the shard keys first (the sampler already hands every
            rank of a group the same batch; this guards against nondeterministic data pipelines).
        method: "correct" (one scan per slice plus the state correction; default) or "rescan" (each slice
            scanned twice); see ``mambaverse.context_parallel.ContextParallel``.
        ddp_kwargs: Lightning DDPStrategy arguments (e.g. process_group_backend).
    Raises ConfigError for a bad cp_size, overlap or method, or (at setup) when cp_size does not divide the world
    or the model holds a backbone that cannot run context parallel; ShapeError when a length does not split.

    Gradients: DDP averages over all ranks, so a loss that is the mean over a rank's own positions gives
    the exact gradient of the mean over all positions when the slices hold equal numbers of counted positions.
    Heads that pool over the whole length (sequence classifiers) need a cross-rank pooling of their own.
    """

    strategy_name = "context_parallel"

    def __init__(self, cp_size: int | None = None, shard_keys: tuple[str, ...] | list[str] = ("input_ids",),
                 overlap: int = 0, sync_batch: bool = True, method: str = "correct", **ddp_kwargs):
        super().__init__(**ddp_kwargs)
        if method not in METHODS:
            raise ConfigError(f"ContextParallelStrategy: method={method!r}; expected one of {METHODS}")
        self.method = method
        if cp_size is not None and (isinstance(cp_size, bool) or not isinstance(cp_size, int) or cp_size < 1):
            raise ConfigError(f"ContextParallelStrategy: cp_size={cp_size!r}; expected a positive int")
        if not isinstance(overlap, int) or overlap < 0:
            raise ConfigError(f"ContextParallelStrategy: overlap={overlap!r}; expected an int >= 0")
        self.cp_size, self.shard_keys, self.overlap, self.sync_batch = cp_size, tuple(shard_keys), overlap, sync_batch
        self.cp_group, self.cp_root = None, 0

    def setup_distributed(self) -> None:
        super().setup_distributed()
        world, rank = dist.get_world_size(), dist.get_rank()
        cp = self.cp_size or world
        if world % cp:
            raise ConfigError(f"ContextParallelStrategy: cp_size={cp} does not divide the {world} processes")
        self.cp_size = cp
        for start in range(0, world, cp):  # every rank creates every group, in the same order
            group = dist.new_group(list(range(start, start + cp)))
            if start <= rank < start + cp:
                self.cp_group, self.cp_root = group, start

    @property
    def distributed_sampler_kwargs(self) -> dict:
        cp = self.cp_size or 1
        return {"num_replicas": (self.num_nodes * self.num_processes) // cp, "rank": self.global_rank // cp}

    def setup(self, trainer) -> None:
        enable_context_parallel(self.lightning_module, self.cp_group, method=self.method)
        super().setup(trainer)

    def _sync(self, t):
        if self.sync_batch and isinstance(t, torch.Tensor):
            t = t.contiguous()
            dist.broadcast(t, self.cp_root, group=self.cp_group)
        return t

    def _shard(self, t):
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            return t
        return shard_sequence(t, self.cp_group, dim=1, overlap=self.overlap)

    def batch_to_device(self, batch, device=None, dataloader_idx: int = 0):
        """Move, then (per shard key) take the group root's copy, crop (sequence-length warmup), shard."""
        batch = super().batch_to_device(batch, device, dataloader_idx)
        if self.cp_group is None:
            return batch
        if isinstance(batch, torch.Tensor):
            return self._shard(self._sync(batch))
        if not isinstance(batch, dict):
            return batch
        batch = {k: (self._sync(v) if k in self.shard_keys else v) for k, v in batch.items()}
        trainer = getattr(self.lightning_module, "_trainer", None)
        if trainer is not None and trainer.training:  # warmup crops the whole sequence, before sharding
            for cb in trainer.callbacks:
                if isinstance(cb, SequenceLengthWarmup) and cb.crops_batches:
                    batch = cb.crop_batch(trainer, batch)
        return {k: (self._shard(v) if k in self.shard_keys else v) for k, v in batch.items()}


if "context_parallel" not in StrategyRegistry:
    StrategyRegistry.register("context_parallel", ContextParallelStrategy,
                              description="DDP with each sequence's length split across the ranks (mambaverse)")




class BlockFSDPStrategy(FSDPStrategy):
    """Lightning FSDP with one FSDP unit per residual block (Mamba layers), settable from YAML, where a
    set of classes cannot be written. ``checkpoint_blocks`` adds activation checkpointing per block.

        trainer:
          strategy:
            class_path: mambaverse.training.BlockFSDPStrategy
            init_args: {sharding_strategy: FULL_SHARD, checkpoint_blocks: false}
    """

    def __init__(self, checkpoint_blocks: bool = False, **fsdp_kwargs):
        fsdp_kwargs.setdefault("auto_wrap_policy", {ResidualBlock})
        if checkpoint_blocks:
            fsdp_kwargs.setdefault("activation_checkpointing_policy", {ResidualBlock})
        super().__init__(**fsdp_kwargs)


if "fsdp_blocks" not in StrategyRegistry:
    StrategyRegistry.register("fsdp_blocks", BlockFSDPStrategy,
                              description="FSDP with one unit per Mamba residual block (mambaverse)")
