"""mambaverse: Mamba (selective state-space) models for long DNA, raw audio and images."""
from . import presets as _presets  # noqa: F401  (registers the core presets)
from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from .errors import BackendUnavailableError, ConfigError, MambaverseError, ShapeError
from .mixers import BidirectionalMamba, Mamba, Mamba2
from .ops import bidirectional_scan, causal_conv1d, cross_merge, cross_scan, cross_selective_scan, selective_scan
from .ops.ssd import ssd_scan
from .patch_scan import VimBackbone, VMambaBackbone
from .persistence import from_pretrained, save_pretrained
from .registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailableError", "BidirectionalBackbone", "BidirectionalMamba", "CausalBackbone", "ConfigError",
    "Mamba", "Mamba2", "MambaverseError", "RCPSBackbone", "ShapeError", "VMambaBackbone", "VimBackbone",
    "bidirectional_scan", "causal_conv1d", "create_model", "cross_merge", "cross_scan", "cross_selective_scan",
    "from_pretrained", "list_models", "register_model", "save_pretrained", "selective_scan", "ssd_scan",
]
