"""What each backend of each op can really do, and the one dispatcher that reads it.

Every op (``selective_scan``, ``bidirectional_scan``, ``cross_selective_scan``, ``causal_conv1d``,
``ssd_scan``, ``state_correction``) has rows in ``TABLE``: one :class:`Backend` per implementation, declaring

- ``features``: the options it serves exactly (see ``FEATURES``), e.g. ``final_state_grad`` -- a final state
  through which gradient flows back. mamba-ssm's ``selective_scan_fn`` returns its last state as a constant
  for autograd, so it lacks that feature and may not serve a chunk whose state feeds the next one;
- ``dtypes``: the input dtypes it computes faithfully (float64 in float64, so ``gradcheck`` works);
- ``devices`` and ``available(device)``: where it runs;
- ``rank``: per device type, its place in ``auto``'s order (0 first; measured speed, see the note), or absent
  when ``auto`` must never pick it there.

``select(op, backend, device, dtype, needs)`` returns the backend to call: for ``auto`` the best-ranked
available one whose capabilities cover ``needs``; for a named one, that one or a one-line
``BackendUnavailableError`` naming the missing capability. The README's backend paragraph and
``capability_markdown()`` are generated from / describe this same table.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import BackendUnavailableError

# feature name -> what a call that needs it asks for (used in error messages and docs)
FEATURES = {
    "initial_state": "an initial_state",
    "final_state": "return_final_state",
    "final_state_grad": "a final state that carries gradient (return_final_state with autograd)",
    "reverse": "reverse=True",
    "grouped": "grouped B/C (b, g, n, l)",
    "time_invariant": "time-invariant B/C of shape (d, n)",
    "complex": "complex A/B/C",
    "wide_kernel": "a conv width outside 2..4",
}
REAL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
ALL_DTYPES = REAL_DTYPES | {torch.float64}


@dataclass(frozen=True)
class Backend:
    """One implementation of one op and what it serves exactly.

    Args:
        op: the op's public name.
        name: the backend name users pass as ``backend=``.
        fn: the implementation, called with the op's own arguments (minus ``backend``).
        features: subset of ``FEATURES`` keys it serves.
        dtypes: input dtypes it computes faithfully.
        available: ``device -> bool``: can it run there now (package installed, CUDA present ...).
        rank: device type -> position in ``auto``'s order; a device type missing here is never auto-picked.
        note: why it ranks where it does, or what it lacks (shown in docs).
    """

    op: str
    name: str
    fn: Callable
    features: frozenset
    dtypes: frozenset = ALL_DTYPES
    available: Callable[[torch.device], bool] = field(default=lambda device: True)
    rank: dict = field(default_factory=dict)
    note: str = ""


TABLE: dict[str, dict[str, Backend]] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) one row of the table; how a new backend, or a test's stand-in, joins ``auto``."""
    unknown = set(backend.features) - set(FEATURES)
    if unknown:
        raise ValueError(f"register_backend: unknown feature(s) {sorted(unknown)}; expected some of {sorted(FEATURES)}")
    TABLE.setdefault(backend.op, {})[backend.name] = backend
    return backend


def unregister_backend(op: str, name: str) -> None:
    TABLE.get(op, {}).pop(name, None)


