"""mambaverse.vision: image classification and segmentation on Vim and VMamba.

Importing it registers the presets (``vim_tiny``, ``vim_t``, ``vim_s``, ``vmamba_tiny``, ``vmamba_t``,
``vmamba_s``) in mambaverse's registry and in timm's (``mambaverse_<preset>``). Data modules, heads and
Lightning tasks load on first use (they pull in Lightning and torchvision).
"""
from . import presets, timm_registry  # noqa: F401  (registration)
from .backbones import VimBackbone, VMambaBackbone

_LAZY = {
    "ImageFolderDataModule": "data", "FashionMNISTDataModule": "data", "SegmentationFolderDataModule": "data",
    "AALSliceDataModule": "data", "build_aal_slices": "data", "load_image": "data",
    "ImageClassifier": "tasks", "SemanticSegmenter": "tasks",
    "FPNDecoder": "heads", "VisionDataError": "errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VMambaBackbone", "VimBackbone", *_LAZY]
