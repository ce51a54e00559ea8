"""Pretrained weights in and out: transformers, mamba-ssm and Caduceus checkpoints, the hub layout, `convert`.

transformers' Mamba/Mamba2 run here for real (their pure-PyTorch paths). mamba-ssm and Caduceus need CUDA
kernels, so their checkpoints are written by the test in their exact key layout (MixerModel / MambaLMHeadModel,
CaduceusForMaskedLM with RCPS wrappers) and checked against a reference of the same math: transformers'
MambaMixer, which has mamba-ssm's Mamba parameters and computation, composed the way Caduceus composes it.
benchmarks/pretrained_equivalence.py runs the real mamba-ssm and Caduceus code on a GPU.
"""
import json
import math
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import (AutoModelForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig,  # noqa: E402
                          MambaForCausalLM)
from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: E402

import mambaverse as mv  # noqa: E402
from mambaverse.pretrained import MambaLM  # noqa: E402
from mambaverse.pretrained.cli import main as convert_main  # noqa: E402
from mambaverse.pretrained.convert import MAMBA1_MIXER, MAMBA2_MIXER, causal_rename  # noqa: E402
from mambaverse.pretrained.export import export_transformers  # noqa: E402

V, D, L = 37, 32, 19


def _perturb(model, scale=0.1):
    """Random weights everywhere (norm weights and A_log included), so no parameter goes unchecked."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def _hf_model(kind):
    if kind == "mamba":
        return _perturb(MambaForCausalLM(MambaConfig(vocab_size=V, hidden_size=D, state_size=8, num_hidden_layers=2))).eval()
    cfg = Mamba2Config(vocab_size=V, hidden_size=D, state_size=16, num_hidden_layers=2, head_dim=16, num_heads=4,
                       n_groups=1, chunk_size=8, layer_norm_epsilon=1e-6)
    return _perturb(Mamba2ForCausalLM(cfg)).eval()


# ------------------------------------------------------------------------------------------ transformers
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_transformers_checkpoint_gives_the_same_logits_and_gradients(tmp_path, kind, backend):
    ref = _hf_model(kind)
    ref.save_pretrained(tmp_path / "hf")
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    ours = mv.from_pretrained(tmp_path / "ours", backend=backend)
    assert isinstance(ours, MambaLM) and ours.config["mixer"] == kind
    ids = torch.randint(0, V, (2, L))
    probe = torch.randn(2, L, V)  # a loss that weighs every logit differently
    theirs = ref(ids).logits
    mine = ours(ids)
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-5)
    (theirs * probe).sum().backward()
    (mine * probe).sum().backward()
    table = MAMBA1_MIXER if kind == "mamba" else MAMBA2_MIXER
    own = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        q = own[causal_rename(name, table)]
        torch.testing.assert_close(q.grad, p.grad.reshape(q.grad.shape), atol=5e-5, rtol=1e-4, msg=name)


def test_sharded_transformers_checkpoint_loads(tmp_path):
    ref = _hf_model("mamba")
    ref.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    ours = mv.from_pretrained(tmp_path / "hf", backend="torch")
    ids = torch.randint(0, V, (1, L))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_export_to_transformers_round_trips(tmp_path, mixer):
    extra = (dict(d_state=16, headdim=16, mixer_options={"chunk_size": 8}) if mixer == "mamba2" else
             dict(d_state=8, dt_rank=3, mixer_options={"bias": True}))
    ours = _perturb(MambaLM(vocab_size=V, d_model=D, n_layer=2, mixer=mixer, tie_embeddings=mixer == "mamba",
                            backend="torch", **extra)).eval()
    mv.save_pretrained(ours, tmp_path / "ours")
    stored = set(load_file(tmp_path / "ours" / "model.safetensors"))
    assert ("lm_head.weight" in stored) == (mixer == "mamba2")  # a tied head is stored once, as the embedding
    assert torch.equal(mv.from_pretrained(tmp_path / "ours").lm_head.weight, ours.lm_head.weight)
    assert convert_main([str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == ("MambaForCausalLM" if mixer == "mamba" else "Mamba2ForCausalLM")
    ids = torch.randint(0, V, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=2e-5, rtol=1e-5)
        again = mv.from_pretrained(tmp_path / "hf", backend="torch")
        assert torch.equal(again(ids), ours(ids))


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_converted_model_generates_what_full_forwards_predict(tmp_path, kind):
    """Recurrent decoding of a converted checkpoint agrees with recomputing the whole sequence each time,
    and with transformers' own greedy generation."""
    ref = _hf_model(kind)
    ref.save_pretrained(tmp_path / "hf")
    ours = mv.from_pretrained(tmp_path / "hf", backend="torch").eval()
    prompt = torch.randint(0, V, (2, 5))
    out = ours.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for t in range(5, 11):
            assert torch.equal(ours(out[:, :t])[:, -1].argmax(-1), out[:, t])
        ref.generation_config.eos_token_id = None  # random weights: no end-of-text token, plain argmax
        theirs = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                              pad_token_id=0)
    assert torch.equal(theirs, out)
    sampled = ours.generate(prompt, 4, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 9)


