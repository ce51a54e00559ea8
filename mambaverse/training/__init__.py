"""Training pieces apart from models: Lightning strategies and callbacks (configs name them by class_path).

- :class:`ContextParallelStrategy`, :class:`BlockFSDPStrategy` (``mambaverse.training.strategies``)
- :class:`SequenceLengthWarmup` (``mambaverse.training.callbacks``)
"""
from .callbacks import SequenceLengthWarmup
from .strategies import BlockFSDPStrategy, ContextParallelStrategy

__all__ = ["BlockFSDPStrategy", "ContextParallelStrategy", "SequenceLengthWarmup"]