def interpreting() -> bool:
    """Triton's CPU interpreter is on: Triton kernels then also run on CPU tensors (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _describe_dtype(dtype) -> str:
    return str(dtype).replace("torch.", "")


def select(op: str, backend: str, device: torch.device, dtype: torch.dtype, needs: set[str]) -> Backend:
    """The backend that serves this call exactly; see the module docstring.

    Raises:
        BackendUnavailableError: unknown backend name, a named backend that is not available on ``device`` or
            lacks a needed capability, or (for ``auto``) no backend at all that covers the call.
    """
    rows = TABLE[op]
    device = torch.device(device)
    if backend == "auto":
        ranked = sorted((row for row in rows.values() if device.type in row.rank),
                        key=lambda row: row.rank[device.type])
        for row in ranked:
            if needs <= row.features and dtype in row.dtypes and row.available(device):
                return row
        raise BackendUnavailableError(
            f"{op}: no backend serves this call on {device} ({_describe_dtype(dtype)}, needing "
            f"{', '.join(FEATURES[f] for f in sorted(needs)) or 'nothing special'}); backends: {sorted(rows)}")
    if backend not in rows:
        raise BackendUnavailableError(f"{op}: unknown backend {backend!r}; expected 'auto' or one of {sorted(rows)}")
    row = rows[backend]
    if not row.available(device):
        usable = sorted(name for name, r in rows.items() if r.available(device))
        raise BackendUnavailableError(f"{op}: backend {backend!r} is unavailable on device {device}; available here: {usable}")
    missing = sorted(needs - row.features)
    if missing:
        others = sorted(n for n, r in rows.items() if needs <= r.features)
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} cannot serve this call: it lacks {', '.join(FEATURES[f] for f in missing)}; "
            f"use backend='auto'" + (f" or one of {others}" if others else ""))
    if dtype not in row.dtypes:
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} does not compute {_describe_dtype(dtype)} faithfully; it takes "
            f"{sorted(map(_describe_dtype, row.dtypes))}")
    return row


def backends_for(op: str, device: torch.device | str = "cpu") -> list[str]:
    """Backends of ``op`` available on ``device``: the ones auto may pick, best first, then the others."""
    device = torch.device(device)
    rows = [r for r in TABLE[op].values() if r.available(device)]
    ranked = sorted((r for r in rows if device.type in r.rank), key=lambda r: r.rank[device.type])
    return [r.name for r in ranked] + sorted(r.name for r in rows if device.type not in r.rank)


def capability_markdown() -> str:
    """The table as Markdown, one row per (op, backend): features, dtypes, auto rank per device, note."""
    lines = ["| op | backend | serves | dtypes | auto order | note |", "|---|---|---|---|---|---|"]
    for op, rows in TABLE.items():
        for row in rows.values():
            rank = ", ".join(f"{k}: {v}" for k, v in sorted(row.rank.items())) or "never"
            dtypes = ", ".join(sorted(map(_describe_dtype, row.dtypes)))
            lines.append(f"| {op} | {row.name} | {', '.join(sorted(row.features))} | {dtypes} | {rank} | {row.note} |")
    return "\n".join(lines)


def needs_grad(*tensors) -> bool:
    """Autograd will differentiate this call: grad mode is on and some input requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def widest_dtype(*tensors) -> torch.dtype:
    """The dtype a call must be computed in: float64 if any input is float64 (complex128 counts), else the
    first input's real dtype."""
    dtypes = [t.dtype for t in tensors if t is not None]
    if any(dt in (torch.float64, torch.complex128) for dt in dtypes):
        return torch.float64
    first = dtypes[0]
    return {torch.complex64: torch.float32}.get(first, first)


def cuda_and(probe: Callable[[], bool]) -> Callable[[torch.device], bool]:
    """An ``available`` function: CUDA device and ``probe()`` true (probed once)."""
    cache = {}

    def available(device: torch.device) -> bool:
        if device.type != "cuda":
            return False
        if "ok" not in cache:
            cache["ok"] = bool(probe())
        return cache["ok"]

    return available


def triton_kernel(name: str) -> Callable[[torch.device], bool]:
    """An ``available`` function for our Triton kernel ``name``: CUDA with Triton, or any device under the
    interpreter (tests)."""

    def available(device: torch.device) -> bool:
        try:
            from ..kernels import triton_available
        except ImportError:
            return False
        if not hasattr(sys.modules[__package__.rsplit(".", 1)[0] + ".kernels"], name):
            return False
        return interpreting() or triton_available(device)

    return available


def module_importable(module: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            __import__(module)
        except Exception:  # a missing package or a broken binary build alike: not usable
            return False
        return True

    return probe


def check_composite_backend(op: str, backend) -> None:
    """For an op built on selective_scan (bidirectional, cross-scan): ``backend`` must be ``auto``, ``scan``
    (the unfused passes), one of the op's own rows or a selective_scan backend (the passes' backend).

    Raises:
        BackendUnavailableError: naming ``op`` and its real choices.
    """
    if isinstance(backend, str) and (backend in ("auto", "scan") or backend in TABLE[op]
                                     or backend in TABLE["selective_scan"]):
        return
    names = sorted({"auto", "scan"} | set(TABLE[op]) | set(TABLE["selective_scan"]))
    raise BackendUnavailableError(f"{op}: unknown backend {backend!r}; expected one of {names}")
