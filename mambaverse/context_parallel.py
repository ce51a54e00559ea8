"""Context parallel: one sequence's length split across the ranks of a torch.distributed group.

Rank r holds positions [r*s, (r+1)*s) of every sequence (``shard_sequence``). A Mamba layer is a linear
recurrence h_t = dA_t h_{t-1} + dBu_t, so the state entering slice r is a fold over the earlier slices of
two small tensors each (b, d_inner, d_state): the slice's total decay P_j = prod_t dA_t = exp(A * sum_t dt_t)
and its final state h0_j when scanned from zero:  h_in_0 = 0,  h_in_{r+1} = P_r h_in_r + h0_r.

Per layer and direction (``method="correct"``, the default, for mixers with ``corrects_state``):
  1. conv halo: the d_conv-1 conv inputs just before the slice (after it, for the reverse direction) come
     from the neighbouring rank (one all-gather of (b, d_inner, d_conv-1) edges);
  2. pass 1: the layer's output on the slice from a zero SSM state (and the true conv halo), keeping the
     outputs, the final state and each chunk's total decay;
  3. exchange: all-gather the (P, h0) pairs and fold them into this rank's incoming state h_in;
  4. correction: add the incoming state's contribution, out_proj(C_t (prod_{s<=t} dA_s) h_in * silu(z_t))
     (``mambaverse.ops.state_correction``, a fused kernel on CUDA), chunk by chunk with h_in decayed to
     each chunk's start. The correction of a decaying state vanishes: once the decay from the slice's edge
     has underflowed to exactly zero on every rank (one all-reduce of flags decides, so that all ranks
     build the same autograd graph), the remaining chunks are skipped, and the kernel itself stops
     where its decay underflows. Each rank then does one scan of its slice plus a short correction,
     instead of two scans.
``method="rescan"`` (and mixers without ``corrects_state``, e.g. bidirectional layers whose directions
multiply, where a correction would not add) replaces 2 by a state-only pass and 4 by running the slice's
scan again with initial_state = h_in: exact too, but every rank scans its slice twice.

The reverse direction of bidirectional layers mirrors all of it: its state and halo flow from the last
rank to the first. Backward mirrors forward through autograd: the one differentiable collective,
``gather_stack`` (an all-gather), has an all-reduce-sum as its backward, so every state gradient reaches
the rank that made the state; the correction's backward gives the gradient of h_in and the extra
gradients of dt, A, C and z. Collectives run only between the checkpointed passes, never inside a
recomputed region, and every rank issues them in the same order.

``chunk_len`` composes with this: the passes run over the local slice in state-carrying, checkpointed
chunks (one region per chunk, pass and direction), with the states entering the slice supplied by the
exchange. Each rank's memory is bounded by one chunk plus each layer's input slice. Everything here uses
only the mixers' state API (``mambaverse.mixers.state``: ``conv_state_from``, ``transfer``, ``direction``,
``combine``, ``state_contribution``), so any state-carrying mixer works.

A backbone runs context parallel when :class:`ContextParallel` is installed as its ``runner``
(``enable_context_parallel``); its parameters, state-dict names and forward stay its own.
Lightning: ``mambaverse.training.ContextParallelStrategy`` builds the groups, shards the batch and
calls ``enable_context_parallel``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn

from .backbones import Chunking, MixerStack
from .backbones.sweep import chunk_runner, own, sweep_layer
from .errors import ConfigError, ShapeError
from .mixers import MixerState

METHODS = ("correct", "rescan")

__all__ = ["METHODS", "ContextParallel", "ContextParallelBackbone", "context_parallel_forward", "disable_context_parallel",
           "enable_context_parallel", "gather_stack", "shard_sequence"]


# ----------------------------------------------------------------------------- the collective
class _GatherStack(torch.autograd.Function):
    """all_gather of one tensor per rank, stacked (world, *shape); backward = all_reduce(sum), own slice."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def gather_stack(t: torch.Tensor, group=None) -> torch.Tensor:
    """Differentiable all-gather: (world, *t.shape) on every rank; gradients return to their owner."""
    return _GatherStack.apply(t, group)


