"""Sequence mixers: (B, L, d_model) -> (B, L, d_model). They ask ops for scans and convs, never kernels.

- :class:`Mamba` (Mamba-1), :class:`BidirectionalMamba` (Caduceus / Vim v2), :class:`Mamba2` (SSD),
  and ``SS2D`` (VMamba's 2D cross-scan mixer, from ``mambaverse.patch_scan``).
- :class:`SelectiveSSM`, :class:`RMSNorm`: their parts.
- The state API (``mambaverse.mixers.state``, :class:`MixerState`) that chunked and context-parallel
  wrappers are built on.
- ``MIXERS`` / :func:`register_mixer` / :func:`mixer_factory`: mixers by name, for backbones.
- ``mambaverse.mixers.defaults``: default hyperparameters (D_STATE, D_CONV, EXPAND, ...), defined once.
"""
from .base import SSMDirections, check_hidden
from .bidirectional import COMBINES, BidirectionalMamba
from .defaults import CHUNK_SIZE, D_CONV, D_STATE, D_STATE_MAMBA2, EXPAND, HEADDIM
from .factory import MIXERS, mixer_factory, register_mixer
from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import RMSNorm
from .ssm import SelectiveSSM
from .state import MixerState
from ..patch_scan import SS2D  # noqa: E402  (the 2D mixer lives beside its patch helpers)

__all__ = ["BidirectionalMamba", "CHUNK_SIZE", "COMBINES", "D_CONV", "D_STATE", "D_STATE_MAMBA2", "EXPAND", "HEADDIM",
           "MIXERS", "Mamba", "Mamba2", "MixerState", "RMSNorm", "SS2D", "SSMDirections", "SelectiveSSM",
           "check_hidden", "mixer_factory", "register_mixer"]
