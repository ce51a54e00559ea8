"""Chunked, state-carrying training is exact: values and gradients equal the unchunked run."""
import pytest
import torch
import torch.nn as nn

from mambaverse.backbones import BidirectionalBackbone, CausalBackbone, Chunking, RCPSBackbone
from mambaverse.errors import ConfigError, MambaverseError, ShapeError
from mambaverse.long_context import ChunkedBackbone
from mambaverse.mixers import BidirectionalMamba

D, L, CHUNK = 8, 37, 10  # 4 chunks, the last one short


def _grads(module, hidden, weight):
    out = module(hidden)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weight).sum(), [hidden] + params)
    return out.detach(), grads


def _assert_same(ref, got, rtol=1e-4, atol=1e-5):
    (out_r, g_r), (out_g, g_g) = ref, got
    torch.testing.assert_close(out_g, out_r, rtol=rtol, atol=atol)
    assert len(g_r) == len(g_g)
    for a, b in zip(g_r, g_g):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)


def _inputs(seed=0, batch=2, length=L, d=D):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, d, generator=g).requires_grad_(True)
    weight = torch.randn(batch, length, d, generator=g)
    return hidden, weight


@pytest.mark.parametrize("checkpoint_layers", [False, True])
def test_causal_chunked_matches_unchunked(checkpoint_layers):
    torch.manual_seed(0)
    plain = CausalBackbone(D, n_layer=2, backend="torch").train()
    chunked = CausalBackbone(D, n_layer=2, backend="torch", chunk_len=CHUNK, checkpoint_layers=checkpoint_layers)
    chunked.load_state_dict(plain.state_dict())
    chunked.train()
    hidden, weight = _inputs()
    _assert_same(_grads(plain, hidden, weight), _grads(chunked, hidden, weight))


@pytest.mark.parametrize("variant,combine,tie", [("caduceus", "add", True), ("caduceus", "multiply", False),
                                                  ("vim_v2", "add", True)])
def test_bidirectional_chunked_matches_unchunked(variant, combine, tie):
    torch.manual_seed(1)
    bb = BidirectionalBackbone(D, n_layer=2, variant=variant, combine=combine, tie_projections=tie,
                               backend="torch").train()
    hidden, weight = _inputs(1)
    ref = _grads(bb, hidden, weight)
    _assert_same(ref, _grads(ChunkedBackbone(bb, CHUNK).train(), hidden, weight))


def test_rcps_chunk_len_flag_matches_unchunked():
    torch.manual_seed(2)
    plain = RCPSBackbone(D, n_layer=2, backend="torch").train()
    chunked = RCPSBackbone(D, n_layer=2, backend="torch", chunk_len=CHUNK).train()
    chunked.load_state_dict(plain.state_dict())
    hidden, weight = _inputs(2)
    _assert_same(_grads(plain, hidden, weight), _grads(chunked, hidden, weight))


def test_bidirectional_mixer_state_carrying_splits_exactly():
    """Two calls that pass states (forward state left to right, reverse state right to left) equal one call."""
    torch.manual_seed(3)
    m = BidirectionalMamba(D, tie_projections=False, bias=True, backend="torch")
    h = torch.randn(2, 21, D)
    a, b = h[:, :9], h[:, 9:]
    f_a, st_f = m.direction(a, False, None, True)
    f_b = m.direction(b, False, st_f)
    r_b, st_r = m.direction(b, True, None, True)
    r_a = m.direction(a, True, st_r)
    got = torch.cat([m.combine(f_a, r_a), m.combine(f_b, r_b)], dim=1)
    torch.testing.assert_close(got, m(h), rtol=1e-4, atol=1e-5)
    out, (fin_f, fin_r) = m(h, return_final_state=True)
    torch.testing.assert_close(out, m(h), rtol=1e-4, atol=1e-5)
    assert fin_f[1].shape == (2, m.d_inner, 16) and fin_r[0].shape == (2, m.d_inner, 3)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_chunking_bounds_retained_memory(kind):
    """The memory forward keeps for backward (storages, so that views count in full) grows with the
    length unchunked, and chunked is about the input itself plus small boundary states."""
    torch.manual_seed(4)
    cls = CausalBackbone if kind == "causal" else BidirectionalBackbone
    bb = cls(16, n_layer=2, backend="torch").train()
    hidden = torch.randn(1, 1024, 16, requires_grad=True)
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    def kept(fn):
        storages.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        return sum(storages.values()), out

    full, _ = kept(lambda: bb(hidden))
    chunked, _ = kept(lambda: ChunkedBackbone(bb, 256)(hidden))
    input_bytes = hidden.numel() * hidden.element_size()
    # causal keeps the input's chunks and the states, and the last chunk's activations (backward starts
    # there: not recomputed); bidirectional (layer-major) also each later layer's input and the final norm's
    if kind == "causal":
        last = 256 / 1024 * full
        budget = 2 * input_bytes + last
        everything, _ = kept(lambda: bb(hidden, chunking=Chunking(256, recompute_last=True)))
        assert everything < 2 * input_bytes, (everything, input_bytes)  # recompute_last: inputs and states only
    else:
        budget = (2 + len(bb.layers)) * input_bytes
    assert chunked < budget, (chunked, budget)
    assert chunked < full / 2 if kind == "causal" else chunked < full / 4, (chunked, full)


