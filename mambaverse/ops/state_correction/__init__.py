"""The state correction: what a selective scan's output gains when a state enters it after the fact.

A selective scan is linear in its initial state: scanning a segment from ``h_in`` gives the output of
scanning it from zero plus

    corr_t = sum_n C_t[n] * (prod_{s<=t} exp(dt_s A[:, n])) * h_in[:, n]        (times silu(z_t) if gated)

with dt = softplus(delta + delta_bias) as in the scan (``reverse``: the product runs over s >= t, the
state entering after the last position). Context parallel (``mambaverse.context_parallel``) scans each
rank's slice from zero, exchanges (decay, final state) pairs, then adds this instead of scanning again.
The D skip does not involve the state; the SiLU gate multiplies the whole pre-gate output, so the gated
correction is this term times silu(z) (pass the same ``z`` as the scan).

Shapes:

=============  =================================  ===========================================
name           shape                              meaning
=============  =================================  ===========================================
delta          (b, d, l)                          step size, before ``delta_bias``/softplus
A              (d, n), real                       state matrix (diagonal), normally negative
C              (b, n, l) or (b, g, n, l)          output projection (g groups: d divisible by g)
h_in           (b, d, n)                          state entering the segment
decay_in       (b, d, n), optional, in [0, 1]     a decay accumulated before the segment: the
                                                  state entering is decay_in * h_in
z              (b, d, l), optional                gate
delta_bias     (d,), optional                     added to delta
returns        (b, d, l), dtype of ``delta``      the correction, computed in fp32 (float64 for
                                                  float64 inputs)
=============  =================================  ===========================================

Backends: ``naive`` (the definition, O(b d n l) memory), ``torch`` (blocks of time, each checkpointed),
``triton`` (fused forward and backward; CUDA, or any device under TRITON_INTERPRET=1). ``torch`` and
``triton`` stop once the carried decay (``decay_in`` times the decay since the segment's start) has
underflowed to exactly zero everywhere, from where every output and gradient is exactly zero (dt >= 0 and
A <= 0, as in Mamba); the one exception is the gradient of ``decay_in`` itself, whose terms from beyond
that point are dropped: they are multiplied by a decay below the fp32 range, and where ``decay_in`` is
itself an underflowed exp(A * sum dt) its gradient to the sum is zero anyway. Passing a decay as
``decay_in`` rather than premultiplying it into ``h_in`` lets a correction whose state has decayed away
stop at once (context parallel corrects chunk after chunk with the decay from the slice's edge).

Under ``torch.compile`` the call goes through the custom op ``torch.ops.mambaverse.state_correction``
(``mambaverse.ops.custom``), whatever the backend.
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ..custom import DifferentiableOp, compiling, resolve_backend
from ..dispatch import ALL_DTYPES, REAL_DTYPES, TABLE, Backend, register_backend, triton_kernel
from ..selective_scan.common import compute_dtype, shape_str
from .naive import state_correction_naive
from .pytorch import state_correction_torch
from .triton import state_correction_triton

OP = "state_correction"
_ALL = frozenset({"reverse", "grouped"})
register_backend(Backend(OP, "triton", state_correction_triton, _ALL, REAL_DTYPES,
                         triton_kernel("state_correction_triton"), {"cuda": 0},
                         "ours, fused forward and backward; stops where the decay underflows"))
register_backend(Backend(OP, "torch", state_correction_torch, _ALL, ALL_DTYPES, lambda device: True,
                         {"cuda": 1, "cpu": 0}, "blocks of time, checkpointed; the CPU path"))
register_backend(Backend(OP, "naive", state_correction_naive, _ALL, ALL_DTYPES, lambda device: True,
                         {"cuda": 2, "cpu": 1}, "the definition, O(b d n l) memory; the oracle"))


def _check(delta, A, C, h_in, z, delta_bias, decay_in):
    op = OP
    for name, t in (("delta", delta), ("A", A), ("C", C), ("h_in", h_in), ("z", z), ("delta_bias", delta_bias),
                    ("decay_in", decay_in)):
        if t is None and name in ("z", "delta_bias", "decay_in"):
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ShapeError(f"{op}: {name} must be a real floating tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if delta.dim() != 3:
        raise ShapeError(f"{op}: delta has shape {shape_str(delta)}, expected (b, d, l)")
    b, d, l = delta.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ShapeError(f"{op}: A has shape {shape_str(A)}, expected (d={d}, n)")
    n = A.shape[1]
    if C.dim() == 3:
        ok = tuple(C.shape) == (b, n, l)
    elif C.dim() == 4:
        ok = tuple(C.shape) == (b, C.shape[1], n, l) and C.shape[1] > 0 and d % C.shape[1] == 0
    else:
        ok = False
    if not ok:
        raise ShapeError(f"{op}: C has shape {shape_str(C)}, expected (b={b}, n={n}, l={l}) or (b, g, n, l) with "
                         f"d={d} divisible by g")
    for name, t, want in (("h_in", h_in, (b, d, n)), ("z", z, (b, d, l)), ("delta_bias", delta_bias, (d,)),
                          ("decay_in", decay_in, (b, d, n))):
        if t is not None and tuple(t.shape) != want:
            raise ShapeError(f"{op}: {name} has shape {shape_str(t)}, expected {want}")
    devices = {t.device for t in (delta, A, C, h_in, z, delta_bias, decay_in) if t is not None}
    if len(devices) > 1:
        raise ShapeError(f"{op}: inputs are on several devices {sorted(map(str, devices))}; expected one")


def _outputs(delta, A, C, h_in, z, delta_bias, delta_softplus, reverse, decay_in, backend):
    """(shape, dtype) of the correction: delta's."""
    return ((tuple(delta.shape), delta.dtype),)


