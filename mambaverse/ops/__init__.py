"""Ops layer: one folder per op (public function, ``naive``/``torch`` backends, wrappers of the Triton kernels
and of mamba-ssm), one capability table (``dispatch.TABLE``) that ``auto``, the errors and the docs read.
The only importer of ``mambaverse.kernels``. Under ``torch.compile`` every op runs as a torch custom op
(``custom.py``), so models compile with ``fullgraph=True`` whatever the backend."""
from .bidirectional_scan import bidirectional_scan
from .causal_conv1d import causal_conv1d, causal_conv1d_step
from .cross_scan import cross_merge, cross_scan, cross_selective_scan
from .dispatch import backends_for, capability_markdown
from .selective_scan import selective_scan, selective_scan_naive, selective_scan_torch
from .ssd import ssd_scan
from .state_correction import state_correction


def available_backends(device="cpu") -> list[str]:
    """selective_scan's backends available on ``device``: those ``auto`` may pick (best first), then the rest."""
    return backends_for("selective_scan", device)


__all__ = ["available_backends", "backends_for", "bidirectional_scan", "capability_markdown", "causal_conv1d",
           "causal_conv1d_step", "cross_merge", "cross_scan", "cross_selective_scan", "selective_scan",
           "selective_scan_naive", "selective_scan_torch", "ssd_scan", "state_correction"]
