"""The channel-major activation layout of the Mamba-1 blocks on CUDA: projections with no transposes between
in_proj, conv, scan, gate and out_proj.

The scan and conv kernels read the sequence along the unit stride: u, delta, z as (B, D, L) with L stride 1
and B, C as (B, N, L) with L stride 1. Computing in_proj as ``W @ X^T`` with X = hidden.view(B*L, d_model)
gives a (D, B*L) buffer, which *is* such a (B, D, L) tensor (strides (L, B*L, 1)): the "channel-major"
layout (mamba-ssm computes its in_proj the same way, ``mamba_simple.Mamba.forward``). Kept through the
block: the conv writes its output in its input's layout; x_proj is ``W_x @ u`` on the (D, B*L) view, whose
(dt_rank + 2N, B*L) result splits into dt, B, C by rows (views: B and C come out L-contiguous); dt_proj is
``W_dt @ dt``, again (D, B*L); out_proj reads the scan output as the column-major (B*L, D) matrix it is.
Autograd's mm backward returns gradients in their inputs' layout (a column-major operand gets a
column-major gradient), so the backward has no transposes either.

Under autocast every GEMM runs in the autocast dtype (bf16): the operands are cast once here and the
GEMMs see bf16 inputs, as autocast would give them.

Off CUDA the blocks keep the (B, L, ·) row layout of ``nn.Linear`` (``SSMDirections.layout``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: The values of ``SSMDirections.layout``.
LAYOUTS = ("auto", "channels", "rows")


def use_channels(layout: str, t: torch.Tensor) -> bool:
    """Whether a block with ``layout`` ("auto": channel-major on CUDA only) runs channel-major on t's device."""
    return layout == "channels" or (layout == "auto" and t.is_cuda)


def gemm_operand(t: torch.Tensor) -> torch.Tensor:
    """t in the dtype autocast gives GEMM inputs on its device (cast once, shared by several GEMMs), else t."""
    if torch.compiler.is_compiling():  # the compiler fuses autocast's casts itself; keep the graph plain
        return t
    kind = t.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        if t.dtype != dtype and t.is_floating_point():
            return t.to(dtype)
    return t


def is_channel_major(t: torch.Tensor) -> bool:
    """t (B, C, L) is a view of a (C, B*L) row-major buffer: strides (L, B*L, 1)."""
    b, c, l = t.shape
    return (l <= 1 or t.stride(2) == 1) and (c <= 1 or t.stride(1) == b * l) and (b <= 1 or t.stride(0) == l)


def rows_of(t: torch.Tensor) -> torch.Tensor:
    """The (C, B*L) matrix of a (B, C, L) tensor: a view when t is channel-major, else a copy."""
    b, c, l = t.shape
    return t.transpose(0, 1).reshape(c, b * l)


def as_sequence(m: torch.Tensor, b: int, l: int) -> torch.Tensor:
    """A (C, B*L) matrix as the (B, C, L) channel-major view."""
    return m.view(m.shape[0], b, l).transpose(0, 1)


def project_in(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               splits: tuple[int, ...]) -> list[torch.Tensor]:
    """``F.linear(hidden, weight, bias)`` (B, L, d_in) split along its features into ``splits``, each returned
    channel-major (B, s, L) (a view of its own (s, B*L) GEMM result).

    One GEMM per split instead of one split afterwards: the gradient of each part then flows into its own
    GEMM, and no (sum(splits), B*L) gradient is assembled by a cat in the backward."""
    b, l, d_in = hidden.shape
    xt = gemm_operand(hidden.reshape(b * l, d_in)).t()  # (d_in, B*L), column-major: no copy
    w = gemm_operand(weight)
    bias = gemm_operand(bias) if bias is not None else None
    out, start = [], 0
    for size in splits:
        ws = w[start:start + size]
        m = torch.mm(ws, xt) if bias is None else torch.addmm(bias[start:start + size, None], ws, xt)
        out.append(as_sequence(m, b, l))
        start += size
    return out


def project_rows(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 splits: tuple[int, ...]) -> list[torch.Tensor]:
    """``F.linear(hidden, weight, bias)`` split along its features into ``splits``, one GEMM per part, each
    part its own contiguous (B, L, s) tensor (so ``part.transpose(1, 2)`` is a dense channel-last (B, s, L)
    that a conv reads and mirrors in place, and no cat assembles the gradient). Operands cast once."""
    x = gemm_operand(hidden)
    w = gemm_operand(weight)
    bias = gemm_operand(bias) if bias is not None else None
    out, start = [], 0
    for size in splits:
        out.append(F.linear(x, w[start:start + size], None if bias is None else bias[start:start + size]))
        start += size
    return out


def project_out(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                channels: bool = True) -> torch.Tensor:
    """``F.linear(y.transpose(1, 2), weight, bias)``: y (B, D, L) -> (B, L, d_out). With ``channels``, a
    channel-major y is read in place as the column-major (B*L, D) matrix it is (its gradient then comes back
    channel-major)."""
    b, d, l = y.shape
    if channels and is_channel_major(y):
        return F.linear(rows_of(y).t(), weight, bias).view(b, l, weight.shape[0])
    return F.linear(y.transpose(1, 2), weight, bias)


__all__ = ["LAYOUTS", "as_sequence", "gemm_operand", "is_channel_major", "project_in", "project_out", "project_rows", "rows_of",
           "use_channels"]
