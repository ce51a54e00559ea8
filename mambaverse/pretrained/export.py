"""Export a :class:`MambaLM` to transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` folder layout.

The folder (``config.json`` + ``model.safetensors``) loads with ``transformers.AutoModelForCausalLM.from_pretrained``
and with ``mambaverse.from_pretrained``; transformers itself is not needed to write it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from ..errors import ConfigError
from .convert import MAMBA1_MIXER, MAMBA2_MIXER


def transformers_config(model: nn.Module) -> dict:
    """The transformers MambaConfig / Mamba2Config (as a dict) of a MambaLM, read off its built layers.
    Raises ConfigError for a model transformers cannot express (not a MambaLM, grouped Mamba-2, ...)."""
    c = getattr(model, "config", {})
    if c.get("builder") != "MambaLM":
        raise ConfigError(f"export: {type(model).__name__} is not a MambaLM; only a causal LM has a transformers layout")
    mixer = model.backbone.layers[0].mixer
    common = dict(vocab_size=c["vocab_size"], hidden_size=c["d_model"], num_hidden_layers=c["n_layer"],
                  expand=c["expand"], conv_kernel=c["d_conv"], layer_norm_epsilon=c["norm_eps"],
                  use_bias=mixer.in_proj.bias is not None, hidden_act="silu", residual_in_fp32=True,
                  tie_word_embeddings=bool(c["tie_embeddings"]))
    if c["mixer"] == "mamba":
        return dict(architectures=["MambaForCausalLM"], model_type="mamba", state_size=mixer.ssm.d_state,
                    time_step_rank=mixer.ssm.dt_rank, intermediate_size=mixer.d_inner,
                    use_conv_bias=mixer.ssm.conv_bias is not None, **common)
    if c["mixer"] != "mamba2":
        raise ConfigError(f"export: mixer={c['mixer']!r}; transformers has layouts for 'mamba' and 'mamba2' only")
    problems = [f"{name}={got} (transformers: {want})" for name, got, want in
                [("ngroups", mixer.ngroups, 1), ("mixer norm eps", mixer.norm.eps, c["norm_eps"])] if got != want]
    if problems:
        raise ConfigError(f"export: this Mamba2 has {', '.join(problems)}; transformers' Mamba2 cannot express it")
    return dict(architectures=["Mamba2ForCausalLM"], model_type="mamba2", state_size=mixer.d_state,
                head_dim=mixer.headdim, num_heads=mixer.nheads, n_groups=1, chunk_size=mixer.chunk_size,
                use_conv_bias=True, time_step_rank=-(-c["d_model"] // 16), **common)


def transformers_state(model: nn.Module) -> dict:
    """MambaLM parameters under transformers' names (conv weights as (channels, 1, width))."""
    table = {v: k for k, v in (MAMBA1_MIXER if model.config["mixer"] == "mamba" else MAMBA2_MIXER).items()}
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "embedding.weight":
            name = "backbone.embeddings.weight"
        elif key == "lm_head.weight":
            if model.config["tie_embeddings"]:
                continue  # transformers ties it back from the embedding
            name = key
        elif key == "backbone.norm_f.weight":
            name = key
        else:
            prefix, _, rest = key.partition(".mixer.")
            if not rest:
                name = key  # backbone.layers.i.norm.weight
            elif rest in table:
                name = f"{prefix}.mixer.{table[rest]}"
                if rest.endswith("conv_weight"):
                    tensor = tensor.unsqueeze(1)
            else:
                raise ConfigError(f"export: parameter {key} has no transformers counterpart")
        out[name] = tensor.detach().contiguous().clone()
    return out


def export_transformers(model: nn.Module, directory) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in transformers' Mamba(2)ForCausalLM layout, as a set
    (a temporary folder renamed into place; an existing folder has its two files replaced). Returns the folder."""
    from ..persistence import write_set

    config, state = transformers_config(model), transformers_state(model)
    return write_set(directory, {"model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
                                 "config.json": lambda p: p.write_text(json.dumps(config, indent=2) + "\n")})
