"""Import checkpoints of other Mamba implementations, from local folders, onto mambaverse models.

Recognised by the contents of ``config.json`` (never by the folder's name):

============================  ===========================================  ===================================
source                        config.json                                  our model
============================  ===========================================  ===================================
mamba-ssm MambaLMHeadModel    d_model, n_layer, vocab_size, ssm_cfg        :class:`MambaLM` (mixer by ssm_cfg.layer)
transformers Mamba(2)ForCLM   model_type "mamba" / "mamba2"                :class:`MambaLM`
Caduceus (PS / Ph)            model_type "caduceus" (rcps, bidirectional)  RCPSBackbone / BidirectionalBackbone
============================  ===========================================  ===================================

Weights are read from ``model.safetensors``, ``pytorch_model.bin`` (``torch.load(weights_only=True)`` only: a
pickle that needs more than tensors is refused) or their sharded ``*.index.json`` forms. Every tensor of the file
must map to a parameter of ours and every parameter must be filled, with equal shapes; anything else is a
one-line :class:`ConfigError` naming the keys (and both shapes).

Caduceus-PS checkpoints trained with ``fused_add_norm`` (the setting of Caduceus' training configs) swap the two RC halves of the
residual stream before every block (their fused RCPS block reads the second half as the forward strand). Since
rc o block o rc is again a block (norm weight and projection channels reversed, forward and reverse scans
exchanged), the same function is an ordinary :class:`RCPSBackbone` whose every other block holds those
transformed weights; we convert to that. It needs an even ``n_layer`` (with an odd one the output's forward
half would depend on the input's reverse half, which no backbone of ours computes).
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ConfigError

SAFETENSORS, PICKLE = "model.safetensors", "pytorch_model.bin"

# the key inside a mamba-ssm / transformers mixer (same names in both)  ->  ours, relative to the mixer
MAMBA1_MIXER = {"in_proj.weight": "in_proj.weight", "out_proj.weight": "out_proj.weight", "in_proj.bias": "in_proj.bias",
                "out_proj.bias": "out_proj.bias",
                "conv1d.weight": "ssm.conv_weight", "conv1d.bias": "ssm.conv_bias", "x_proj.weight": "ssm.x_proj.weight",
                "dt_proj.weight": "ssm.dt_proj.weight", "dt_proj.bias": "ssm.dt_proj.bias", "A_log": "ssm.A_log",
                "D": "ssm.D"}
MAMBA2_MIXER = {"in_proj.weight": "in_proj.weight", "out_proj.weight": "out_proj.weight", "in_proj.bias": "in_proj.bias",
                "out_proj.bias": "out_proj.bias",
                "conv1d.weight": "conv_weight", "conv1d.bias": "conv_bias", "dt_bias": "dt_bias", "A_log": "A_log",
                "D": "D", "norm.weight": "norm.weight"}
_SSM_PART = {k: v.removeprefix("ssm.") for k, v in MAMBA1_MIXER.items() if v.startswith("ssm.")}


def _options(**settings):
    """mixer_options holding only the settings that differ from the mixers' defaults (keeps configs short)."""
    defaults = {"bias": False, "conv_bias": True}
    return {k: v for k, v in settings.items() if defaults.get(k, object()) != v}


def _fail(source, message):
    raise ConfigError(f"{source}: {message}")


# ------------------------------------------------------------------------------------------ reading files
def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        _fail(path, f"cannot be read ({type(err).__name__})")
    except json.JSONDecodeError as err:
        _fail(path, f"is not valid JSON ({err.msg} at line {err.lineno})")
    if not isinstance(config, dict):
        _fail(path, f"holds a {type(config).__name__}; expected a JSON object")
    return config


