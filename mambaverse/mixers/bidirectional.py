"""Bidirectional Mamba: Caduceus' BiMamba (Schiff et al. 2024) and Vim's bimamba v2 (Zhu et al. 2024)."""
from __future__ import annotations

import warnings

import torch.nn as nn

from ..errors import ConfigError
from ..ops import bidirectional_scan, selective_scan
from .base import SSMDirections, check_hidden
from .defaults import D_CONV, D_STATE, EXPAND
from .ssm import SelectiveSSM

#: How the two directions' outputs combine: the names of ``bidirectional_scan``'s ``combine``.
COMBINES = ("add", "multiply")
_OLD_COMBINE_NAMES = {"ew_multiply": "multiply"}  # Caduceus' spelling, kept for old configs


def resolve_combine(combine: str, strategy: str | None, who: str) -> str:
    """The combine mode from ``combine`` and the deprecated ``strategy`` alias; ConfigError if unknown."""
    if strategy is not None:
        warnings.warn(f"{who}: strategy= is deprecated; use combine='add' or 'multiply'", DeprecationWarning,
                      stacklevel=3)
        combine = strategy
    mode = _OLD_COMBINE_NAMES.get(combine, combine)
    if mode not in COMBINES:
        raise ConfigError(f"{who}: combine={combine!r}; expected 'add' or 'multiply'")
    return mode


