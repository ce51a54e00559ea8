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
chunks (layer-major, as in ``mambaverse.long_context``), so each rank's memory is bounded by one chunk plus
each layer's input slice.

Lightning: ``ContextParallelStrategy`` (a thin DDPStrategy) builds the context-parallel groups, shards the
batch's sequence tensors along the length, and switches every backbone of the LightningModule to this
forward; see its docstring.
"""
from __future__ import annotations

import types

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from .errors import ConfigError, ShapeError
from .long_context import _own, additive_scale
from .mixers import BidirectionalMamba, Mamba
from .ops import selective_scan


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


# ----------------------------------------------------------------------------- per-direction pieces
def _parts(mixer, reverse):
    if isinstance(mixer, Mamba):
        return mixer.in_proj, mixer.ssm
    proj = mixer.in_proj_rev if (reverse and not mixer.tie_projections) else mixer.in_proj
    return proj, (mixer.ssm_rev if reverse else mixer.ssm_fwd)


def _x_only(proj, ssm, h):
    """The x half of in_proj(h), as (b, d_inner, l), without computing the z half."""
    d = ssm.d_inner
    return F.linear(h, proj.weight[:d], None if proj.bias is None else proj.bias[:d]).transpose(1, 2)


def _halo(layer, pieces, reverse, group):
    """The conv inputs the first (forward) or last (reverse) chunk of this slice needs from its neighbour."""
    proj, ssm = _parts(layer.mixer, reverse)
    k1 = ssm.d_conv - 1
    if k1 == 0:
        return None
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    local = sum(p.shape[1] for p in pieces)
    if local < k1:
        raise ShapeError(f"context parallel: a rank's slice has {local} positions, fewer than d_conv-1={k1}")
    if reverse:  # my first k-1 inputs continue the previous rank's reverse conv
        h = pieces[0][:, :k1] if pieces[0].shape[1] >= k1 else torch.cat(pieces, 1)[:, :k1]
    else:  # my last k-1 inputs continue the next rank's forward conv
        h = pieces[-1][:, -k1:] if pieces[-1].shape[1] >= k1 else torch.cat(pieces, 1)[:, -k1:]
    edges = gather_stack(_x_only(proj, ssm, layer.norm(h)), group)  # (world, b, d_inner, k-1)
    pad = torch.zeros_like(edges[:1])
    shifted = torch.cat([edges[1:], pad]) if reverse else torch.cat([pad, edges[:-1]])
    return shifted[rank]  # zeros at the sequence's ends; still connected to the gather (see module doc)


def _zero_state_chunk(layer, reverse, h, conv, *carry):
    """Pass 1 on one chunk: (conv tail, final SSM state, running sum of dt) carrying from `carry`."""
    mixer = layer.mixer
    proj, ssm = _parts(mixer, reverse)
    args, tail = ssm.scan_args(_x_only(proj, ssm, layer.norm(h)), conv, True)
    h_prev, s_prev = carry if carry else (None, None)
    _, h_last = selective_scan(**args, delta_softplus=True, initial_state=h_prev, return_final_state=True,
                               reverse=reverse, backend=mixer.backend)
    dt_sum = F.softplus(args["delta"].float() + args["delta_bias"][:, None]).sum(-1)  # (b, d_inner)
    return _own(tail), _own(h_last), dt_sum if s_prev is None else s_prev + dt_sum


def _incoming_state(layer, pieces, reverse, halo, group, ckpt):
    """Passes 1 and 3: this rank's true incoming SSM state for one layer and direction."""
    _, ssm = _parts(layer.mixer, reverse)
    order = range(len(pieces) - 1, -1, -1) if reverse else range(len(pieces))
    conv, carry = halo, ()
    for i in order:
        conv, *carry = ckpt(_zero_state_chunk, layer, reverse, pieces[i], conv, *carry)
    h0, dt_sum = carry
    A = -torch.exp(ssm.A_log.float())
    decay = torch.exp(dt_sum[..., None] * A)  # prod_t exp(dt_t A) over the slice, (b, d_inner, n)
    pairs = gather_stack(torch.stack([decay, h0]), group)  # (world, 2, b, d_inner, n)
    world, rank = pairs.shape[0], dist.get_rank(group)
    h = torch.zeros_like(h0)
    states = [h]
    for j in (range(world - 1, 0, -1) if reverse else range(world - 1)):
        h = pairs[j, 0] * h + pairs[j, 1]
        states.append(h)
    if reverse:
        states.reverse()
    return torch.stack(states)[rank]


# ----------------------------------------------------------------------------- backbones
def _causal_chunk(layer, h, conv, ssm):
    out, (conv, ssm) = layer(h, initial_state=(conv, ssm), return_final_state=True)
    return out, _own(conv), _own(ssm)


def _reverse_chunk(layer, h, conv, ssm):
    r, (conv, ssm) = layer.mixer.direction(layer.norm(h), True, (conv, ssm), True)
    return r, _own(conv), _own(ssm)