def shard_sequence(t: torch.Tensor, group=None, dim: int = 1, overlap: int = 0) -> torch.Tensor:
    """This rank's contiguous slice of ``t`` along ``dim`` (length must split evenly over the group).

    ``overlap`` extra positions are appended from the next slice (for a causal LM, overlap=1 lets each rank
    shift its own inputs and targets); the length must then be world*s + overlap."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = t.shape[dim] - overlap
    if n <= 0 or n % world:
        raise ShapeError(f"shard_sequence: length {t.shape[dim]} (minus overlap {overlap}) does not split evenly "
                         f"over {world} context-parallel ranks")
    s = n // world
    return t.narrow(dim, rank * s, s + overlap)


# ----------------------------------------------------------------------------- the exchange, per layer and direction
def _edge(pieces, k1, reverse):
    """The first (reverse) or last (forward) k1 positions of the slice held as ``pieces``."""
    if reverse:
        return pieces[0][:, :k1] if pieces[0].shape[1] >= k1 else torch.cat(pieces, 1)[:, :k1]
    return pieces[-1][:, -k1:] if pieces[-1].shape[1] >= k1 else torch.cat(pieces, 1)[:, -k1:]


def _halo(block, pieces, reverse, group):
    """The conv state entering this slice: the neighbour's edge inputs (zeros at the sequence's ends)."""
    k1 = block.mixer.conv_context
    if k1 == 0:
        return None
    local = sum(p.shape[1] for p in pieces)
    if local < k1:
        raise ShapeError(f"context parallel: a rank's slice has {local} positions, fewer than d_conv-1={k1}")
    # my first k-1 inputs continue the previous rank's reverse conv; my last ones the next rank's forward conv
    edge = block.mixer.conv_state_from(block.norm(_edge(pieces, k1, reverse)), reverse)
    edges = gather_stack(edge, group)  # (world, b, channels, k-1)
    pad = torch.zeros_like(edges[:1])
    shifted = torch.cat([edges[1:], pad]) if reverse else torch.cat([pad, edges[:-1]])
    return shifted[dist.get_rank(group)]  # still connected to the gather (see the module docstring)


def _transfer_chunk(block, reverse, h, conv, ssm, decay):
    """Pass 1 on one chunk: the state leaving it from a zero start of the slice, and the running decay."""
    chunk_decay, state = block.mixer.transfer(block.norm(h), reverse, MixerState(conv, ssm))
    return own(state.conv), own(state.ssm), chunk_decay if decay is None else decay * chunk_decay


def _fold(decay, ssm, reverse, group):
    """Step 3: this rank's true incoming SSM state from every rank's (slice decay, final state from zero)."""
    pairs = gather_stack(torch.stack([decay, ssm]), group)  # (world, 2, b, d_inner, n)
    world, rank = pairs.shape[0], dist.get_rank(group)
    h = torch.zeros_like(ssm)
    states = [h]
    for j in (range(world - 1, 0, -1) if reverse else range(world - 1)):
        h = pairs[j, 0] * h + pairs[j, 1]
        states.append(h)
    if reverse:
        states.reverse()
    # indexing the stack (not picking the list entry) keeps every rank's graph the same shape, zeros included
    return torch.stack(states)[rank]


def _incoming_state(block, pieces, reverse, halo, group, run):
    """The rescan method's pass 1 and exchange: this rank's true incoming SSM state for one layer and direction."""
    order = range(len(pieces) - 1, -1, -1) if reverse else range(len(pieces))
    conv, ssm, decay = halo, None, None
    for i in order:
        conv, ssm, decay = run(_transfer_chunk, block, reverse, pieces[i], conv, ssm, decay)
    return _fold(decay, ssm, reverse, group)


def _exchange(block, pieces, run, group):
    """The rescan method: the MixerState entering this rank's slice in each direction (``sweep_layer``'s ``entering``)."""
    entering = {}
    for reverse in sorted(block.mixer.directions, reverse=True):  # reverse first, as every rank does
        halo = _halo(block, pieces, reverse, group)
        entering[reverse] = MixerState(halo, _incoming_state(block, pieces, reverse, halo, group, run))
    return entering


# ----------------------------------------------------------------------------- one scan plus a correction
def _segment_chunk(block, reverse, h, conv, ssm):
    """Pass 1 on one chunk: its contribution from the state given (zero SSM state at the slice's edge), the
    state leaving it, and its total decay."""
    y, state, decay = block.mixer.direction(block.norm(h), reverse, MixerState(conv, ssm), True, True)
    return y, own(state.conv), own(state.ssm), decay


def _correction_chunk(block, reverse, h, h_in, conv, decay):
    """Step 4 on one chunk: what its contribution gains from the SSM state decay * h_in entering it."""
    return block.mixer.state_contribution(block.norm(h), h_in, reverse, conv, decay)


def _corrected_direction(block, pieces, reverse, run, group):
    """One direction of one layer over this rank's chunks: pass 1, exchange, correction; the contributions."""
    n = len(pieces)
    order = list(range(n - 1, -1, -1) if reverse else range(n))
    conv, ssm = _halo(block, pieces, reverse, group), None
    ys, convs, decays = [None] * n, [None] * n, [None] * n
    for i in order:
        convs[i] = conv  # the conv state entering chunk i, reused by its correction
        ys[i], conv, ssm, decays[i] = run(_segment_chunk, block, reverse, pieces[i], conv, ssm)
    before, total = [None] * n, None  # decay from the slice's edge to each chunk's start; over the slice
    for i in order:
        before[i] = total
        total = decays[i] if total is None else total * decays[i]
    h_in = _fold(total, ssm, reverse, group)
    # a chunk whose decay from the edge is exactly zero gains exactly nothing, gradients included; skip it
    # only where that holds on every rank, so that all ranks build the same graph (backward collectives)
    live = torch.stack([torch.ones((), dtype=torch.int32, device=ssm.device) if b is None
                        else b.detach().any().to(torch.int32) for b in before])
    dist.all_reduce(live, op=dist.ReduceOp.MAX, group=group)
    for i, keep in zip(range(n), live.tolist()):
        if keep:  # the decay goes in apart from h_in, so that the op stops where it underflows
            ys[i] = ys[i] + run(_correction_chunk, block, reverse, pieces[i], h_in, convs[i], before[i])
    return ys


def _corrected_layer(block, pieces, run, group):
    """One residual block over this rank's chunks by one scan per direction plus the state correction."""
    mixer = block.mixer
    contributions = [_corrected_direction(block, pieces, reverse, run, group)
                     for reverse in sorted(mixer.directions, reverse=True)]  # reverse first, as every rank does
    scale = mixer.additive_scale
    out = []
    for i, piece in enumerate(pieces):
        y = contributions[0][i]
        for other in contributions[1:]:
            y = y + other[i]
        out.append(piece + (y if scale == 1.0 else scale * y))
        for c in contributions:
            c[i] = None  # consumed: free it
    return out


def corrects_state(block) -> bool:
    """Whether a layer can run context parallel by one scan plus a state correction (additive combine)."""
    mixer = block.mixer
    return bool(getattr(mixer, "corrects_state", False)) and mixer.additive_scale is not None


# ----------------------------------------------------------------------------- backbones
def check_context_parallel(backbone: nn.Module, who: str = "context parallel") -> MixerStack:
    """The backbone as a MixerStack whose mixers carry state; ConfigError otherwise."""
    if getattr(backbone, "supports_context_parallel", None) is False and not isinstance(backbone, MixerStack):
        raise ConfigError(f"{who}: {type(backbone).__name__} flips or mixes the whole length, which crosses ranks; "
                          "not supported, expected a CausalBackbone or BidirectionalBackbone")
    if not isinstance(backbone, MixerStack):
        raise ConfigError(f"{who}: backbone is a {type(backbone).__name__}; expected a CausalBackbone or "
                          "BidirectionalBackbone")
    if not backbone.carries_state:
        raise ConfigError(f"{who}: {type(backbone).__name__} has mixers that cannot carry state "
                          f"(mixer={getattr(backbone, 'mixer_type', '?')!r}); expected e.g. mixer='mamba'")
    return backbone


class ContextParallel:
    """A backbone ``runner``: runs a MixerStack on this rank's slice of a sequence split over ``group``.

    Args:
        group: the torch.distributed process group of the ranks sharing each sequence (None = the world).
        preserve_rng_state: replay the RNG when recomputing checkpointed chunks (off: Mamba draws none).
        method: "correct" (one scan per layer and direction plus the state correction; layers whose mixer
            cannot be corrected, e.g. multiplying bidirectional ones, fall back to "rescan") or "rescan"
            (scan each slice again from the true incoming state). Both are exact.

    ``runner(stack, hidden, chunking)``: hidden (B, s, d_model) is this rank's slice; returns this rank's
    slice of the features, equal (values and gradients) to running the whole sequence on one process.
    ``chunking`` None runs the whole slice as one chunk.
    Raises ConfigError for an unknown method.
    """

    def __init__(self, group=None, preserve_rng_state: bool = False, method: str = "correct"):
        if method not in METHODS:
            raise ConfigError(f"context parallel: method={method!r}; expected one of {METHODS}")
        self.group, self.preserve_rng_state, self.method = group, preserve_rng_state, method

    def __call__(self, stack: MixerStack, hidden: torch.Tensor, chunking: Chunking | None = None) -> torch.Tensor:
        check_context_parallel(stack)
        if hidden.dim() != 3 or hidden.shape[-1] != stack.d_model:
            raise ShapeError(f"context parallel: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length slice, d_model={stack.d_model})")
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("context parallel: torch.distributed is not initialized")
        plan = Chunking(chunking.chunk_len if chunking else hidden.shape[1],
                        preserve_rng_state=self.preserve_rng_state)
        run, _ = chunk_runner(stack, plan)
        pieces = list(hidden.split(plan.chunk_len, dim=1))
        for block in stack.layers:
            if self.method == "correct" and corrects_state(block):
                pieces = _corrected_layer(block, pieces, run, self.group)
            else:
                pieces = sweep_layer(block, pieces, run, _exchange(block, pieces, run, self.group))
        out = [run(stack.norm_f, p) for p in pieces]  # the final norm keeps nothing either
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]


