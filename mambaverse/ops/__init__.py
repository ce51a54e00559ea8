"""Ops layer: the only place that dispatches to backends (and the only importer of mambaverse.kernels)."""
from .scan import available_backends, selective_scan, selective_scan_naive, selective_scan_torch

__all__ = ["available_backends", "selective_scan", "selective_scan_naive", "selective_scan_torch"]