def _load_one(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only: tensors and plain containers only; a pickle that asks for code is refused
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        _fail(path, f"cannot be loaded as {'safetensors' if path.suffix == '.safetensors' else 'a weights-only torch file'} "
                    f"({first[:160]})")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        _fail(path, "holds no flat {name: tensor} state dict")
    return state


def read_weights(folder: Path) -> tuple[dict, Path]:
    """All tensors of the checkpoint in ``folder`` (single file or shards), and the file (or index) they came from."""
    for name in (SAFETENSORS, PICKLE):
        if (folder / name).is_file():
            return _load_one(folder / name), folder / name
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                _fail(index, "is not a shard index; expected a JSON object with a 'weight_map'")
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_one(folder / shard))
            return state, index
    _fail(folder, f"has no weights; expected {SAFETENSORS} or {PICKLE} (or a sharded *.index.json of one)")


# ------------------------------------------------------------------------------------------ format detection
def detect(config: dict) -> str:
    """'mambaverse', 'transformers', 'caduceus' or 'mamba_ssm' from a config.json's contents; '' if none."""
    if "builder" in config:
        return "mambaverse"
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if model_type in ("mamba", "mamba2") or any(a in ("MambaForCausalLM", "Mamba2ForCausalLM") for a in archs):
        return "transformers"
    if model_type == "caduceus" or {"rcps", "bidirectional"} <= set(config):
        return "caduceus"
    if {"d_model", "n_layer", "vocab_size"} <= set(config) and "ssm_cfg" in config:
        return "mamba_ssm"
    return ""


# ------------------------------------------------------------------------------------------ causal LMs
def _dt_rank(value, d_model, source):
    if value in (None, "auto"):
        return math.ceil(d_model / 16)
    if isinstance(value, int) and value > 0:
        return value
    _fail(source, f"dt_rank/time_step_rank={value!r}; expected 'auto' or a positive int")


def _limit(value, source, name):
    """A (low, high) pair of floats; transformers 5 writes infinity as {"__float__": "Infinity"}."""
    try:
        return [float(x["__float__"] if isinstance(x, dict) else x) for x in value]
    except (TypeError, KeyError, ValueError):
        _fail(source, f"{name}={value!r}; expected a pair of numbers")


def _require(source, checks):
    bad = [f"{name}={got!r} (supported: {want!r})" for name, got, want in checks if got != want]
    if bad:
        _fail(source, "unsupported setting(s) " + ", ".join(bad))


