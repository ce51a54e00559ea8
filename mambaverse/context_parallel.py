"""Context parallel: one sequence's length split across the ranks of a torch.distributed group.

Rank r holds positions [r*s, (r+1)*s) of every sequence (``shard_sequence``). A Mamba layer is a linear
recurrence h_t = dA_t h_{t-1} + dBu_t, so the state entering slice r is a fold over the earlier slices of
two small tensors each (b, d_inner, d_state): the slice's total decay P_j = prod_t dA_t = exp(A * sum_t dt_t)
and its final state h0_j when scanned from zero:  h_in_0 = 0,  h_in_{r+1} = P_r h_in_r + h0_r.

Per layer and direction:
  1. conv halo: the d_conv-1 conv inputs just before the slice (after it, for the reverse direction) come
     from the neighbouring rank (one all-gather of (b, d_inner, d_conv-1) edges);
  2. pass 1: scan the slice from a zero state, keeping only its final state and sum_t dt (-> P);
  3. exchange: all-gather the (P, h0) pairs and fold them into this rank's incoming state h_in;
  4. pass 2: the layer's real output, by running the slice's scan again with initial_state = h_in.
Step 4 re-runs the scan rather than adding the correction y_t += C_t (prod_{s<=t} dA_s) h_in. Both are
exact and both cost one more (b, d, n, l)-sized sweep; the re-run is one call of the tested op (any backend,
D skip, z gate and fp32 state handled there), needs no new kernel, and gives bit-for-bit the numbers of a
single scan with that initial state instead of a sum of two rounded terms.

The reverse direction of bidirectional layers mirrors all of it: its state and halo flow from the last
rank to the first. Backward mirrors forward through autograd: the one collective, ``gather_stack`` (an
all-gather), has an all-reduce-sum as its backward, so every state gradient reaches the rank that made the
state. Collectives run only between the checkpointed passes, never inside a recomputed region, and every
rank issues them in the same order.

``chunk_len`` composes with this: passes 1 and 2 run over the local slice in state-carrying, checkpointed
chunks: the same layer-major sweep as single-device chunking (``mambaverse.backbones.sweep``), with the
states entering the slice supplied by the exchange. Each rank's memory is bounded by one chunk plus each
layer's input slice. Everything here uses only the mixers' state API (``mambaverse.mixers.state``:
``conv_state_from``, ``transfer``, ``direction``, ``combine``), so any state-carrying mixer works.

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
from .backbones.sweep import own, sweep_layers
from .errors import ConfigError, ShapeError
from .mixers import MixerState

__all__ = ["ContextParallel", "ContextParallelBackbone", "context_parallel_forward", "disable_context_parallel",
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


def _incoming_state(block, pieces, reverse, halo, group, run):
    """Passes 1 and 3: this rank's true incoming SSM state for one layer and direction."""
    order = range(len(pieces) - 1, -1, -1) if reverse else range(len(pieces))
    conv, ssm, decay = halo, None, None
    for i in order:
        conv, ssm, decay = run(_transfer_chunk, block, reverse, pieces[i], conv, ssm, decay)
    pairs = gather_stack(torch.stack([decay, ssm]), group)  # (world, 2, b, d_inner, n)
    world, rank = pairs.shape[0], dist.get_rank(group)
    h = torch.zeros_like(ssm)
    states = [h]
    for j in (range(world - 1, 0, -1) if reverse else range(world - 1)):
        h = pairs[j, 0] * h + pairs[j, 1]
        states.append(h)
    if reverse:
        states.reverse()
    return torch.stack(states)[rank]


def _exchange(block, pieces, run, group):
    """``sweep_layers``' ``entering``: the MixerState entering this rank's slice in each direction."""
    entering = {}
    for reverse in sorted(block.mixer.directions, reverse=True):  # reverse first, as every rank does
        halo = _halo(block, pieces, reverse, group)
        entering[reverse] = MixerState(halo, _incoming_state(block, pieces, reverse, halo, group, run))
    return entering


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

    ``runner(stack, hidden, chunking)``: hidden (B, s, d_model) is this rank's slice; returns this rank's
    slice of the features, equal (values and gradients) to running the whole sequence on one process.
    ``chunking`` None runs the whole slice as one chunk.
    """

    def __init__(self, group=None, preserve_rng_state: bool = False):
        self.group, self.preserve_rng_state = group, preserve_rng_state

    def __call__(self, stack: MixerStack, hidden: torch.Tensor, chunking: Chunking | None = None) -> torch.Tensor:
        check_context_parallel(stack)
        if hidden.dim() != 3 or hidden.shape[-1] != stack.d_model:
            raise ShapeError(f"context parallel: input has shape {tuple(hidden.shape)}, "
                             f"expected (batch, length slice, d_model={stack.d_model})")
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("context parallel: torch.distributed is not initialized")
        plan = Chunking(chunking.chunk_len if chunking else hidden.shape[1],
                        preserve_rng_state=self.preserve_rng_state)
        return sweep_layers(stack, hidden, plan, entering=partial(_exchange, group=self.group))


def context_parallel_forward(backbone: nn.Module, hidden: torch.Tensor, group=None, chunk_len: int | None = None,
                             preserve_rng_state: bool = False) -> torch.Tensor:
    """``backbone`` (CausalBackbone or BidirectionalBackbone whose mixers carry state) on this rank's slice
    ``hidden`` (B, s, d_model) of a sequence split over ``group``; returns this rank's slice of the features,
    in chunks of ``chunk_len`` (default: the backbone's ``chunk_len``, else the whole slice).

    Raises ConfigError for another backbone or an uninitialized process group, ShapeError for a bad shape."""
    stack = check_context_parallel(backbone)
    chunk_len = chunk_len or stack.chunk_len
    return ContextParallel(group, preserve_rng_state)(stack, hidden, Chunking(chunk_len) if chunk_len else None)


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


def enable_context_parallel(module: nn.Module, group=None) -> list[str]:
    """Install :class:`ContextParallel` over ``group`` as the ``runner`` of every backbone inside ``module``,
    in place (parameters, state-dict names and forward unchanged). Returns the names of those backbones.

    Raises ConfigError if ``module`` holds a backbone that cannot run context parallel (RCPSBackbone, or
    mixers that do not carry state)."""
    switched = []
    for name, sub in module.named_modules():
        if getattr(sub, "supports_context_parallel", None) is False:
            check_context_parallel(sub, f"context parallel: {name or 'module'}")
        if isinstance(sub, MixerStack) and sub.runner is None:
            sub.runner = ContextParallel(group)
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