# ------------------------------------------------------------------------------------------ mamba-ssm
def mamba_ssm_checkpoint(folder: Path, layer: str, vocab=V, d=D, n_layer=2, tie=True):
    """A MambaLMHeadModel folder as mamba-ssm's save_pretrained writes it: config.json (MambaConfig.__dict__) and
    pytorch_model.bin (torch.save of the state dict; vocabulary padded to pad_vocab_size_multiple; lm_head tied)."""
    ssm_cfg = {"layer": layer, "d_state": 8 if layer == "Mamba1" else 16}
    if layer == "Mamba2":
        ssm_cfg.update(headdim=16, chunk_size=8)
    config = {"d_model": d, "d_intermediate": 0, "n_layer": n_layer, "vocab_size": vocab, "ssm_cfg": ssm_cfg,
              "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": tie}
    vpad = vocab + (-vocab) % 8
    e, n = 2 * d, ssm_cfg["d_state"]
    state = {"backbone.embedding.weight": torch.randn(vpad, d) * 0.5}
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        state[p + "norm.weight"] = 1 + 0.1 * torch.randn(d)
        if layer == "Mamba1":
            r = math.ceil(d / 16)
            shapes = {"in_proj.weight": (2 * e, d), "conv1d.weight": (e, 1, 4), "conv1d.bias": (e,),
                      "x_proj.weight": (r + 2 * n, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,),
                      "out_proj.weight": (d, e)}
            extra = {"A_log": torch.log(torch.arange(1, n + 1.0)).repeat(e, 1), "D": torch.ones(e)}
        else:
            h, conv = e // 16, e + 2 * n
            shapes = {"in_proj.weight": (2 * e + 2 * n + h, d), "conv1d.weight": (conv, 1, 4), "conv1d.bias": (conv,),
                      "dt_bias": (h,), "norm.weight": (e,), "out_proj.weight": (d, e)}
            extra = {"A_log": torch.log(torch.rand(h) * 15 + 1), "D": torch.ones(h)}
        for k, shape in shapes.items():
            state[p + "mixer." + k] = torch.randn(shape) * 0.2
        for k, v in extra.items():
            state[p + "mixer." + k] = v + 0.1 * torch.randn_like(v)
    state["backbone.norm_f.weight"] = 1 + 0.1 * torch.randn(d)
    state["lm_head.weight"] = state["backbone.embedding.weight"] if tie else torch.randn(vpad, d)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    torch.save(state, folder / "pytorch_model.bin")
    return config, state


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mamba_ssm_checkpoint_maps_every_tensor_and_computes_their_model(tmp_path, layer):
    config, state = mamba_ssm_checkpoint(tmp_path / "ssm", layer)
    ours = mv.from_pretrained(tmp_path / "ssm", backend="torch").eval()
    assert ours.config["vocab_size"] == 40 and ours.config["mixer"] == ("mamba" if layer == "Mamba1" else "mamba2")
    own = ours.state_dict()
    table = MAMBA1_MIXER if layer == "Mamba1" else MAMBA2_MIXER
    for k, v in state.items():  # every tensor is where the layout says, unchanged but for the conv's unit axis
        assert torch.equal(own[causal_rename(k, table)], v.reshape(own[causal_rename(k, table)].shape)), k
    # the same tensors computed by transformers' implementation of the same model
    hf_cfg = (MambaConfig(vocab_size=40, hidden_size=D, state_size=8, num_hidden_layers=2) if layer == "Mamba1" else
              Mamba2Config(vocab_size=40, hidden_size=D, state_size=16, num_hidden_layers=2, head_dim=16, num_heads=4,
                           n_groups=1, chunk_size=8, tie_word_embeddings=True))
    ref = (MambaForCausalLM if layer == "Mamba1" else Mamba2ForCausalLM)(hf_cfg).eval()
    ref.load_state_dict({k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()})
    ids = torch.randint(0, 40, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=2e-5, rtol=1e-5)


