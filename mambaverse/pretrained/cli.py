"""``mambaverse convert SRC DST``: turn a local checkpoint folder into a mambaverse (or transformers) folder.

    mambaverse convert ~/ckpt/mamba-130m runs/mamba-130m                 # mamba-ssm -> ours (config.json + safetensors)
    mambaverse convert ~/ckpt/caduceus-ps runs/caduceus-ps               # Caduceus PS -> RCPSBackbone
    mambaverse convert runs/my-lm runs/my-lm-hf --to transformers        # our MambaLM -> MambaForCausalLM layout
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def main(argv: list[str]) -> int:
    """Entry point of the ``convert`` command; returns the exit status. Raises ConfigError for bad input."""
    parser = argparse.ArgumentParser(
        prog="mambaverse convert",
        description="Convert a local mamba-ssm, transformers Mamba/Mamba2, Caduceus or mambaverse checkpoint folder "
                    "into a mambaverse folder (config.json + model.safetensors), or a MambaLM into transformers' "
                    "MambaForCausalLM/Mamba2ForCausalLM layout.")
    parser.add_argument("src", help="checkpoint folder (or a file in it)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--to", choices=("mambaverse", "transformers"), default="mambaverse",
                        help="output layout (default: mambaverse)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DST")
    args = parser.parse_args(argv)

    from ..persistence import from_pretrained, save_pretrained
    from .convert import detect, read_config

    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"convert: {dst} is a file; expected a folder to write")
    if (dst / "config.json").exists() and not args.overwrite:
        raise ConfigError(f"convert: {dst / 'config.json'} exists; pass --overwrite to replace it")
    folder = src.parent if src.is_file() else src
    kind = detect(read_config(folder)) if (folder / "config.json").is_file() else "mambaverse (config.yaml)"
    model = from_pretrained(src)
    if args.to == "transformers":
        from .export import export_transformers

        export_transformers(model, dst)
    else:
        save_pretrained(model, dst)
    n = sum(p.numel() for p in model.parameters())
    print(f"{src} ({kind}) -> {dst} ({args.to}): {model.config['builder']}, {n:,} parameters")
    if model.config["builder"] != "MambaLM":  # a backbone: what a task config needs to build one of this shape
        shape = {k: v for k, v in model.config.items() if k not in ("builder", "preset", "backend", "checkpoint_layers",
                                                                      "chunk_len") and v is not None}
        print(f"to fine-tune it: pretrained_ckpt: {dst}, a {model.config['builder']} preset with backbone_overrides: {shape}")
    return 0
