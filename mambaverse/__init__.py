"""mambaverse: Mamba (selective state-space) models for long DNA, raw audio and images."""
from . import presets as _presets  # noqa: F401  (registers the core presets)
from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from .errors import BackendUnavailableError, ConfigError, MambaverseError, ShapeError
from .mixers import BidirectionalMamba, Mamba, Mamba2
from .ops import bidirectional_scan, causal_conv1d, cross_merge, cross_scan, cross_selective_scan, selective_scan
from .ops.ssd import ssd_scan
from .persistence import from_pretrained, save_pretrained
from .pretrained import MambaLM
from .registry import create_model, get_builder, list_models, register_model

__version__ = "0.1.0"
_MOVED_TO_DOMAINS = ("VimBackbone", "VMambaBackbone")  # now in mambaverse.vision


def __getattr__(name):
    """Builders that moved to a domain package stay reachable as ``mambaverse.<name>``, found through the
    registry's plugin entry points (the core never imports a domain by name)."""
    if name in _MOVED_TO_DOMAINS:
        return get_builder(name)
    raise AttributeError(f"module 'mambaverse' has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError", "BidirectionalBackbone", "BidirectionalMamba", "CausalBackbone", "ConfigError",
    "Mamba", "Mamba2", "MambaLM", "MambaverseError", "RCPSBackbone", "ShapeError",
    "bidirectional_scan", "causal_conv1d", "create_model", "cross_merge", "cross_scan", "cross_selective_scan",
    "from_pretrained", "get_builder", "list_models", "register_model", "save_pretrained", "selective_scan", "ssd_scan",
]
