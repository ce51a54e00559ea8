"""A SaShiMi-style multi-scale causal U-Net of Mamba blocks for autoregressive waveform modelling.

Follows SaShiMi (Goel et al., 2022, "It's Raw! Audio Generation with State-Space Models"), with its S4+MLP blocks
replaced by Mamba blocks as in the Mamba paper's SC09 experiment (Gu & Dao, 2023, section 4.4). Shapes for
``pool=(4, 4)``, ``expand=2``, ``d_model=64`` and a 1 s clip at 16 kHz::

    codes (B, 16000) -> embed (B, 16000, 64) -> Mamba x n -> DownPool -> (B, 4000, 128) -> Mamba x n -> DownPool
      -> (B, 1000, 256) -> center Mamba x n_center -> UpPool (+ skip) -> Mamba x n -> UpPool (+ skip) -> Mamba x n
      -> RMSNorm -> 256-way head -> logits (B, 16000, 256)

Causality. Position t's input is the code of sample t-1 (a start symbol at t = 0), so ``logits[:, t]`` is the
distribution of sample t given samples < t. Every Mamba block is causal. ``DownPool`` folds p consecutive
positions jp..jp+p-1 into coarse position j (it has seen inputs up to jp+p-1); ``UpPool`` unfolds coarse
position j into fine positions (j+1)p..(j+1)p+p-1, one coarse step later, so that no fine position receives
information from inputs after it (SaShiMi's shift). Tests check this by perturbing the future.

Recurrent generation. ``allocate_cache`` builds a :class:`UNetCache`: a core ``BackboneCache`` for every block
stack, plus, per pooling stage, a buffer of the last p fine features (for the next DownPool) and the p fine
outputs of the last UpPool. ``step`` advances one sample: the stage-i stack runs every P_i = p_0...p_{i-1}
samples, so a step costs O(1) and the prefix is never re-run.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn

from mambaverse.backbones import CausalBackbone
from mambaverse.errors import ConfigError, ShapeError
from mambaverse.registry import builder

from .heads import QuantizedHead, nll_bits_per_sample, sample_next


class DownPool(nn.Module):
    """(B, L, d_in) -> (B, L // p, d_out): p consecutive positions concatenated, then a linear map."""

    def __init__(self, d_in: int, d_out: int, p: int):
        super().__init__()
        self.p = p
        self.linear = nn.Linear(d_in * p, d_out)

    def forward(self, x):
        b, l, d = x.shape
        return self.linear(x.reshape(b, l // self.p, self.p * d))


class UpPool(nn.Module):
    """(B, L // p, d_in) -> (B, L, d_out): a linear map to p fine positions, shifted one coarse step (p fine
    positions) later with zeros in front, so fine position t only sees coarse positions that ended before t."""

    def __init__(self, d_in: int, d_out: int, p: int):
        super().__init__()
        self.p, self.d_out = p, d_out
        self.linear = nn.Linear(d_in, d_out * p)

    def forward(self, x):
        b, lc, _ = x.shape
        y = self.linear(x).reshape(b, lc * self.p, self.d_out)
        return torch.nn.functional.pad(y[:, :-self.p], (0, 0, self.p, 0))


class UNetCache(nn.Module):
    """Decoding state of :class:`SaShiMiMamba`: the core caches of every block stack, per stage a buffer
    ``down_{i}`` (B, p_i, d_i) of the last fine features and ``up_{i}`` (B, p_i, d_i) of the pending UpPool
    outputs, and ``t`` the number of samples generated. Buffers move with ``.to()``; ``reset()`` starts over."""

    def __init__(self, down, up, center, widths, pools, batch, device, dtype):
        super().__init__()
        self.down, self.up, self.center = nn.ModuleList(down), nn.ModuleList(up), center
        self.pools = list(pools)
        for i, (d, p) in enumerate(zip(widths, pools)):
            self.register_buffer(f"down_{i}", torch.zeros(batch, p, d, device=device, dtype=dtype), persistent=False)
            self.register_buffer(f"up_{i}", torch.zeros(batch, p, d, device=device, dtype=dtype), persistent=False)
        self.t = 0
        self.batch = batch

    def buffers_of(self, i):
        return getattr(self, f"down_{i}"), getattr(self, f"up_{i}")

    def reset(self):
        for c in (*self.down, *self.up, self.center):
            c.reset()
        for i in range(len(self.pools)):
            for buf in self.buffers_of(i):
                buf.zero_()
        self.t = 0
        return self


@builder
class SaShiMiMamba(nn.Module):
    """Autoregressive waveform model: mu-law codes (B, L) int64 -> logits (B, L, n_classes) float.

    Args:
        n_classes: quantisation levels of the input and output (256 = 8-bit mu-law).
        d_model: width of the finest stage; stage i has width d_model * expand**i.
        pool: pooling factor of each stage (e.g. (4, 4): 16000 -> 4000 -> 1000 samples).
        expand: width multiplier per pooling stage (SaShiMi's 2).
        n_layers: Mamba blocks per stage, before pooling and again after unpooling.
        n_center: Mamba blocks at the coarsest stage.
        mixer, d_state, d_conv, mamba_expand, headdim: the core CausalBackbone's mixer settings
            ('mamba' = Mamba-1, 'mamba2' = Mamba-2/SSD).
        n_conditions: number of labels for class conditioning (10 digits), 0 for an unconditional model. A label
            embedding is added to the input of every stage.
        backend: the ops backend ('auto', 'torch', 'triton', ...).
    Raises ConfigError for inconsistent settings.
    """

    def __init__(self, n_classes: int = 256, d_model: int = 64, pool: tuple[int, ...] = (4, 4), expand: int = 2,
                 n_layers: int = 4, n_center: int | None = None, mixer: str = "mamba", d_state: int = 16,
                 d_conv: int = 4, mamba_expand: int = 2, headdim: int = 32, n_conditions: int = 0,
                 backend: str = "auto"):
        super().__init__()
        pool = tuple(int(p) for p in pool)
        if any(p < 2 for p in pool):
            raise ConfigError(f"SaShiMiMamba: pool={pool}; expected factors >= 2 (or an empty tuple for no pooling)")
        if n_layers < 1 or (n_center is not None and n_center < 1):
            raise ConfigError(f"SaShiMiMamba: n_layers={n_layers}, n_center={n_center}; expected >= 1")
        if n_conditions < 0:
            raise ConfigError(f"SaShiMiMamba: n_conditions={n_conditions}; expected >= 0")
        self.n_classes, self.pool, self.n_conditions = n_classes, pool, n_conditions
        self.start_code = n_classes  # an extra input symbol: "no previous sample"
        self.widths = [d_model * expand ** i for i in range(len(pool) + 1)]
        self.period = math.prod(pool)

        def stack(d, n):
            return CausalBackbone(d_model=d, n_layer=n, mixer=mixer, d_state=d_state, d_conv=d_conv,
                                  expand=mamba_expand, headdim=headdim, backend=backend)

        self.embed = nn.Embedding(n_classes + 1, d_model)
        self.down = nn.ModuleList([stack(self.widths[i], n_layers) for i in range(len(pool))])
        self.down_pool = nn.ModuleList([DownPool(self.widths[i], self.widths[i + 1], p) for i, p in enumerate(pool)])
        self.center = stack(self.widths[-1], n_center or n_layers)
        self.up_pool = nn.ModuleList([UpPool(self.widths[i + 1], self.widths[i], p) for i, p in enumerate(pool)])
        self.up = nn.ModuleList([stack(self.widths[i], n_layers) for i in range(len(pool))])
        self.cond = nn.ModuleList([nn.Embedding(n_conditions, d) for d in self.widths]) if n_conditions else None
        self.head = QuantizedHead(d_model, n_classes)

    # ---- parallel (training) path -------------------------------------------------------------------------
    def _check(self, codes, labels):
        if codes.dim() != 2 or codes.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ShapeError(f"SaShiMiMamba: codes have shape {tuple(codes.shape)} dtype {codes.dtype}; "
                             f"expected (batch, length) integer mu-law codes")
        if self.cond is not None and (labels is None or labels.shape != (codes.shape[0],)):
            raise ShapeError(f"SaShiMiMamba: a class-conditional model needs labels of shape ({codes.shape[0]},); "
                             f"got {None if labels is None else tuple(labels.shape)}")
        if not torch.compiler.is_compiling() and codes.numel():  # an embedding lookup out of range fails deep in
            lo, hi = torch.stack(torch.aminmax(codes)).tolist()  # torch (a device assert on CUDA); one sync
            if lo < 0 or hi >= self.n_classes:
                raise ShapeError(f"SaShiMiMamba: codes span [{lo}, {hi}]; expected mu-law codes in "
                                 f"[0, {self.n_classes})")
        if labels is not None and not torch.compiler.is_compiling():
            self._check_labels("SaShiMiMamba", labels, codes.shape[0])

    def _check_labels(self, where, labels, batch):
        if self.cond is None:  # labels would be ignored: a silently unconditional sample
            raise ShapeError(f"{where}: got labels, but this model is unconditional (n_conditions=0); expected none")
        if labels.is_floating_point() or labels.is_complex() or labels.shape != (batch,):
            raise ShapeError(f"{where}: labels have shape {tuple(labels.shape)} dtype {labels.dtype}; expected "
                             f"({batch},) integer labels")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_conditions):
            raise ShapeError(f"{where}: labels span [{int(labels.min())}, {int(labels.max())}]; expected labels in "
                             f"[0, {self.n_conditions})")

    def _add_cond(self, x, i, labels):
        if self.cond is None:
            return x
        if labels is None:
            raise ShapeError("SaShiMiMamba: this model is class-conditional (n_conditions > 0); expected labels (batch,)")
        c = self.cond[i](labels)
        return x + (c[:, None] if x.dim() == 3 else c)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, L) int in [0, n_classes) -> logits (B, L, n_classes); logits[:, t] predicts codes[:, t] from
        codes[:, :t]. labels (B,) int64 for a class-conditional model. Any L: the sequence is zero-padded at its
        end to a multiple of prod(pool) (causality makes the padding invisible to earlier positions)."""
        self._check(codes, labels)
        b, length = codes.shape
        inputs = torch.cat([codes.new_full((b, 1), self.start_code), codes[:, :-1]], dim=1).long()
        pad = -length % self.period
        if pad:
            inputs = torch.nn.functional.pad(inputs, (0, pad), value=self.start_code)
        x = self.embed(inputs)
        skips = []
        for i in range(len(self.pool)):
            x = self.down[i](self._add_cond(x, i, labels))
            skips.append(x)
            x = self.down_pool[i](x)
        x = self.center(self._add_cond(x, len(self.pool), labels))
        for i in reversed(range(len(self.pool))):
            x = self.up[i](self.up_pool[i](x) + skips[i])
        return self.head(x[:, :length])

    def nll(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL of codes (B, L) in bits per sample."""
        return nll_bits_per_sample(self(codes, labels), codes.long())

    # ---- recurrent (generation) path ----------------------------------------------------------------------
    def allocate_cache(self, batch: int, device=None, dtype=torch.float32) -> UNetCache:
        """Zeroed decoding state for ``batch`` streams (see :class:`UNetCache`)."""
        device = device if device is not None else self.embed.weight.device
        return UNetCache([s.allocate_cache(batch, device, dtype) for s in self.down],
                         [s.allocate_cache(batch, device, dtype) for s in self.up],
                         self.center.allocate_cache(batch, device, dtype), self.widths[:-1], self.pool, batch,
                         device, dtype)

    def _step_stage(self, i, x, cache: UNetCache, labels, t):
        """Stage i at its own time t: x (B, d_i) -> output (B, d_i)."""
        if i == len(self.pool):
            return self.center.step(self._add_cond(x, i, labels), cache.center)
        p = self.pool[i]
        phase = t % p
        h = self.down[i].step(self._add_cond(x, i, labels), cache.down[i])
        down_buf, up_buf = cache.buffers_of(i)
        y = up_buf[:, phase] + h  # the UpPool output due now was made one coarse step ago
        down_buf[:, phase].copy_(h)
        if phase == p - 1:  # p fine positions collected: one coarse step
            coarse = self._step_stage(i + 1, self.down_pool[i].linear(down_buf.reshape(down_buf.shape[0], -1)),
                                      cache, labels, t // p)
            up_buf.copy_(self.up_pool[i].linear(coarse).reshape(up_buf.shape))
        return self.up[i].step(y, cache.up[i])

    @torch.no_grad()
    def step(self, prev_codes: torch.Tensor, cache: UNetCache, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One sample for every stream: prev_codes (B,) int64, the previous sample's code (``start_code`` at the
        first step) -> logits (B, n_classes) for the next sample. Advances ``cache`` in place; equals
        ``forward(...)[:, t]`` on the same prefix."""
        if prev_codes.shape != (cache.batch,):
            raise ShapeError(f"SaShiMiMamba.step: prev_codes has shape {tuple(prev_codes.shape)}, "
                             f"expected ({cache.batch},)")
        x = self.embed(prev_codes.long())
        out = self._step_stage(0, x, cache, labels, cache.t)
        cache.t += 1
        return self.head(out)

    @torch.no_grad()
    def generate(self, batch: int, length: int, labels: torch.Tensor | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, cuda_graph: bool = False,
                 callback=None) -> torch.Tensor:
        """Sample ``batch`` clips of ``length`` codes -> (batch, length) int64, through ``step`` (never re-running
        the prefix). ``callback(n_done)`` is called every ``period`` samples (progress bars).

        ``cuda_graph`` (CUDA only): capture ``period`` = prod(pool) consecutive steps, sampling included, as one
        CUDA graph and replay it length/period times; every stage's schedule repeats with that period, so one
        graph covers them all. Sampling then uses the default CUDA generator (seed it with torch.manual_seed).
        """
        device = self.embed.weight.device
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1 \
                or isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
            raise ShapeError(f"SaShiMiMamba.generate: batch={batch!r}, length={length!r}; expected an integer batch "
                             f">= 1 and length >= 0")
        # NaN would make every logit NaN and argmax return code 0: a silent full-scale clip, not an error
        if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature >= 0):
            raise ShapeError(f"SaShiMiMamba.generate: temperature={temperature!r}; expected a finite number >= 0 "
                             f"(0 = greedy)")
        if not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
            raise ShapeError(f"SaShiMiMamba.generate: top_p={top_p!r}; expected a number in (0, 1]")
        if self.cond is not None and labels is None:
            raise ShapeError("SaShiMiMamba.generate: this model is class-conditional; pass labels (batch,)")
        if labels is not None:
            self._check_labels("SaShiMiMamba.generate", torch.as_tensor(labels), batch)
            labels = torch.as_tensor(labels).to(device).long().reshape(batch)
        cache = self.allocate_cache(batch, device)
        prev = torch.full((batch,), self.start_code, dtype=torch.long, device=device)
        out = torch.empty(batch, length, dtype=torch.long, device=device)
        P = self.period

        def one_period(block):
            for k in range(P):
                nxt = sample_next(self.step(prev, cache, labels), temperature, top_p,
                                  None if cuda_graph else generator)
                prev.copy_(nxt)
                block[:, k].copy_(nxt)

        t = 0
        if cuda_graph and device.type == "cuda" and length >= P:
            block = torch.empty(batch, P, dtype=torch.long, device=device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside capture (allocator, cuBLAS handles)
                one_period(block)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                one_period(block)
            cache.reset()
            prev.fill_(self.start_code)
            while t + P <= length:
                graph.replay()
                out[:, t:t + P].copy_(block)
                t += P
                if callback is not None:
                    callback(t)
            cache.t = t  # the captured steps do not advance the Python-side counter
        while t < length:
            n = min(P, length - t)
            for k in range(n):
                nxt = sample_next(self.step(prev, cache, labels), temperature, top_p, generator)
                prev.copy_(nxt)
                out[:, t + k] = nxt
            t += n
            if callback is not None:
                callback(t)
        return out
