"""Mixers, backbones, wrappers, registry and persistence: each checked by its defining property."""
import copy
import json

import pytest
import torch

import mambaverse as mv
from mambaverse.mixers import BidirectionalMamba, Mamba
from mambaverse.persistence import CONFIG, WEIGHTS
from mambaverse.patch_scan import route_order
from mambaverse.rc import PostHocConjoin, rc_features
from mambaverse.ops import cross_scan


def close(a, b, tol=1e-5):
    return ((a - b).norm() / max(b.norm().item(), 1e-6)).item() < tol


@pytest.mark.parametrize("preset", ["causal_tiny", "causal_mamba2_tiny"])
def test_step_matches_parallel_forward(preset):
    model = mv.create_model(preset).eval()
    x = torch.randn(2, 25, model.d_model)
    parallel = model(x)
    cache = model.allocate_cache(2)
    stepped = torch.stack([model.step(x[:, t], cache) for t in range(25)], dim=1)
    assert close(stepped, parallel)
    assert cache.seqlen_offset == 25 and isinstance(cache, torch.nn.Module)
    assert cache.reset().layers[0].ssm_state.abs().sum() == 0


def test_prompt_then_step_continues_the_parallel_forward():
    """Prefill with the parallel forward, load the final states into the cache, then step on."""
    model = mv.create_model("causal_tiny").eval()
    x = torch.randn(1, 30, model.d_model)
    full = model(x)
    _, states = model(x[:, :20], return_final_states=True)
    cache = model.allocate_cache(1)
    for layer_cache, (conv_state, ssm_state) in zip(cache.layers, states):
        layer_cache.update(conv_state, ssm_state)
    tail = torch.stack([model.step(x[:, t], cache) for t in range(20, 30)], dim=1)
    assert close(tail, full[:, 20:])


def test_backbone_state_carry_equals_one_pass():
    model = mv.create_model("causal_tiny")
    x = torch.randn(2, 40, model.d_model)
    whole = model(x)
    first, states = model(x[:, :17], return_final_states=True)
    second = model(x[:, 17:], initial_states=states)
    assert close(torch.cat([first, second], 1), whole)