def context_parallel_forward(backbone: nn.Module, hidden: torch.Tensor, group=None, chunk_len: int | None = None,
                             preserve_rng_state: bool = False, method: str = "correct") -> torch.Tensor:
    """``backbone`` (CausalBackbone or BidirectionalBackbone whose mixers carry state) on this rank's slice
    ``hidden`` (B, s, d_model) of a sequence split over ``group``; returns this rank's slice of the features,
    in chunks of ``chunk_len`` (default: the backbone's ``chunk_len``, else the whole slice). ``method``: see
    :class:`ContextParallel`.

    Raises ConfigError for another backbone, an unknown method or an uninitialized process group,
    ShapeError for a bad shape."""
    stack = check_context_parallel(backbone)
    chunk_len = chunk_len or stack.chunk_len
    runner = ContextParallel(group, preserve_rng_state, method)
    return runner(stack, hidden, Chunking(chunk_len) if chunk_len else None)


class ContextParallelBackbone(nn.Module):
    """Module form of `context_parallel_forward`: forward takes this rank's slice (B, s, d_model).

    Args:
        backbone: a CausalBackbone or BidirectionalBackbone whose mixers carry state (ConfigError otherwise).
        group: the process group sharing each sequence (None = the world).
        chunk_len: chunks inside each rank's slice (None = the backbone's chunk_len, else the whole slice).
    State-dict keys are ``backbone.*``; prefer ``enable_context_parallel``, which keeps the backbone's own.
    """

    def __init__(self, backbone: nn.Module, group=None, chunk_len: int | None = None):
        super().__init__()
        self.backbone, self.group, self.chunk_len = check_context_parallel(backbone), group, chunk_len
        self.d_model = backbone.d_model

    def forward(self, hidden):
        return context_parallel_forward(self.backbone, hidden, self.group, self.chunk_len)


def enable_context_parallel(module: nn.Module, group=None, method: str = "correct") -> list[str]:
    """Install :class:`ContextParallel` over ``group`` (with ``method``) as the ``runner`` of every backbone
    inside ``module``, in place (parameters, state-dict names and forward unchanged). Returns the names of
    those backbones.

    Raises ConfigError if ``module`` holds a backbone that cannot run context parallel (RCPSBackbone, or
    mixers that do not carry state), or for an unknown method."""
    switched = []
    for name, sub in module.named_modules():
        if getattr(sub, "supports_context_parallel", None) is False:
            check_context_parallel(sub, f"context parallel: {name or 'module'}")
        if isinstance(sub, MixerStack) and sub.runner is None:
            sub.runner = ContextParallel(group, method=method)
            switched.append(name)
    return switched


def disable_context_parallel(module: nn.Module) -> list[str]:
    """Remove the ContextParallel runners that ``enable_context_parallel`` installed; returns their names."""
    switched = []
    for name, sub in module.named_modules():
        if isinstance(sub, MixerStack) and isinstance(sub.runner, ContextParallel):
            sub.runner = None
            switched.append(name)
    return switched