def _impl(delta, A, C, h_in, z, delta_bias, delta_softplus, reverse, decay_in, backend):
    return TABLE[OP][backend].fn(delta, A, C, h_in, z, delta_bias, delta_softplus, reverse, decay_in)


#: ``mambaverse::state_correction``; see ``mambaverse.ops.custom``.
state_correction_op = DifferentiableOp(
    OP, [("Tensor", "delta"), ("Tensor", "A"), ("Tensor", "C"), ("Tensor", "h_in"), ("Tensor?", "z"),
         ("Tensor?", "delta_bias"), ("bool", "delta_softplus"), ("bool", "reverse"), ("Tensor?", "decay_in"),
         ("str", "backend")], 1, _outputs, _impl)


def state_correction(delta, A, C, h_in, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                     decay_in=None, backend="auto"):
    """The output a selective scan gains from a state ``h_in`` entering its segment; see the module docstring.

    ``selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=h_in, reverse=r)``
    equals ``selective_scan(..., initial_state=None, ...) + state_correction(delta, A, C, h_in, z,
    delta_bias, delta_softplus, r)`` (values and gradients, up to rounding); ``decay_in=P`` stands for
    ``initial_state=P * h_in``.

    ``backend``: auto (triton on CUDA, torch on CPU), triton, torch or naive. Under ``torch.compile`` the chosen
    backend runs inside the custom op ``mambaverse::state_correction``.

    Raises:
        ShapeError: an argument breaks the shape/dtype contract.
        BackendUnavailableError: the named backend is unknown, unavailable here, or lacks a capability.
    """
    _check(delta, A, C, h_in, z, delta_bias, decay_in)
    needs = set()
    if reverse:
        needs.add("reverse")
    if C.dim() == 4:
        needs.add("grouped")
    dtype = compute_dtype(delta, A, C, h_in, z, delta_bias, decay_in)
    name = resolve_backend(OP, backend, delta.device, dtype if dtype == torch.float64 else delta.dtype, needs)
    if compiling():  # one opaque node for torch.compile, whatever the backend
        return state_correction_op(delta, A, C, h_in, z, delta_bias, bool(delta_softplus), bool(reverse), decay_in,
                                   name)[0]
    return TABLE[OP][name].fn(delta, A, C, h_in, z, delta_bias, delta_softplus, reverse, decay_in)


__all__ = ["state_correction", "state_correction_op", "state_correction_naive", "state_correction_torch", "state_correction_triton"]