def _causal_copy(bi: BidirectionalMamba, direction: str) -> Mamba:
    """A causal Mamba block holding one direction's parameters of a bidirectional mixer."""
    mamba = Mamba(bi.d_model, bi.ssm_fwd.d_state, bi.ssm_fwd.d_conv, bi.d_inner // bi.d_model)
    ssm = bi.ssm_fwd if direction == "fwd" else bi.ssm_rev
    mamba.ssm.load_state_dict(ssm.state_dict())
    untied = direction == "rev" and not bi.tie_projections
    mamba.in_proj = bi.in_proj_rev if untied else bi.in_proj
    mamba.out_proj = bi.out_proj_rev if untied else bi.out_proj
    return mamba


@pytest.mark.parametrize("variant, combine, tie", [("caduceus", "add", True), ("caduceus", "add", False),
                                                    ("caduceus", "multiply", True),
                                                    ("caduceus", "multiply", False), ("vim_v2", "add", True)])
def test_bidirectional_equals_explicit_flip_composition(variant, combine, tie):
    bi = BidirectionalMamba(16, d_state=4, variant=variant, combine=combine, tie_projections=tie)
    x = torch.randn(2, 21, 16)
    fwd = _causal_copy(bi, "fwd")(x)
    rev = _causal_copy(bi, "rev")(x.flip(1)).flip(1)
    want = {"add": fwd + rev, "multiply": fwd * rev}[combine]
    if variant == "vim_v2":
        want = 0.5 * want
    assert close(bi(x), want)


def test_bidirectional_backbone_flip_symmetry():
    """Flipping the input flips the output once the directions' parameters are swapped."""
    model = mv.create_model("bimamba_tiny", n_layer=1)
    swapped = copy.deepcopy(model)
    for layer, layer_s in zip(model.layers, swapped.layers):
        layer_s.mixer.ssm_fwd.load_state_dict(layer.mixer.ssm_rev.state_dict())
        layer_s.mixer.ssm_rev.load_state_dict(layer.mixer.ssm_fwd.state_dict())
    x = torch.randn(2, 19, model.d_model)
    assert close(model(x.flip(1)), swapped(x).flip(1))


def test_rcps_backbone_is_rc_equivariant():
    model = mv.create_model("caduceus_ps_tiny")
    h = torch.randn(3, 33, model.d_model)
    assert close(model(rc_features(h)), rc_features(model(h)), 1e-5)
    # a plain bidirectional backbone is not: the property is not vacuous
    plain = mv.create_model("bimamba_tiny")
    assert not close(plain(rc_features(h)), rc_features(plain(h)), 1e-2)


def test_post_hoc_conjoin_is_rc_invariant_for_sequence_outputs():
    complement = torch.tensor([3, 2, 1, 0, 4])  # A C G T N -> T G C A N
    embed = torch.nn.Embedding(5, 16)
    backbone = mv.create_model("bimamba_tiny", d_model=16, n_layer=1)
    model = torch.nn.Sequential(embed, backbone, torch.nn.Linear(16, 3))

    def rc_tokens(x):
        return complement[x].flip(1)

    conjoined = PostHocConjoin(model, rc_tokens, rc_output=lambda y: y.flip(1))
    x = torch.randint(0, 5, (2, 23))
    assert close(conjoined(rc_tokens(x)), conjoined(x).flip(1))


def test_route_order_matches_cross_scan():
    t = torch.randn(2, 3, 4, 5)
    per_route = t.unsqueeze(1).expand(2, 4, 3, 4, 5)
    assert torch.equal(route_order(per_route), cross_scan(t))


@pytest.mark.parametrize("name", ["vim_tiny", "vmamba_tiny"])
def test_patch_scan_backbones_follow_timm_interface(name):
    model = mv.create_model(name)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    assert model.forward_spatial(x).shape[:2] == (2, model.num_features)
    logits.sum().backward()  # the whole graph is differentiable
    with pytest.raises(mv.ShapeError, match="multiples of patch_size"):
        model(torch.randn(1, 3, 30, 30))


def test_vim_class_token_sits_in_the_middle():
    model = mv.create_model("vim_tiny")
    features = model.forward_features(torch.randn(1, 3, 32, 32))
    assert features.shape[1] == 65 and model.cls_index == 32


@pytest.mark.parametrize("name", ["causal_tiny", "causal_mamba2_tiny", "bimamba_tiny", "caduceus_ps_tiny",
                                  "vim_tiny", "vmamba_tiny"])
def test_save_load_round_trip(tmp_path, name):
    model = mv.create_model(name, **({"n_layer": 1} if "tiny" in name and "v" not in name[:2] else {})).eval()
    mv.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG, WEIGHTS])
    loaded = mv.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 32, 32) if name.startswith("v") else torch.randn(1, 12, model.d_model)
    assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config