def mamba_ssm_plan(config: dict, source) -> tuple[dict, dict]:
    """MambaLM kwargs from a mamba-ssm MambaConfig, and the mixer table for its layers."""
    ssm = dict(config.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    d_model = config["d_model"]
    vocab = config["vocab_size"]
    multiple = config.get("pad_vocab_size_multiple", 8) or 1
    vocab += (-vocab) % multiple  # MambaLMHeadModel pads the vocabulary
    bias, conv_bias = bool(ssm.get("bias", False)), bool(ssm.get("conv_bias", True))
    _require(source, [("rms_norm", config.get("rms_norm", True), True),
                      ("d_intermediate", config.get("d_intermediate", 0), 0),
                      ("attn_layer_idx", list(config.get("attn_layer_idx") or []), []),
                      ("ssm_cfg.layer", layer in ("Mamba1", "Mamba2"), True)])
    kwargs = dict(vocab_size=vocab, d_model=d_model, n_layer=config["n_layer"], d_conv=ssm.get("d_conv", 4),
                  expand=ssm.get("expand", 2), norm_eps=config.get("norm_epsilon", 1e-5),
                  tie_embeddings=config.get("tie_embeddings", True))
    if layer == "Mamba1":
        kwargs.update(mixer="mamba", d_state=ssm.get("d_state", 16), dt_rank=_dt_rank(ssm.get("dt_rank"), d_model, source),
                      mixer_options=_options(bias=bias, conv_bias=conv_bias))
        return kwargs, MAMBA1_MIXER
    _require(source, [("ssm_cfg.ngroups", ssm.get("ngroups", 1), 1), ("ssm_cfg.d_ssm", ssm.get("d_ssm"), None),
                      ("ssm_cfg.conv_bias", conv_bias, True),
                      ("ssm_cfg.D_has_hdim", ssm.get("D_has_hdim", False), False),
                      ("ssm_cfg.rmsnorm", ssm.get("rmsnorm", True), True),
                      ("ssm_cfg.norm_before_gate", ssm.get("norm_before_gate", False), False),
                      ("ssm_cfg.dt_limit", _limit(ssm.get("dt_limit", (0.0, math.inf)), source, "dt_limit"),
                       [0.0, math.inf])])
    kwargs.update(mixer="mamba2", d_state=ssm.get("d_state", 128), headdim=ssm.get("headdim", 64),
                  mixer_options=_options(chunk_size=ssm.get("chunk_size", 256), bias=bias))
    return kwargs, MAMBA2_MIXER


def transformers_plan(config: dict, source) -> tuple[dict, dict]:
    """MambaLM kwargs from a transformers MambaConfig / Mamba2Config, and the mixer table."""
    mamba2 = config.get("model_type") == "mamba2" or "Mamba2ForCausalLM" in (config.get("architectures") or [])
    d_model = config.get("hidden_size", 768 if not mamba2 else 4096)
    eps = config.get("layer_norm_epsilon", 1e-5)
    bias, conv_bias = bool(config.get("use_bias", False)), bool(config.get("use_conv_bias", True))
    _require(source, [("hidden_act", config.get("hidden_act", "silu"), "silu")])
    kwargs = dict(vocab_size=config.get("vocab_size", 32768 if mamba2 else 50280), d_model=d_model,
                  n_layer=config.get("num_hidden_layers", 64 if mamba2 else 32), d_conv=config.get("conv_kernel", 4),
                  expand=config.get("expand", 2), norm_eps=eps,
                  tie_embeddings=config.get("tie_word_embeddings", not mamba2))
    if not mamba2:
        kwargs.update(mixer="mamba", d_state=config.get("state_size", 16),
                      dt_rank=_dt_rank(config.get("time_step_rank"), d_model, source),
                      mixer_options=_options(bias=bias, conv_bias=conv_bias))
        return kwargs, MAMBA1_MIXER
    head_dim, heads = config.get("head_dim", 64), config.get("num_heads", 128)
    limit = _limit(config.get("time_step_limit", (0.0, math.inf)), source, "time_step_limit")
    _require(source, [("n_groups", config.get("n_groups", 8), 1), ("time_step_limit", limit, [0.0, math.inf]),
                      ("use_conv_bias", conv_bias, True),
                      ("num_heads * head_dim", heads * head_dim, kwargs["expand"] * d_model)])
    # transformers' gated RMSNorm inside the mixer uses layer_norm_epsilon too
    kwargs.update(mixer="mamba2", d_state=config.get("state_size", 128), headdim=head_dim,
                  mixer_options=_options(chunk_size=config.get("chunk_size", 256), norm_eps=eps, bias=bias))
    return kwargs, MAMBA2_MIXER


def causal_rename(key: str, mixer_table: dict):
    """Our MambaLM key for a mamba-ssm / transformers key, or None if the key is not theirs."""
    if key in ("backbone.embedding.weight", "backbone.embeddings.weight"):
        return "embedding.weight"
    if key in ("lm_head.weight", "backbone.norm_f.weight"):
        return key
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.(norm\.weight|mixer\.(.+))", key)
    if not m:
        return None
    if m.group(3) is None:
        return f"backbone.layers.{m.group(1)}.norm.weight"
    ours = mixer_table.get(m.group(3))
    return None if ours is None else f"backbone.layers.{m.group(1)}.mixer.{ours}"


# ------------------------------------------------------------------------------------------ Caduceus
def caduceus_plan(config: dict, source) -> tuple[str, dict]:
    """Our builder name and kwargs for a CaduceusConfig."""
    ssm = dict(config.get("ssm_cfg") or {})
    d = config["d_model"]
    strategy = config.get("bidirectional_strategy") or "add"
    _require(source, [("bidirectional", config.get("bidirectional", True), True),
                      ("rms_norm", config.get("rms_norm", True), True),
                      ("bidirectional_strategy", strategy in ("add", "ew_multiply"), True),
                      ("ssm_cfg.bias", ssm.get("bias", False), False),
                      ("ssm_cfg.conv_bias", ssm.get("conv_bias", True), True)])
    rcps = bool(config.get("rcps", False))
    if rcps and config.get("fused_add_norm", True) and config["n_layer"] % 2:
        _fail(source, f"fused_add_norm Caduceus-PS with n_layer={config['n_layer']} (odd): the halves of its input "
                      "arrive swapped at the output; expected an even n_layer")
    kwargs = dict(d_model=2 * d if rcps else d, n_layer=config["n_layer"], variant="caduceus", strategy=strategy,
                  tie_projections=bool(config.get("bidirectional_weight_tie", True)), d_state=ssm.get("d_state", 16),
                  d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
                  dt_rank=_dt_rank(ssm.get("dt_rank"), d, source), norm_eps=config.get("norm_epsilon", 1e-5))
    return ("RCPSBackbone" if rcps else "BidirectionalBackbone"), kwargs


_CADUCEUS_NOT_BACKBONE = re.compile(r"(backbone\.embeddings\..*|lm_head\..*|score\..*)")


def caduceus_rename(key: str, tied: bool):
    """Our backbone key (before the RCPS prefix) for a Caduceus key; '' for a known key outside the backbone
    (embedding, LM or classification head), None for an unknown key."""
    key = key.removeprefix("caduceus.")
    if _CADUCEUS_NOT_BACKBONE.fullmatch(key):
        return ""
    key = key.removeprefix("backbone.")
    if key in ("norm_f.weight", "norm_f.submodule.weight"):
        return "norm_f.weight"
    m = re.fullmatch(r"layers\.(\d+)\.(norm(?:\.submodule)?\.weight|mixer\.(?:submodule\.)?mamba_(fwd|rev)\.(.+))", key)
    if not m:
        return None
    layer = f"layers.{m.group(1)}"
    if m.group(3) is None:
        return f"{layer}.norm.weight"
    direction, part = m.group(3), m.group(4)
    if part in ("in_proj.weight", "out_proj.weight"):
        proj = part.split(".")[0]
        return f"{layer}.mixer.{proj}{'_rev' if direction == 'rev' and not tied else ''}.weight"
    if part in _SSM_PART:
        return f"{layer}.mixer.ssm_{direction}.{_SSM_PART[part]}"
    return None


def rc_transform_block(state: dict, prefix: str) -> None:
    """In place: the weights of block ``prefix`` (…layers.i.) become those of rc o block o rc, with
    rc = reverse length and channels. RMSNorm weight and the d_model side of the projections are reversed;
    the forward and reverse scans (and, if untied, their projections) are exchanged."""
    state[f"{prefix}norm.weight"] = state[f"{prefix}norm.weight"].flip(0)
    mixer = f"{prefix}mixer."
    for name in [k for k in state if k.startswith(mixer)]:
        if ".in_proj" in name:
            state[name] = state[name].flip(1)
        elif ".out_proj" in name:
            state[name] = state[name].flip(0)
    swaps = {}
    for name in [k for k in state if k.startswith(mixer)]:
        rest = name[len(mixer):]
        for a, b in (("ssm_fwd.", "ssm_rev."), ("in_proj.", "in_proj_rev."), ("out_proj.", "out_proj_rev.")):
            if rest.startswith(a) and f"{mixer}{b}{rest[len(a):]}" in state:
                other = f"{mixer}{b}{rest[len(a):]}"
                swaps[name], swaps[other] = state[other], state[name]
    state.update(swaps)


# ------------------------------------------------------------------------------------------ mapping
def map_state(weights: dict, rename, source, tensor_fix=None) -> tuple[dict, dict]:
    """Rename every tensor; refuse unknown keys and disagreeing duplicates (tied copies). '' = known, unused.
    Returns (our state, {our key: their key})."""
    out, origin, unknown = {}, {}, []
    for key, tensor in weights.items():
        ours = rename(key)
        if ours is None:
            unknown.append(key)
            continue
        if ours == "":
            continue
        if tensor_fix is not None:
            tensor = tensor_fix(ours, tensor)
        if ours in out and (out[ours].shape != tensor.shape or not torch.equal(out[ours], tensor)):
            _fail(source, f"{origin[ours]} and {key} both map to {ours} but differ; expected tied copies")
        out[ours], origin[ours] = tensor, key
    if unknown:
        _fail(source, f"unknown key(s) {sorted(unknown)[:4]}{' ...' if len(unknown) > 4 else ''} "
                      f"({len(unknown)} in all); expected only this format's layout")
    return out, origin


def squeeze_conv(ours: str, tensor):
    """Conv1d weights (channels, 1, width) are stored by us as (channels, width)."""
    return tensor.squeeze(1) if ours.endswith("conv_weight") and tensor.dim() == 3 else tensor


def load_into(model, state: dict, source, origin_names=None) -> None:
    """Copy ``state`` into ``model``: all keys, same shapes, else a one-line ConfigError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        _fail(source, f"does not fit {type(model).__name__}: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
                      f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}")
    for key, tensor in state.items():
        if own[key].shape != tensor.shape:
            name = (origin_names or {}).get(key, key)
            _fail(source, f"{name} has shape {tuple(tensor.shape)} but {type(model).__name__}.{key} "
                          f"has shape {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------ entry point
def load_foreign(folder: Path, config: dict, kind: str, overrides: dict):
    """Build our model for the checkpoint in ``folder`` (its parsed config.json and detected ``kind``)."""
    import inspect

    from ..registry import get_builder

    source = folder / "config.json"
    try:
        if kind == "caduceus":
            name, kwargs = caduceus_plan(config, source)
            tied = kwargs["tie_projections"]
            rename = lambda k: caduceus_rename(k, tied)  # noqa: E731
        else:
            name = "MambaLM"
            kwargs, table = (mamba_ssm_plan if kind == "mamba_ssm" else transformers_plan)(config, source)
            rename = lambda k: causal_rename(k, table)  # noqa: E731
    except KeyError as err:
        _fail(source, f"lacks key {err.args[0]!r} that a {kind} config has")
    cls = get_builder(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if "strategy" in kwargs and "combine" in accepted:  # backbones that name it `combine` ("multiply")
        strategy = kwargs.pop("strategy")
        kwargs["combine"] = "multiply" if strategy == "ew_multiply" else strategy
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        _fail(source, f"unknown override(s) {unknown} for {name}; expected some of {sorted(accepted)}")
    weights, weights_path = read_weights(folder)
    state, origin = map_state(weights, rename, weights_path, squeeze_conv)
    if name == "MambaLM":
        if kwargs["tie_embeddings"] and "embedding.weight" in state:
            head = state.setdefault("lm_head.weight", state["embedding.weight"])
            if not torch.equal(head, state["embedding.weight"]):
                _fail(weights_path, "lm_head.weight differs from the embedding, but the config ties them; "
                                    "expected tie_embeddings/tie_word_embeddings false")
    else:
        if name == "RCPSBackbone" and config.get("fused_add_norm", True):
            n = kwargs["n_layer"]
            for i in range(n):
                if (n - 1 - i) % 2 and f"layers.{i}.norm.weight" in state:
                    rc_transform_block(state, f"layers.{i}.")
        prefix = "rc.module." if name == "RCPSBackbone" else ""
        state = {prefix + k: v for k, v in state.items()}
        origin = {prefix + k: v for k, v in origin.items()}
    model = cls(**{**kwargs, **overrides})
    load_into(model, state, weights_path, origin)
    return model
