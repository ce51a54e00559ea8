"""CausalBackbone: the pre-norm residual Mamba stack of language models, with recurrent decoding."""
from __future__ import annotations

import warnings

import torch

from ..cache import BackboneCache
from ..configurable import builder
from ..errors import ShapeError
from ..mixers import D_CONV, D_STATE, EXPAND
from .stack import MixerStack


@builder
class CausalBackbone(MixerStack):
    """Causal stack (B, L, d_model) -> (B, L, d_model): RMSNorm pre-norm residual blocks of Mamba (or Mamba-2)
    mixers and a final RMSNorm, as in Mamba's language models (Gu & Dao 2023).

    Args:
        d_model: width.
        n_layer: number of residual blocks.
        mixer: "mamba" (Mamba-1), "mamba2" (SSD), another name registered with
            ``mambaverse.mixers.register_mixer``, or a callable ``factory(d_model, **mixer_options)``.
        d_state, d_conv, expand, dt_rank: the mixer's SSM state size, conv width, inner expansion and dt
            rank (dt_rank None = ceil(d_inner / 16)); given to a named mixer when its constructor takes them.
        headdim: Mamba-2 channels per head (None = the mixer's default); a shortcut for
            ``mixer_options={"headdim": ...}``.
        chunk_size: deprecated shortcut for ``mixer_options={"chunk_size": ...}``, the SSD kernel's chunk
            (not the long-context split, which is ``chunk_len``).
        norm_eps: RMSNorm epsilon of the blocks and the final norm.
        checkpoint_layers: activation checkpointing per block in training.
        backend: the ops backend ("auto", "naive", "torch", "triton", "mamba_ssm").
        chunk_len: run sequences longer than this in state-carrying chunks with exact gradients and memory
            bounded by one chunk (``backbones.sweep``); None/0 = off. Needs a mixer that carries state.
        mixer_options: further keyword arguments of the named mixer.

    Decoding: ``allocate_cache(batch)`` then ``step(hidden_t, cache)``. State carrying across calls:
    ``forward(x, initial_states=..., return_final_states=True)``.
    Raises ConfigError for an unknown mixer, mixer option or chunk_len, or chunking a mixer that cannot
    carry state; ShapeError for an input that is not (B, L, d_model).
    """

    def __init__(self, d_model: int = 128, n_layer: int = 4, mixer="mamba", d_state: int = D_STATE,
                 d_conv: int = D_CONV, expand: int = EXPAND, dt_rank: int | None = None, headdim: int | None = None,
                 chunk_size: int | None = None, norm_eps: float = 1e-5, checkpoint_layers: bool = False,
                 backend: str = "auto", chunk_len: int | None = None, mixer_options: dict | None = None):
        super().__init__()
        shortcuts = {k: v for k, v in (("headdim", headdim), ("chunk_size", chunk_size)) if v is not None}
        if chunk_size is not None:
            warnings.warn("CausalBackbone: chunk_size= is deprecated; use mixer_options={'chunk_size': ...} "
                          "(chunk_len is the long-context split)", DeprecationWarning, stacklevel=3)
        self.mixer_type = mixer if isinstance(mixer, str) else getattr(mixer, "__name__", type(mixer).__name__)
        self._build(d_model, n_layer, mixer, mixer_options, norm_eps, checkpoint_layers, chunk_len,
                    d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, backend=backend, **shortcuts)

    def allocate_cache(self, batch: int, device=None, dtype=torch.float32) -> BackboneCache:
        """Zeroed decoding caches of every layer (on the model's device unless given)."""
        device = device if device is not None else self.norm_f.weight.device
        return BackboneCache([layer.mixer.allocate_cache(batch, device, dtype) for layer in self.layers])

    @torch.no_grad()
    def step(self, hidden_t, cache: BackboneCache):
        """hidden_t (B, d_model) at the next position -> features (B, d_model); advances cache."""
        if hidden_t.dim() != 2 or hidden_t.shape[-1] != self.d_model:
            raise ShapeError(f"CausalBackbone.step: input has shape {tuple(hidden_t.shape)}, "
                             f"expected (batch, d_model={self.d_model})")
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden_t = hidden_t + layer.mixer.step(layer.norm(hidden_t), layer_cache)
        cache.seqlen_offset += 1
        return self.norm_f(hidden_t)
