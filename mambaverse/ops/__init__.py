"""Ops layer: one public function per op, dispatching to backends. The only importer of mambaverse.kernels."""
from .bidirectional import bidirectional_scan
from .conv import causal_conv1d, causal_conv1d_step
from .cross_scan import cross_merge, cross_scan, cross_selective_scan
from .scan import available_backends, selective_scan, selective_scan_naive, selective_scan_torch

__all__ = ["available_backends", "bidirectional_scan", "causal_conv1d", "causal_conv1d_step", "cross_merge",
           "cross_scan", "cross_selective_scan", "selective_scan", "selective_scan_naive", "selective_scan_torch"]