def test_from_pretrained_refuses_unknown_builders_and_bad_files(tmp_path):
    mv.save_pretrained(mv.create_model("causal_tiny"), tmp_path)
    config = json.loads((tmp_path / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps({**config, "builder": "os.system"}))
    with pytest.raises(mv.ConfigError, match="unknown builder 'os.system'"):
        mv.from_pretrained(tmp_path)
    (tmp_path / CONFIG).write_text("builder: [unclosed")
    with pytest.raises(mv.ConfigError, match="not valid JSON"):
        mv.from_pretrained(tmp_path)
    with pytest.raises(mv.ConfigError, match="missing"):
        mv.from_pretrained(tmp_path / "nowhere")


def test_from_pretrained_names_bad_keys_overrides_and_weights(tmp_path):
    mv.save_pretrained(mv.create_model("causal_tiny"), tmp_path)
    with pytest.raises(mv.ConfigError, match=r"unknown override\(s\) \['widht'\]"):
        mv.from_pretrained(tmp_path, widht=3)
    with pytest.raises(mv.ConfigError, match="model.safetensors cannot be loaded"):
        mv.from_pretrained(tmp_path, d_model=32)  # weights of another width
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(mv.ConfigError, match="model.safetensors cannot be loaded") as info:
        mv.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)
    config = json.loads((tmp_path / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(mv.ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        mv.from_pretrained(tmp_path)


def test_registry_lists_filters_and_rejects():
    assert {"causal_tiny", "bimamba_tiny", "caduceus_ps_tiny", "vim_tiny", "vmamba_tiny"} <= set(mv.list_models())
    assert mv.list_models("vim*") == sorted(n for n in mv.list_models() if n.startswith("vim"))
    assert mv.create_model("causal_tiny", n_layer=3).config["n_layer"] == 3
    with pytest.raises(mv.ConfigError, match="unknown model preset 'causal_huge'"):
        mv.create_model("causal_huge")
    with pytest.raises(mv.ConfigError, match=r"unknown override\(s\) \['widht'\]"):
        mv.create_model("causal_tiny", widht=3)
    with pytest.raises(mv.ShapeError, match="expected \\(batch, length, d_model=64\\)"):
        mv.create_model("causal_tiny")(torch.randn(2, 5, 32))


def test_mamba2_mixer_chunked_path_matches_the_naive_scan():
    block = mv.Mamba2(32, d_state=8, headdim=16, chunk_size=8)
    x = torch.randn(2, 29, 32, requires_grad=True)
    chunked = block(x)
    block.backend = "naive"
    naive = block(x)
    assert close(chunked, naive)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    (g_naive,) = torch.autograd.grad(naive.square().sum(), x)
    assert close(g_chunked, g_naive, 1e-4)


def test_deprecated_strategy_alias_builds_the_same_model():
    """Configs written before `combine` (strategy="ew_multiply") still build, with a DeprecationWarning."""
    torch.manual_seed(0)
    new = mv.BidirectionalBackbone(16, n_layer=1, combine="multiply")
    with pytest.warns(DeprecationWarning, match="combine"):
        old = mv.BidirectionalBackbone(16, n_layer=1, strategy="ew_multiply")
    old.load_state_dict(new.state_dict())
    x = torch.randn(2, 7, 16)
    assert torch.equal(old(x), new(x)) and old.layers[0].mixer.combine_mode == "multiply"
    with pytest.raises(mv.ConfigError, match="combine='sum'"):
        mv.BidirectionalBackbone(16, n_layer=1, combine="sum")


class _Conv1Mixer(torch.nn.Module):
    """A mixer no backbone knows about: a depthwise causal conv (the backbone needs no edit to use it)."""

    def __init__(self, d_model, width=3):
        super().__init__()
        self.conv = torch.nn.Conv1d(d_model, d_model, width, groups=d_model, padding=width - 1)

    def forward(self, hidden):
        return self.conv(hidden.transpose(1, 2))[..., : hidden.shape[1]].transpose(1, 2)


def test_backbone_takes_a_mixer_factory_and_mixer_options():
    model = mv.CausalBackbone(16, n_layer=2, mixer=_Conv1Mixer, mixer_options={"width": 5})
    assert [layer.mixer.conv.kernel_size for layer in model.layers] == [(5,), (5,)]
    x = torch.randn(1, 9, 16)
    y = model(x)
    x2 = x.clone()
    x2[:, 5:] += 1.0  # causal: changing the future leaves the past alone
    assert torch.equal(model(x2)[:, :5], y[:, :5])
    m2 = mv.CausalBackbone(32, n_layer=1, mixer="mamba2", d_state=8, mixer_options={"headdim": 8, "chunk_size": 4})
    assert m2.layers[0].mixer.nheads == 8 and m2.layers[0].mixer.chunk_size == 4
    with pytest.raises(mv.ConfigError, match="mixer_options \\['headdimm'\\]"):
        mv.CausalBackbone(32, n_layer=1, mixer="mamba2", mixer_options={"headdimm": 8})
    with pytest.raises(mv.ConfigError, match="chunk_len needs a mixer that carries state"):
        mv.CausalBackbone(16, n_layer=1, mixer=_Conv1Mixer, chunk_len=4)


# ----------------------------------------------------------------------------- channel-major layout (CUDA's)
def _grads_of(m, h, w, **kw):
    x = h.clone().requires_grad_(True)
    out = m(x, **kw)
    y = out[0] if isinstance(out, tuple) else out
    loss = (y * w).sum()
    if isinstance(out, tuple):  # the state leaving carries gradient too
        loss = loss + out[1].ssm.square().sum() + out[1].conv.square().sum()
    return y, torch.autograd.grad(loss, [x] + list(m.parameters()))


def _same_in_both_layouts(m, h, **kw):
    rows, chans = copy.deepcopy(m), copy.deepcopy(m)
    rows.layout, chans.layout = "rows", "channels"
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(7))
    y1, g1 = _grads_of(rows, h, w, **kw)
    y2, g2 = _grads_of(chans, h, w, **kw)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip([("input", None)] + list(m.named_parameters()), g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda s, n=name: f"grad of {n}: {s}")


@pytest.mark.parametrize("block", ["mamba", "mamba_state", "caduceus_add", "caduceus_multiply", "untied", "vim_v2",
                                   "mamba2"])
def test_channel_major_layout_matches_rows(block):
    """The layout CUDA runs (in_proj as W @ X^T, no transposes through the block) gives the CPU layout's
    outputs and gradients, state API included."""
    torch.manual_seed(11)
    h = torch.randn(2, 13, 8)
    if block.startswith("mamba_state") or block == "mamba":
        m = Mamba(8, d_state=4)
        kw = {}
        if block == "mamba_state":
            kw = dict(initial_state=mv.mixers.MixerState(torch.randn(2, 16, 3), torch.randn(2, 16, 4)),
                      return_final_state=True)
        _same_in_both_layouts(m, h, **kw)
    elif block == "mamba2":
        _same_in_both_layouts(mv.mixers.Mamba2(8, d_state=4, headdim=4, chunk_size=4), h)
    else:
        variant = "vim_v2" if block == "vim_v2" else "caduceus"
        combine = "multiply" if block == "caduceus_multiply" else "add"
        _same_in_both_layouts(BidirectionalMamba(8, d_state=4, variant=variant, combine=combine,
                                                 tie_projections=block != "untied"), h)


def test_channel_major_state_api_matches_rows():
    """transfer, state_contribution and conv_state_from agree between the two layouts."""
    torch.manual_seed(12)
    m = BidirectionalMamba(8, d_state=4)
    h, h_in = torch.randn(2, 11, 8), torch.randn(2, 16, 4)
    rows, chans = copy.deepcopy(m), copy.deepcopy(m)
    rows.layout, chans.layout = "rows", "channels"
    for rev in (False, True):
        (d1, s1), (d2, s2) = rows.transfer(h, rev), chans.transfer(h, rev)
        for a, b in ((d1, d2), (s1.conv, s2.conv), (s1.ssm, s2.ssm)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chans.state_contribution(h, h_in, rev), rows.state_contribution(h, h_in, rev),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chans.conv_state_from(h, rev), rows.conv_state_from(h, rev))
    with pytest.raises(mv.errors.ConfigError, match="layout"):
        bad = copy.deepcopy(m)
        bad.layout = "columns"
        bad(h)


def test_channel_major_block_copies_nothing_and_keeps_bf16_gemms():
    """With layout-preserving scan and conv stand-ins (what mamba-ssm's kernels do: outputs and gradients
    allocated like their inputs), the channel-major block hands the scan and the conv step-contiguous
    tensors and gradients, runs no copy/cat/contiguous on a (B, d_inner, L) tensor, and under bf16 autocast
    casts its input once and runs every GEMM in bf16. (Stand-ins: the real kernels need CUDA.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from mambaverse.ops.dispatch import ALL_DTYPES, Backend, register_backend, unregister_backend

    seen = []

    class Scan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, B, C, z):
            ctx.save_for_backward(u, delta, B, C, z)
            return delta * 1.0

        @staticmethod
        def backward(ctx, g):
            seen.append(g.stride(-1))
            return tuple(torch.empty_like(t) for t in ctx.saved_tensors)

    class Conv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            seen.append(g.stride(-1))
            return g * 1.0

    def scan(u, delta, A, B, C, D=None, z=None, *args):
        seen.extend(t.stride(-1) for t in (u, delta, B, C, z))
        return Scan.apply(u, delta, B, C, z)

    def conv(x, *args):
        seen.append(x.stride(-1))
        return Conv.apply(x)

    class Log(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            big = [t for t in torch.utils._pytree.tree_leaves((args, out)) if isinstance(t, torch.Tensor)
                   and t.numel() >= b * d_inner * l]
            if big:
                self.ops.append((func.__name__, [t.dtype for t in big]))
            return out

    register_backend(Backend("selective_scan", "stand_in", scan, frozenset(), ALL_DTYPES, lambda dev: True, {}))
    register_backend(Backend("causal_conv1d", "stand_in", conv, frozenset(), ALL_DTYPES, lambda dev: True,
                             {"cpu": -1}))
    try:
        b, l, d_model = 2, 64, 16
        m = Mamba(d_model, d_state=4, dt_rank=4, backend="stand_in")
        m.layout = "channels"
        d_inner = m.d_inner
        h = torch.randn(b, l, d_model, requires_grad=True)
        with Log() as log:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = m(h)
            y.float().sum().backward()
    finally:
        unregister_backend("selective_scan", "stand_in")
        unregister_backend("causal_conv1d", "stand_in")
    assert seen and all(s == 1 for s in seen), seen  # every scan/conv input and gradient is step-contiguous
    names = [n for n, _ in log.ops]
    assert not {"cat", "clone", "contiguous"} & {n.split(".")[0] for n in names}, names
    copies = [n for n in names if n.startswith("_to_copy") or n.startswith("copy_")]
    assert len(copies) <= 1, names  # the input's one cast to bf16
    gemms = [dt for n, dt in log.ops if n.split(".")[0] in ("mm", "addmm")]
    assert len(gemms) >= 8 and all(all(t == torch.bfloat16 for t in dts) for dts in gemms), gemms


@pytest.mark.parametrize("layout", ["channel_major", "channel_last"])
def test_triton_conv_reads_and_writes_any_layout_in_place(layout):
    """The Triton conv kernel (interpreter) reads a channel-major or channel-last x in place, writes y and dx
    in x's layout, and matches the torch conv with state and in reverse."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 on CPU")
    from mambaverse.kernels import causal_conv1d_triton
    from mambaverse.ops.causal_conv1d import causal_conv1d_torch

    g = torch.Generator().manual_seed(5)
    b, d, l, k = 2, 5, 21, 4
    for reverse in (False, True):
        if layout == "channel_major":
            x = torch.randn(d, b, l, generator=g).transpose(0, 1).requires_grad_(True)
        else:
            x = torch.randn(b, l, d, generator=g).transpose(1, 2).requires_grad_(True)
        w, bias = torch.randn(d, k, generator=g), torch.randn(d, generator=g)
        s0 = torch.randn(b, d, k - 1, generator=g)
        y, _ = causal_conv1d_triton(x, w, bias, "silu", reverse, s0, True)
        want = causal_conv1d_torch(x.detach(), w, bias, "silu", reverse, s0)
        assert y.stride() == x.stride()
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
        seed = torch.randn(b, d, l, generator=g)
        (dx,) = torch.autograd.grad(y, [x], seed)
        xr = x.detach().clone().requires_grad_(True)
        (dx_ref,) = torch.autograd.grad(causal_conv1d_torch(xr, w, bias, "silu", reverse, s0), [xr], seed)
        assert dx.stride() == x.stride()
        torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
