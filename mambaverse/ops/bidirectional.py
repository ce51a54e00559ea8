"""Bidirectional selective scan: a forward and a reverse scan over the same positions, combined.

Each of u, delta, A, B, C, D, delta_bias is one tensor shared by both directions or a pair
(forward, reverse); shapes per direction are those of `selective_scan`. z (b, d, l) is shared and
gates each direction. combine: "add" -> out_f + out_r, "multiply" -> out_f * out_r,
"stack" -> (2, b, d, l). The reverse direction scans from the last position to the first.
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from .scan import check_scan_inputs, selective_scan, use_fused_kernel

COMBINES = ("add", "multiply", "stack")


def _pair(name, value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ShapeError(f"bidirectional_scan: {name} is a sequence of {len(value)}; expected one tensor or a (forward, reverse) pair")
        return tuple(value)
    return value, value


def combine_directions(out_f, out_r, combine):
    if combine == "add":
        return out_f + out_r
    if combine == "multiply":
        return out_f * out_r
    return torch.stack([out_f, out_r])


def bidirectional_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                 combine="add", backend="auto"):
    pairs = [_pair(n, v) for n, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                      ("delta_bias", delta_bias))]
    outs = []
    for direction in (0, 1):
        uu, dd, AA, BB, CC, DD, bb = (p[direction] for p in pairs)
        outs.append(selective_scan(uu, dd, AA, BB, CC, DD, z, bb, delta_softplus, reverse=bool(direction),
                                   backend=backend))
    return combine_directions(outs[0], outs[1], combine)


def bidirectional_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       combine="add", backend="auto"):
    """Both directions of a selective scan, combined; see the module docstring."""
    if combine not in COMBINES:
        raise ShapeError(f"bidirectional_scan: combine={combine!r}; expected one of {COMBINES}")
    pairs = [_pair(n, v) for n, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                       ("delta_bias", delta_bias))]
    for direction in (0, 1):
        uu, dd, AA, BB, CC, DD, bb = (p[direction] for p in pairs)
        check_scan_inputs(uu, dd, AA, BB, CC, DD, z, bb)
    if use_fused_kernel("bidirectional_scan_triton", pairs[0][0].device, backend):
        from ..kernels import bidirectional_scan_triton

        return bidirectional_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine)
    return bidirectional_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, combine, backend)
