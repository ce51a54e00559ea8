"""mambaverse.vision: image models. Importing it registers the patch-scan presets with timm."""
from . import timm_registry  # noqa: F401