def _forward_chunk(layer, h, r, conv, ssm):
    f, (conv, ssm) = layer.mixer.direction(layer.norm(h), False, (conv, ssm), True)
    if r is None:  # additive combine: the caller adds the reverse part outside the checkpointed region
        return h + additive_scale(layer.mixer) * f, _own(conv), _own(ssm)
    return h + layer.mixer.combine(f, r), _own(conv), _own(ssm)


def context_parallel_forward(backbone: nn.Module, hidden: torch.Tensor, group=None, chunk_len: int | None = None,
                             preserve_rng_state: bool = False) -> torch.Tensor:
    """``backbone`` (CausalBackbone with mixer 'mamba', or BidirectionalBackbone) on this rank's slice
    ``hidden`` (B, s, d_model) of a sequence split over ``group``; returns this rank's slice of the features.
    Equal, values and gradients, to running the whole sequence on one process and slicing the result."""
    if isinstance(backbone, RCPSBackbone):
        raise ConfigError("context parallel: RCPSBackbone flips the length, which crosses ranks; not supported "
                          "yet, expected a CausalBackbone or BidirectionalBackbone")
    if isinstance(backbone, CausalBackbone):
        if backbone.mixer_type != "mamba":
            raise ConfigError(f"context parallel: mixer={backbone.mixer_type!r} cannot carry state; expected 'mamba'")
        bidirectional = False
    elif isinstance(backbone, BidirectionalBackbone):
        bidirectional = True
    else:
        raise ConfigError(f"context parallel: backbone is a {type(backbone).__name__}; expected CausalBackbone or "
                          "BidirectionalBackbone")
    if hidden.dim() != 3 or hidden.shape[-1] != backbone.d_model:
        raise ShapeError(f"context parallel: input has shape {tuple(hidden.shape)}, "
                         f"expected (batch, length slice, d_model={backbone.d_model})")
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("context parallel: torch.distributed is not initialized")
    chunk_len = chunk_len or getattr(backbone, "chunk_len", None) or hidden.shape[1]
    active = backbone.training and torch.is_grad_enabled()

    def ckpt(fn, *args):
        if active:
            return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state)
        return fn(*args)

    pieces = list(hidden.split(chunk_len, dim=1))
    n = len(pieces)
    for layer in backbone.layers:
        if bidirectional:
            halo = _halo(layer, pieces, True, group)
            state = (halo, _incoming_state(layer, pieces, True, halo, group, ckpt))
            revs = [None] * n
            for i in range(n - 1, -1, -1):
                revs[i], *state = ckpt(_reverse_chunk, layer, pieces[i], *state)
        halo = _halo(layer, pieces, False, group)
        state = (halo, _incoming_state(layer, pieces, False, halo, group, ckpt))
        for i in range(n):
            if bidirectional:
                scale = additive_scale(layer.mixer)
                if scale is None:
                    pieces[i], *state = ckpt(_forward_chunk, layer, pieces[i], revs[i], *state)
                else:
                    out, *state = ckpt(_forward_chunk, layer, pieces[i], None, *state)
                    pieces[i] = out + scale * revs[i]
                revs[i] = None
            else:
                pieces[i], *state = ckpt(_causal_chunk, layer, pieces[i], *state)
    outs = [ckpt(backbone.norm_f, p) for p in pieces]  # the final norm keeps nothing either
    return torch.cat(outs, dim=1) if n > 1 else outs[0]


class ContextParallelBackbone(nn.Module):
    """Module form of `context_parallel_forward`: wraps a backbone; forward takes this rank's slice."""

    def __init__(self, backbone: nn.Module, group=None, chunk_len: int | None = None):
        super().__init__()
        self.backbone, self.group, self.chunk_len = backbone, group, chunk_len
        self.d_model = backbone.d_model

    def forward(self, hidden):
        return context_parallel_forward(self.backbone, hidden, self.group, self.chunk_len)


def enable_context_parallel(module: nn.Module, group=None) -> list[str]:
    """Switch every Causal/Bidirectional backbone inside ``module`` to the context-parallel forward, in place
    (parameters and state-dict names unchanged). Returns the names of the switched submodules."""
    switched = []
    for name, sub in module.named_modules():
        if isinstance(sub, RCPSBackbone):
            raise ConfigError(f"context parallel: {name or 'module'} is an RCPSBackbone, which is not supported yet")
        if isinstance(sub, (CausalBackbone, BidirectionalBackbone)) and not hasattr(sub, "_cp_group"):
            sub._cp_group = group
            sub.forward = types.MethodType(lambda self, hidden: context_parallel_forward(self, hidden, self._cp_group),
                                           sub)
            switched.append(name)
    return switched


# ----------------------------------------------------------------------------- Lightning
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry  # noqa: E402