def test_mamba_ssm_safetensors_without_the_tied_head_loads(tmp_path):
    _, state = mamba_ssm_checkpoint(tmp_path / "ssm", "Mamba1")
    (tmp_path / "ssm" / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, tmp_path / "ssm" / "model.safetensors")
    ours = mv.from_pretrained(tmp_path / "ssm")
    assert ours.lm_head.weight is ours.embedding.weight
    assert torch.equal(ours.embedding.weight, state["backbone.embedding.weight"])


# ------------------------------------------------------------------------------------------ errors
def test_bad_checkpoints_are_one_line_errors_naming_keys_and_shapes(tmp_path):
    folder = tmp_path / "ssm"
    config, state = mamba_ssm_checkpoint(folder, "Mamba1")

    def rewrite(st):
        torch.save(st, folder / "pytorch_model.bin")

    def refused(pattern):
        with pytest.raises(mv.ConfigError, match=pattern) as info:
            mv.from_pretrained(folder)
        assert "\n" not in str(info.value)

    rewrite({**state, "backbone.layers.0.mixer.bogus": torch.zeros(3)})
    refused(r"unknown key\(s\) \['backbone.layers.0.mixer.bogus'\]")
    rewrite({k: v for k, v in state.items() if k != "backbone.layers.1.mixer.x_proj.weight"})
    refused(r"missing \['backbone.layers.1.mixer.ssm.x_proj.weight'\]")
    rewrite({**state, "backbone.layers.0.mixer.dt_proj.bias": torch.zeros(5)})
    refused(r"backbone.layers.0.mixer.dt_proj.bias has shape \(5,\) but MambaLM.backbone.layers.0.mixer.ssm.dt_proj.bias "
            r"has shape \(64,\)")
    rewrite({**state, "lm_head.weight": state["lm_head.weight"] + 1})
    refused("lm_head.weight differs from the embedding")

    class Payload:  # anything beyond tensors: weights_only refuses to unpickle it
        def __reduce__(self):
            return (print, ("code ran",))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    refused("cannot be loaded as a weights-only torch file")

    rewrite(state)
    for bad, pattern in [({"ssm_cfg": {"layer": "Mamba2", "ngroups": 8}}, r"ssm_cfg.ngroups=8 \(supported: 1\)"),
                         ({"d_intermediate": 128}, r"d_intermediate=128"),
                         ({"rms_norm": False}, r"rms_norm=False")]:
        (folder / "config.json").write_text(json.dumps({**config, **bad}))
        refused(pattern)
    (folder / "config.json").write_text(json.dumps({"hidden": 3}))
    refused(r"of no format we read \(keys \['hidden'\]\)")
    (folder / "config.json").write_text("{not json")
    refused("is not valid JSON")


# ------------------------------------------------------------------------------------------ Caduceus
COMPLEMENT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 9, 9: 8, 10: 7, 11: 11}  # Caduceus' tokenizer


