"""Pretrained weights: the MambaLM model, import of mamba-ssm / transformers / Caduceus checkpoints
(through ``mambaverse.from_pretrained``) and export to transformers' layout."""
from .lm import MambaLM

__all__ = ["MambaLM"]