def test_eval_and_no_grad_chunked_match():
    torch.manual_seed(5)
    bb = BidirectionalBackbone(D, n_layer=1, backend="torch").eval()
    hidden, _ = _inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(ChunkedBackbone(bb, CHUNK)(hidden), bb(hidden), rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_mambaverse_errors():
    with pytest.raises(ConfigError):
        CausalBackbone(D, n_layer=1, chunk_len=-3)
    with pytest.raises(ConfigError):
        CausalBackbone(D, n_layer=1, mixer="mamba2", headdim=4, chunk_len=8)
    with pytest.raises(ConfigError):
        ChunkedBackbone(nn.Linear(D, D), 8)
    with pytest.raises(ShapeError):
        ChunkedBackbone(CausalBackbone(D, n_layer=1), 8)(torch.randn(1, 5, D + 1))
    assert issubclass(ConfigError, MambaverseError)


# ----------------------------------------------------------------------------- sequence-length warmup
import lightning.pytorch as pl  # noqa: E402

from mambaverse.training import SequenceLengthWarmup  # noqa: E402


class _LengthRecorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].shape[1])
        return (self.w - batch["input_ids"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Sequences(pl.LightningDataModule):
    """Yields (1, seq_len) sequences; implements the set_seq_len hook the callback documents."""

    def __init__(self, seq_len, hook=True, n=2):
        super().__init__()
        self.seq_len, self.n, self.calls = seq_len, n, []
        if hook:
            self.set_seq_len = self._set

    def _set(self, length):
        self.calls.append(length)
        self.seq_len = length

    def train_dataloader(self):
        return torch.utils.data.DataLoader([{"input_ids": torch.arange(self.seq_len)}] * self.n, batch_size=1)


def _fit(module, dm, cb, **kw):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cb], **kw)
    trainer.fit(module, datamodule=dm)
    return trainer


def test_warmup_schedule_doubles_to_target():
    cb = SequenceLengthWarmup(target_len=20, start_len=4, every=2)
    assert [cb.length_at(t) for t in range(8)] == [4, 4, 8, 8, 16, 16, 20, 20]
    cb = SequenceLengthWarmup(target_len=16, start_len=4, extra=1)
    assert [cb.length_at(t) for t in range(4)] == [5, 9, 17, 17]


def test_warmup_datamodule_hook_follows_epochs():
    module, dm = _LengthRecorder(), _Sequences(16)
    _fit(module, dm, SequenceLengthWarmup(target_len=16, start_len=4), max_epochs=4)
    assert module.seen == [4, 4, 8, 8, 16, 16, 16, 16]
    assert dm.calls[:3] == [4, 8, 16]


def test_warmup_crop_per_step_any_datamodule():
    module, dm = _LengthRecorder(), _Sequences(16, hook=False, n=5)
    _fit(module, dm, SequenceLengthWarmup(target_len=16, start_len=4, interval="step", random_crop=True),
         max_steps=5)
    assert module.seen == [4, 8, 16, 16, 16]


def test_warmup_bad_config_raises():
    with pytest.raises(ConfigError):
        SequenceLengthWarmup(target_len=8, start_len=16)
    with pytest.raises(ConfigError):
        SequenceLengthWarmup(target_len=8, interval="minute")
    with pytest.raises(ConfigError):
        SequenceLengthWarmup(target_len=8, start_len=2, mode="datamodule", interval="step")


# ----------------------------------------------------------------------------- the mixers' state API
@pytest.mark.parametrize("reverse", [False, True])
def test_mixer_transfer_is_the_affine_map_of_the_segment(reverse):
    """transfer(): the SSM state leaving is decay * h_in + (state leaving from zero), and conv_state_from()
    is the conv part of the state leaving; both without computing outputs."""
    from mambaverse.mixers import MixerState

    torch.manual_seed(6)
    m = BidirectionalMamba(D, tie_projections=False, backend="torch")
    h = torch.randn(2, 13, D)
    h_in = torch.randn(2, m.d_inner, 16)
    conv_in = torch.randn(2, m.d_inner, 3)
    decay, from_zero = m.transfer(h, reverse, MixerState(conv_in, None))
    _, with_state = m.direction(h, reverse, MixerState(conv_in, h_in), return_final_state=True)
    torch.testing.assert_close(decay * h_in + from_zero.ssm, with_state.ssm, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(from_zero.conv, with_state.conv)
    torch.testing.assert_close(m.conv_state_from(h, reverse), with_state.conv)
    assert decay.shape == (2, m.d_inner, 16) and bool(((decay > 0) & (decay < 1)).all())