def caduceus_checkpoint(folder: Path, rcps: bool, fused: bool, tie: bool = True, strategy: str = "add", n_layer=2,
                        d=8, safetensors=False, d_state=4):
    """A CaduceusForMaskedLM folder in its exact layout: config.json as CaduceusConfig writes it; keys
    caduceus.backbone.{embeddings,layers,norm_f}, RCPS wrappers' `submodule` levels, tied projections."""
    config = {"model_type": "caduceus", "architectures": ["CaduceusForMaskedLM"], "d_model": d, "n_layer": n_layer,
              "vocab_size": 12, "ssm_cfg": {"d_state": d_state, "d_conv": 4, "expand": 2, "dt_rank": "auto", "bias": False,
                                            "conv_bias": True}, "rms_norm": True, "residual_in_fp32": False,
              "fused_add_norm": fused, "pad_vocab_size_multiple": 8, "norm_epsilon": 1e-5, "bidirectional": True,
              "bidirectional_strategy": strategy, "bidirectional_weight_tie": tie, "rcps": rcps,
              "complement_map": {str(k): v for k, v in {**COMPLEMENT, 12: 12, 13: 13, 14: 14, 15: 15}.items()}}
    e, n, r = 2 * d, d_state, math.ceil(d / 16)
    base = "caduceus.backbone."
    wrap = "submodule." if rcps else ""
    norm = "norm.submodule.weight" if rcps and not fused else "norm.weight"
    state = {}
    if rcps:
        state[base + "embeddings.word_embeddings.embedding.weight"] = torch.randn(16, d)
        state[base + "embeddings.word_embeddings.complement_map"] = torch.arange(16)
        state["lm_head.lm_head.weight"] = state[base + "embeddings.word_embeddings.embedding.weight"]
        state["lm_head.complement_map"] = torch.arange(16)
    else:
        state[base + "embeddings.word_embeddings.weight"] = torch.randn(16, d)
        state["lm_head.weight"] = state[base + "embeddings.word_embeddings.weight"]
    for i in range(n_layer):
        p = f"{base}layers.{i}."
        state[p + norm] = 1 + 0.2 * torch.randn(d)
        for direction in ("fwd", "rev"):
            m = f"{p}mixer.{wrap}mamba_{direction}."
            for k, shape in {"in_proj.weight": (2 * e, d), "out_proj.weight": (d, e), "conv1d.weight": (e, 1, 4),
                             "conv1d.bias": (e,), "x_proj.weight": (r + 2 * n, e), "dt_proj.weight": (e, r),
                             "dt_proj.bias": (e,)}.items():
                state[m + k] = torch.randn(shape) * 0.3
            state[m + "A_log"] = torch.log(torch.arange(1, n + 1.0)).repeat(e, 1) + 0.1 * torch.randn(e, n)
            state[m + "D"] = 1 + 0.1 * torch.randn(e)
            if tie and direction == "rev":
                for k in ("in_proj.weight", "out_proj.weight"):
                    state[m + k] = state[f"{p}mixer.{wrap}mamba_fwd.{k}"]
    state[base + ("norm_f.submodule.weight" if rcps and not fused else "norm_f.weight")] = 1 + 0.2 * torch.randn(d)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if safetensors:  # the hub's files hold one name per shared tensor
        seen, kept = set(), {}
        for k, v in state.items():
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                kept[k] = v.contiguous()
        save_file(kept, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return config, state


def caduceus_reference(state, config, h):
    """Caduceus' backbone on embeddings h, from its definition: mamba-ssm blocks (add, then RMSNorm, then mixer),
    BiMamba = Mamba(x) (+|*) flip(Mamba'(flip(x))), RCPS wrappers running each block on one half and on the RC of
    the other; the fused RCPS add+norm reads the second half as the forward strand. Mamba = transformers'
    MambaMixer, which holds mamba-ssm's Mamba parameters and computes the same function."""
    d, rcps, fused = config["d_model"], config["rcps"], config["fused_add_norm"]
    eps = config["norm_epsilon"]
    wrap = "submodule." if rcps else ""
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    rc = lambda x: x.flip(-2, -1)  # noqa: E731

    def mamba(prefix):
        cfg = MambaConfig(hidden_size=d, state_size=config["ssm_cfg"]["d_state"], conv_kernel=4, expand=2, time_step_rank=math.ceil(d / 16),
                          num_hidden_layers=1)
        mixer = MambaMixer(cfg, layer_idx=0)
        mixer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        return mixer

    def bimamba(i, x):
        fwd = mamba(f"caduceus.backbone.layers.{i}.mixer.{wrap}mamba_fwd.")
        rev = mamba(f"caduceus.backbone.layers.{i}.mixer.{wrap}mamba_rev.")
        a, b = fwd(x), rev(x.flip(1)).flip(1)
        return a + b if config["bidirectional_strategy"] == "add" else a * b

    def norm_weight(name):
        return state.get(f"caduceus.backbone.{name}.weight", state.get(f"caduceus.backbone.{name}.submodule.weight"))

    residual = None
    for i in range(config["n_layer"]):
        s = h if residual is None else h + residual
        w = norm_weight(f"layers.{i}.norm")
        if not rcps:
            residual, h = s, bimamba(i, rms(s, w))
            continue
        first, second = (s[..., d:], s[..., :d]) if fused else (s[..., :d], s[..., d:])
        residual = torch.cat([first, second], -1)
        x_fwd, x_rc = rms(first, w), rc(rms(rc(second), w))
        h = torch.cat([bimamba(i, x_fwd), rc(bimamba(i, rc(x_rc)))], -1)
    s, w = h + residual, norm_weight("norm_f")
    return torch.cat([rms(s[..., :d], w), rc(rms(rc(s[..., d:]), w))], -1) if rcps else rms(s, w)


@pytest.mark.parametrize("rcps,fused,tie,strategy,n_layer", [
    (True, True, True, "add", 2), (True, True, True, "add", 4), (True, True, False, "ew_multiply", 2),
    (True, False, True, "add", 2), (False, True, True, "add", 2), (False, False, False, "ew_multiply", 2)])
def test_caduceus_checkpoint_maps_onto_our_backbones(tmp_path, rcps, fused, tie, strategy, n_layer):
    config, state = caduceus_checkpoint(tmp_path / "cad", rcps, fused, tie, strategy, n_layer, safetensors=n_layer == 4)
    ours = mv.from_pretrained(tmp_path / "cad", backend="torch").eval()
    assert type(ours).__name__ == ("RCPSBackbone" if rcps else "BidirectionalBackbone")
    assert ours.d_model == (2 if rcps else 1) * config["d_model"]
    h = torch.randn(2, 13, ours.d_model)
    with torch.no_grad():
        torch.testing.assert_close(ours(h), caduceus_reference(state, config, h), atol=2e-5, rtol=1e-5)


def test_caduceus_keys_land_where_the_layout_says(tmp_path):
    """Non-fused PS: a plain renaming (fused PS also reverses every other block, checked numerically above)."""
    _, state = caduceus_checkpoint(tmp_path / "cad", rcps=True, fused=False, tie=False)
    own = mv.from_pretrained(tmp_path / "cad").state_dict()
    expect = {
        "caduceus.backbone.layers.1.norm.submodule.weight": "rc.module.layers.1.norm.weight",
        "caduceus.backbone.layers.0.mixer.submodule.mamba_rev.in_proj.weight": "rc.module.layers.0.mixer.in_proj_rev.weight",
        "caduceus.backbone.layers.0.mixer.submodule.mamba_fwd.x_proj.weight": "rc.module.layers.0.mixer.ssm_fwd.x_proj.weight",
        "caduceus.backbone.layers.1.mixer.submodule.mamba_rev.A_log": "rc.module.layers.1.mixer.ssm_rev.A_log",
        "caduceus.backbone.norm_f.submodule.weight": "rc.module.norm_f.weight"}
    for theirs, mine in expect.items():
        assert torch.equal(own[mine], state[theirs])
    assert torch.equal(own["rc.module.layers.0.mixer.ssm_rev.conv_weight"],
                       state["caduceus.backbone.layers.0.mixer.submodule.mamba_rev.conv1d.weight"][:, 0])


def test_caduceus_refusals(tmp_path):
    config, _ = caduceus_checkpoint(tmp_path / "cad", rcps=True, fused=True, n_layer=2)
    for bad, pattern in [({"n_layer": 3}, "n_layer=3 \\(odd\\)"), ({"bidirectional": False}, "bidirectional=False"),
                         ({"rms_norm": False}, "rms_norm=False")]:
        (tmp_path / "cad" / "config.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(mv.ConfigError, match=pattern):
            mv.from_pretrained(tmp_path / "cad")


# ------------------------------------------------------------------------------------------ our own folders
def test_save_pretrained_writes_the_hub_layout_as_a_set(tmp_path):
    model = mv.create_model("causal_tiny", n_layer=1).eval()
    folder = tmp_path / "ckpt"
    mv.save_pretrained(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["builder"] == "CausalBackbone" and config["architectures"] == ["CausalBackbone"]
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())
    # an older save (config.yaml) still loads, and saving over it leaves one config and no temporary files
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in model.config.items()}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, legacy / "model.safetensors")
    x = torch.randn(1, 7, 64)
    assert torch.equal(mv.from_pretrained(legacy)(x), model(x))
    mv.save_pretrained(model, legacy)
    assert sorted(p.name for p in legacy.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(mv.from_pretrained(legacy)(x), model(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "legacy"]


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_files(tmp_path, monkeypatch):
    from mambaverse import persistence

    model = mv.create_model("causal_tiny", n_layer=1)
    mv.save_pretrained(model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(persistence, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        mv.save_pretrained(mv.create_model("causal_tiny", n_layer=2), tmp_path / "ckpt")
    with pytest.raises(OSError, match="disk full"):
        mv.save_pretrained(model, tmp_path / "new")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.undo()
    with pytest.raises(mv.ConfigError, match="is a file; expected a folder"):
        mv.save_pretrained(model, tmp_path / "ckpt" / "model.safetensors")


def test_convert_refuses_to_overwrite_without_the_flag(tmp_path):
    mamba_ssm_checkpoint(tmp_path / "ssm", "Mamba1")
    assert convert_main([str(tmp_path / "ssm"), str(tmp_path / "out")]) == 0
    with pytest.raises(mv.ConfigError, match="pass --overwrite"):
        convert_main([str(tmp_path / "ssm"), str(tmp_path / "out")])
    assert convert_main([str(tmp_path / "ssm" / "config.json"), str(tmp_path / "out"), "--overwrite"]) == 0
    caduceus_checkpoint(tmp_path / "cad", rcps=False, fused=False)
    with pytest.raises(mv.ConfigError, match="not a MambaLM"):
        convert_main([str(tmp_path / "cad"), str(tmp_path / "cad_hf"), "--to", "transformers"])


# ------------------------------------------------------------------------------------------ use: genomics fine-tuning
REFS = Path("/usr/share/doc/ragout/examples/S.Aureus/references")
EXAMPLE = Path(__file__).resolve().parents[1] / "genomics" / "configs" / "finetune_caduceus.yaml"


@pytest.mark.skipif(not REFS.is_dir(), reason="needs Debian package ragout-examples (make test installs it)")
def test_genomics_cli_fine_tunes_a_converted_caduceus_checkpoint(tmp_path):
    from mambaverse.cli import main as cli_main

    # a Caduceus-PS checkpoint of caduceus_ps_dna_small's size: d_model 32 per strand (64 in all), 2 layers
    _, state = caduceus_checkpoint(tmp_path / "caduceus", rcps=True, fused=True, d=32, safetensors=True,
                                   d_state=16)
    assert cli_main(["convert", str(tmp_path / "caduceus"), str(tmp_path / "converted")]) == 0
    config = yaml.safe_load(EXAMPLE.read_text())
    args = config["model"]["init_args"]
    args.update(pretrained_ckpt=str(tmp_path / "converted"), num_classes=2, output_dir=str(tmp_path / "out"),
                backbone="caduceus_ps_dna_small",
                backbone_overrides={**args["backbone_overrides"], "d_model": 64, "n_layer": 2, "dt_rank": 2})
    config["data"]["init_args"].update(files={"COL": [str(REFS / "COL.fasta.gz")], "N315": [str(REFS / "N315.fasta.gz")]},
                                       window=128, batch_size=4, train_samples=12, val_windows=4, test_windows=4,
                                       cache_dir=str(tmp_path / "cache"))
    config["trainer"] = {"max_steps": 3, "log_every_n_steps": 1, "accelerator": "cpu", "devices": 1,
                         "enable_checkpointing": False, "default_root_dir": str(tmp_path), "enable_model_summary": False,
                         "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                    "init_args": {"save_dir": str(tmp_path / "logs")}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli_main(["fit", "--config", str(tmp_path / "config.yaml")]) == 0
    header = next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train_loss" in header
    # every backbone tensor of the converted folder went into the classifier
    from mambaverse.genomics import DNAClassifier

    model = DNAClassifier(**{k: v for k, v in args.items()})
    backbone_keys = {f"backbone.{k}" for k in load_file(tmp_path / "converted" / "model.safetensors")}
    assert backbone_keys and backbone_keys <= set(model.loaded_pretrained)
    assert any(re.fullmatch(r"backbone\.rc\.module\.layers\.0\.mixer\.ssm_fwd\.A_log", k) for k in model.loaded_pretrained)