class ContextParallelStrategy(DDPStrategy):
    """DDP whose ranks, in groups of ``cp_size``, split each sequence's length between them.

    ``mambaverse fit`` selects it from a config::

        trainer:
          devices: 2
          strategy:
            class_path: mambaverse.context_parallel.ContextParallelStrategy
            init_args: {cp_size: 2, shard_keys: [input_ids], overlap: 0}

    What it does:
      * builds the context-parallel process groups (consecutive ranks; ``cp_size`` defaults to all ranks),
        and makes the distributed sampler hand the *same* batches to every rank of a group (data parallel
        runs across groups);
      * switches every Causal/Bidirectional backbone of the LightningModule to `context_parallel_forward`
        over its group (parameters and checkpoint names unchanged);
      * after moving each batch to the device, takes the group's first rank's copy of the ``shard_keys``
        tensors (``sync_batch``) and gives each rank its slice along dim 1 (``shard_sequence``, with
        ``overlap`` extra positions: 1 for a causal LM that shifts inputs and targets itself).
    Gradients: DDP averages over all ranks, so a loss that is the mean over a rank's own positions gives
    the exact gradient of the mean over all positions when the slices hold equal numbers of counted positions.
    Heads that pool over the whole length (sequence classifiers) need a cross-rank pooling of their own.
    """

    strategy_name = "context_parallel"

    def __init__(self, cp_size: int | None = None, shard_keys: tuple[str, ...] | list[str] = ("input_ids",),
                 overlap: int = 0, sync_batch: bool = True, **ddp_kwargs):
        super().__init__(**ddp_kwargs)
        if cp_size is not None and (isinstance(cp_size, bool) or not isinstance(cp_size, int) or cp_size < 1):
            raise ConfigError(f"ContextParallelStrategy: cp_size={cp_size!r}; expected a positive int")
        if not isinstance(overlap, int) or overlap < 0:
            raise ConfigError(f"ContextParallelStrategy: overlap={overlap!r}; expected an int >= 0")
        self.cp_size, self.shard_keys, self.overlap, self.sync_batch = cp_size, tuple(shard_keys), overlap, sync_batch
        self.cp_group, self.cp_root = None, 0

    def setup_distributed(self) -> None:
        super().setup_distributed()
        world, rank = dist.get_world_size(), dist.get_rank()
        cp = self.cp_size or world
        if world % cp:
            raise ConfigError(f"ContextParallelStrategy: cp_size={cp} does not divide the {world} processes")
        self.cp_size = cp
        for start in range(0, world, cp):  # every rank creates every group, in the same order
            group = dist.new_group(list(range(start, start + cp)))
            if start <= rank < start + cp:
                self.cp_group, self.cp_root = group, start

    @property
    def distributed_sampler_kwargs(self) -> dict:
        cp = self.cp_size or 1
        return {"num_replicas": (self.num_nodes * self.num_processes) // cp, "rank": self.global_rank // cp}

    def setup(self, trainer) -> None:
        enable_context_parallel(self.lightning_module, self.cp_group)
        super().setup(trainer)

    def _sync(self, t):
        if self.sync_batch and isinstance(t, torch.Tensor):
            t = t.contiguous()
            dist.broadcast(t, self.cp_root, group=self.cp_group)
        return t

    def _shard(self, t):
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            return t
        return shard_sequence(t, self.cp_group, dim=1, overlap=self.overlap)

    def batch_to_device(self, batch, device=None, dataloader_idx: int = 0):
        """Move, then (per shard key) take the group root's copy, crop (sequence-length warmup), shard."""
        batch = super().batch_to_device(batch, device, dataloader_idx)
        if self.cp_group is None:
            return batch
        if isinstance(batch, torch.Tensor):
            return self._shard(self._sync(batch))
        if not isinstance(batch, dict):
            return batch
        batch = {k: (self._sync(v) if k in self.shard_keys else v) for k, v in batch.items()}
        trainer = getattr(self.lightning_module, "_trainer", None)
        if trainer is not None and trainer.training:  # warmup crops the whole sequence, before sharding
            for cb in trainer.callbacks:
                if callable(getattr(cb, "crop_batch", None)) and getattr(cb, "_mode", None) == "crop":
                    batch = cb.crop_batch(trainer, batch)
        return {k: (self._shard(v) if k in self.shard_keys else v) for k, v in batch.items()}


if "context_parallel" not in StrategyRegistry:
    StrategyRegistry.register("context_parallel", ContextParallelStrategy,
                              description="DDP with each sequence's length split across the ranks (mambaverse)")


from lightning.pytorch.strategies import FSDPStrategy  # noqa: E402


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning FSDP with one FSDP unit per residual block (Mamba layers), settable from YAML, where a
    set of classes cannot be written. ``checkpoint_blocks`` adds activation checkpointing per block.

        trainer:
          strategy:
            class_path: mambaverse.context_parallel.BlockFSDPStrategy
            init_args: {sharding_strategy: FULL_SHARD, checkpoint_blocks: false}
    """

    def __init__(self, checkpoint_blocks: bool = False, **fsdp_kwargs):
        from .backbones import ResidualBlock

        fsdp_kwargs.setdefault("auto_wrap_policy", {ResidualBlock})
        if checkpoint_blocks:
            fsdp_kwargs.setdefault("activation_checkpointing_policy", {ResidualBlock})
        super().__init__(**fsdp_kwargs)


if "fsdp_blocks" not in StrategyRegistry:
    StrategyRegistry.register("fsdp_blocks", BlockFSDPStrategy,
                              description="FSDP with one unit per Mamba residual block (mambaverse)")