class BidirectionalMamba(SSMDirections):
    """A forward and a reverse selective scan over the same sequence.  (B, L, d_model) -> (B, L, d_model).

    Args:
        d_model, d_state, d_conv, expand, dt_rank, bias, backend: as for :class:`Mamba`.
        variant: "caduceus": each direction is a whole Mamba block (in_proj, SSM, out_proj); with
            ``tie_projections`` the two share in_proj and out_proj, and the outputs combine after out_proj.
            "vim_v2": one shared in_proj and out_proj, a conv and SSM per direction, and the two gated scan
            outputs averaged before out_proj (Vim's bimamba v2).
        combine: "add" (fwd + rev; the average for vim_v2) or "multiply" (fwd * rev, Caduceus' ew_multiply;
            caduceus only). "ew_multiply" is accepted as the same as "multiply".
        tie_projections: share in_proj/out_proj between the directions (always on for vim_v2).
        strategy: deprecated name of ``combine``.

    The reverse direction never flips activations: its conv and scan run from the end. Carries state
    (``mambaverse.mixers.state``) in both directions.
    Raises ConfigError for an unknown variant or combine, ShapeError for an input that is not (B, L, d_model).
    """

    directions = (False, True)

    def __init__(self, d_model: int, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND,
                 dt_rank: int | None = None, variant: str = "caduceus", combine: str = "add",
                 tie_projections: bool = True, bias: bool = False, backend: str = "auto", strategy: str | None = None):
        super().__init__()
        if variant not in ("caduceus", "vim_v2"):
            raise ConfigError(f"BidirectionalMamba: variant={variant!r}; expected 'caduceus' or 'vim_v2'")
        combine = resolve_combine(combine, strategy, "BidirectionalMamba")
        if variant == "vim_v2" and combine != "add":
            raise ConfigError("BidirectionalMamba: variant 'vim_v2' combines by averaging; expected combine='add'")
        self.d_model, self.d_inner = d_model, expand * d_model
        self.variant, self.combine_mode, self.backend = variant, combine, backend
        self.tie_projections = tie_projections or variant == "vim_v2"
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        if not self.tie_projections:
            self.in_proj_rev = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
            self.out_proj_rev = nn.Linear(self.d_inner, d_model, bias=bias)
        self.ssm_fwd = SelectiveSSM(self.d_inner, d_state, d_conv, dt_rank)
        self.ssm_rev = SelectiveSSM(self.d_inner, d_state, d_conv, dt_rank, reverse=True)

    @property
    def strategy(self) -> str:
        """Deprecated name of ``combine_mode``, in Caduceus' spelling ("add" or "ew_multiply")."""
        return "ew_multiply" if self.combine_mode == "multiply" else self.combine_mode

    def _parts(self, reverse):
        proj = self.in_proj_rev if (reverse and not self.tie_projections) else self.in_proj
        return proj, (self.ssm_rev if reverse else self.ssm_fwd)

    def _out_weight(self, reverse):
        return (self.out_proj_rev if reverse and not self.tie_projections else self.out_proj).weight

    @property
    def corrects_state(self) -> bool:
        """A late-entering state's contribution adds to the block output only when the directions add."""
        return self.combine_mode == "add"

    def direction(self, hidden, reverse: bool = False, initial_state=None, return_final_state=False,
                  return_decay=False):
        """One direction's contribution (B, L, d_model), ready for `combine`, with state carrying.

        Forward direction: ``initial_state`` (a MixerState) enters before position 0 and the final state
        leaves after position L-1. Reverse direction: it enters after position L-1 and leaves before
        position 0, so chunks of a long sequence are visited right to left. With tied projections and "add",
        the reverse contribution has no out_proj bias (the bias enters once, with the forward one), so that
        ``combine(direction(h, False), direction(h, True)) == forward(h)``. ``return_decay`` also returns the
        segment's total decay (B, d_inner, d_state) fp32 (see ``mixers.state``)."""
        check_hidden(hidden, self.d_model, "BidirectionalMamba")
        proj, ssm = self._parts(reverse)
        channels = self._channels(hidden)
        x, z = self._xz(hidden, proj, self.d_inner, channels)
        out = ssm(x, z, initial_state, return_final_state, self.backend, return_decay, channels)
        rest = out[1:] if (return_final_state or return_decay) else ()
        y = out[0] if rest else out
        if not self.tie_projections:
            out_proj = self.out_proj_rev if reverse else self.out_proj
            y = self._project_out(y, out_proj.weight, out_proj.bias, channels)
        elif self.combine_mode == "add":
            y = self._project_out(y, self.out_proj.weight, None if reverse else self.out_proj.bias, channels)
        else:
            y = self._project_out(y, self.out_proj.weight, self.out_proj.bias, channels)
        return (y, *rest) if rest else y

    @property
    def additive_scale(self) -> float | None:
        """combine(f, r) == s * (f + r): s (0.5 for vim_v2's average); None when the directions multiply."""
        if self.combine_mode == "multiply":
            return None
        return 0.5 if self.variant == "vim_v2" else 1.0

    def combine(self, fwd, rev):
        """Merge the two contributions of `direction` into the block's output."""
        if self.combine_mode == "multiply":
            return fwd * rev
        return 0.5 * (fwd + rev) if self.variant == "vim_v2" else fwd + rev

    def forward(self, hidden, initial_state=None, return_final_state=False):
        """hidden (B, L, d_model). initial_state: (forward-direction state, reverse-direction state), each a
        MixerState or None; the reverse one enters at the end of the sequence (see `direction`). With
        return_final_state, also returns the pair of states leaving each direction."""
        if initial_state is not None or return_final_state:
            init_f, init_r = initial_state if initial_state is not None else (None, None)
            f = self.direction(hidden, False, init_f, return_final_state)
            r = self.direction(hidden, True, init_r, return_final_state)
            if return_final_state:
                return self.combine(f[0], r[0]), (f[1], r[1])
            return self.combine(f, r)
        check_hidden(hidden, self.d_model, "BidirectionalMamba")
        channels = self._channels(hidden)
        x, z = self._xz(hidden, self.in_proj, self.d_inner, channels)
        fwd, _ = self.ssm_fwd.scan_args(x, backend=self.backend, channels=channels)
        W, bias = self.out_proj.weight, self.out_proj.bias
        if self.tie_projections:  # one gate for both directions: a single fused bidirectional scan
            rev, _ = self.ssm_rev.scan_args(x, backend=self.backend, channels=channels)
            # "multiply" happens after out_proj, so the op returns both directions ("stack") for it
            mode = "add" if self.combine_mode == "add" else "stack"
            pair = {k: (fwd[k], rev[k]) for k in fwd}
            y = bidirectional_scan(**pair, z=z, delta_softplus=True, combine=mode, backend=self.backend)
            if mode == "add":
                y = self._project_out(y, W, bias, channels)
                return 0.5 * y if self.variant == "vim_v2" else y
            return self._project_out(y[0], W, bias, channels) * self._project_out(y[1], W, bias, channels)
        x_r, z_r = self._xz(hidden, self.in_proj_rev, self.d_inner, channels)
        rev, _ = self.ssm_rev.scan_args(x_r, backend=self.backend, channels=channels)
        y_f = self._project_out(selective_scan(**fwd, z=z, delta_softplus=True, backend=self.backend), W, bias,
                                channels)
        y_r = self._project_out(selective_scan(**rev, z=z_r, delta_softplus=True, reverse=True, backend=self.backend),
                                self.out_proj_rev.weight, self.out_proj_rev.bias, channels)
        return self.combine(y_f, y_r)
