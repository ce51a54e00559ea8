"""mambaverse.kernels: Triton kernels behind the ops layer (selective scan, bidirectional scan,
cross-scan, causal conv1d, state correction). Only ``mambaverse.ops`` imports this package.

``triton_available(device)`` says whether the kernels can run on ``device`` (CUDA with Triton installed).
The kernels also run on CPU tensors under ``TRITON_INTERPRET=1`` (the CI tests), but ``auto`` dispatch
never picks them there.
"""
from __future__ import annotations

import torch

try:
    import triton  # noqa: F401

    _TRITON_IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - triton missing
    _TRITON_IMPORT_ERROR = exc


def triton_available(device) -> bool:
    """True if the Triton kernels can run on `device`: a CUDA device with Triton importable."""
    device = torch.device(device)
    return _TRITON_IMPORT_ERROR is None and device.type == "cuda" and torch.cuda.is_available()


if _TRITON_IMPORT_ERROR is None:
    from ._conv import causal_conv1d_triton
    from .ops import bidirectional_scan_triton, cross_selective_scan_triton, selective_scan_triton
    from ._rows import set_rows_config
    from ._correction import set_correction_config, state_correction_triton

    __all__ = ["triton_available", "selective_scan_triton", "bidirectional_scan_triton",
               "cross_selective_scan_triton", "causal_conv1d_triton", "set_rows_config", "set_correction_config",
               "state_correction_triton"]
else:  # pragma: no cover
    __all__ = ["triton_available"]
