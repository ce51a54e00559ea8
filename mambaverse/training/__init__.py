"""Training pieces apart from models: Lightning strategies and callbacks (configs name them by class_path).

- :class:`ContextParallelStrategy`, :class:`BlockFSDPStrategy` (``mambaverse.training.strategies``)
- :class:`SequenceLengthWarmup` (``mambaverse.training.callbacks``)
- :class:`FaultTolerance`, :class:`AtomicCheckpointIO` (``mambaverse.training.fault_tolerance``): exact resume,
  a resumable checkpoint on SIGTERM, atomic checkpoint files; ``mambaverse fit`` installs both
- :class:`ResumableSampling`, :class:`EpochSampler` (``mambaverse.training.sampling``): training batches that are a
  function of (seed, epoch, index), restored from checkpoints; every domain's data module uses them
"""
from .callbacks import SequenceLengthWarmup
from .fault_tolerance import AtomicCheckpointIO, FaultTolerance
from .sampling import EpochSampler, ResumableSampling
from .strategies import BlockFSDPStrategy, ContextParallelStrategy

__all__ = ["AtomicCheckpointIO", "BlockFSDPStrategy", "ContextParallelStrategy", "EpochSampler", "FaultTolerance",
           "ResumableSampling", "SequenceLengthWarmup"]
