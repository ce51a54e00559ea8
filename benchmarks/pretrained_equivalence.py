"""Converted checkpoints compute what their own code computes: mamba-ssm's MambaLMHeadModel (Mamba-1 and
Mamba-2) and, given its source, Caduceus (PS and Ph), each with random weights, saved in its own format,
converted with `mambaverse convert`, and compared output against output on the same input.

    # on the GPU machine (mamba-ssm wheel from ../shared/gpu/wheels; Caduceus' source kept outside the repo)
    python3 -m pip install -q --no-deps --target /tmp/anchor ../shared/gpu/wheels/*.whl
    PYTHONPATH=/tmp/anchor python3 benchmarks/pretrained_equivalence.py --caduceus runs/caduceus_src \
        --out benchmarks/results/pretrained_equivalence.md

    # where runs/caduceus_src/caduceus/ holds the `caduceus` package of kuleshov-group/caduceus (runs/ is
    # git-ignored: carry it to the GPU machine). From a fetched mirror of that repository:
    #   mkdir -p runs/caduceus_src && git --git-dir=MIRROR archive HEAD caduceus | tar -x -C runs/caduceus_src

Sizes are those of the released models (mamba-130m / mamba2-130m: d_model 768, 24 layers; Caduceus 131k:
d_model 256, 16 layers), fp32, batch 2 x 1024 tokens. For each of our backends the table gives the largest
absolute difference of the logits (Caduceus: of the backbone's output features) relative to their largest
magnitude. ``--smoke`` shrinks everything for a CPU run (with CPU stand-ins for the CUDA parts on PYTHONPATH).
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def _perturb(model, scale):
    """Their initialisation leaves norms at 1 and biases at 0; perturb every parameter so that all are tested."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.detach().float().std().clamp_min(0.02) * torch.randn_like(p))


def _compare(theirs: torch.Tensor, ours: torch.Tensor) -> tuple[float, float]:
    diff = (theirs.float() - ours.float()).abs().max().item()
    return diff, diff / theirs.float().abs().max().clamp_min(1e-12).item()


def mamba_ssm_rows(args, device, backends, tmp: Path):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    import mambaverse as mv
    from mambaverse.pretrained.cli import main as convert

    rows = []
    for layer in ("Mamba1", "Mamba2"):
        if args.smoke:
            ssm = {"layer": layer, "d_state": 16, "headdim": 16, "chunk_size": 16} if layer == "Mamba2" else {"layer": layer}
            cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=50, ssm_cfg=ssm)
        else:  # state-spaces/mamba-130m and mamba2-130m
            cfg = MambaConfig(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg={"layer": layer}, rms_norm=True,
                              residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
        torch.manual_seed(0)
        ref = MambaLMHeadModel(cfg, device=device, dtype=torch.float32).eval()
        _perturb(ref, 0.05)
        folder = tmp / f"mamba_ssm_{layer}"
        ref.save_pretrained(str(folder))  # their own writer: config.json + pytorch_model.bin
        convert([str(folder), str(tmp / f"ours_{layer}")])
        ids = torch.randint(0, cfg.vocab_size, (2, args.length), device=device)
        with torch.no_grad():
            theirs = ref(ids).logits
            for backend in backends:
                ours = mv.from_pretrained(tmp / f"ours_{layer}", backend=backend).to(device).eval()
                diff, rel = _compare(theirs, ours(ids))
                rows.append((f"mamba-ssm MambaLMHeadModel ({layer}, d_model {cfg.d_model}, {cfg.n_layer} layers)",
                             backend, diff, rel))
                print(rows[-1], flush=True)
                del ours
        del ref
    return rows


def caduceus_rows(args, device, backends, tmp: Path):
    sys.path.insert(0, str(Path(args.caduceus).resolve()))
    from caduceus.configuration_caduceus import CaduceusConfig
    from caduceus.modeling_caduceus import CaduceusForMaskedLM

    import mambaverse as mv
    from mambaverse.pretrained.cli import main as convert

    tie = CaduceusForMaskedLM.tie_weights
    # Caduceus predates transformers 5, whose post_init passes a keyword to tie_weights
    CaduceusForMaskedLM.tie_weights = lambda self, *a, **k: tie(self)
    complement = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 9, 9: 8, 10: 7, 11: 11}  # their tokenizer
    rows = []
    for rcps in (True, False):
        d, n = (16, 2) if args.smoke else (256, 16) if rcps else (256, 4)
        cfg = CaduceusConfig(d_model=d, n_layer=n, vocab_size=12, ssm_cfg={"d_state": 16, "d_conv": 4, "expand": 2},
                             rms_norm=True, fused_add_norm=True, residual_in_fp32=False,
                             pad_vocab_size_multiple=8, bidirectional=True, bidirectional_strategy="add",
                             bidirectional_weight_tie=True, rcps=rcps, complement_map=dict(complement))
        torch.manual_seed(0)
        ref = CaduceusForMaskedLM(cfg).to(device).eval()
        _perturb(ref, 0.05)
        folder = tmp / f"caduceus_{'ps' if rcps else 'ph'}"
        folder.mkdir()
        ref.config.save_pretrained(folder)
        torch.save(ref.state_dict(), folder / "pytorch_model.bin")  # tied tensors stay shared, as a .bin holds them
        convert([str(folder), str(tmp / f"ours_{folder.name}")])
        ids = torch.randint(7, 11, (2, args.length), device=device)
        name = (f"Caduceus-{'PS' if rcps else 'Ph'} (d_model {d}, {n} layers, fused_add_norm "
                f"{cfg.fused_add_norm}): backbone features")
        with torch.no_grad():
            embeddings = ref.caduceus.backbone.embeddings(ids)
            theirs = ref.caduceus(input_ids=ids, return_dict=False)
            theirs = theirs[0] if isinstance(theirs, tuple) else theirs
            for backend in backends:
                ours = mv.from_pretrained(tmp / f"ours_{folder.name}", backend=backend).to(device).eval()
                diff, rel = _compare(theirs, ours(embeddings))
                rows.append((name, backend, diff, rel))
                print(rows[-1], flush=True)
                del ours
        del ref
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caduceus", help="folder holding Caduceus' `caduceus/` package source (kept outside git)")
    parser.add_argument("--out", help="write the results table (Markdown) here")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true", help="tiny models, CPU; checks the script only")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.length = min(args.length, 37)
    if device == "cuda":  # fp32 matmuls, not TF32: the comparison is of the algorithms
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    backends = ["auto", "torch"] if device == "cuda" else ["torch", "naive"]
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = mamba_ssm_rows(args, device, backends, Path(tmp))
        if args.caduceus:
            rows += caduceus_rows(args, device, backends, Path(tmp))
    import mambaverse

    try:
        import mamba_ssm
        anchor = getattr(mamba_ssm, "__version__", "?")
    except ImportError:
        anchor = "absent"
    device_name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU"
    lines = ["# Converted checkpoints against their own code", "",
             f"{datetime.date.today()} · {device_name} · torch {torch.__version__} · mamba-ssm {anchor} · "
             f"mambaverse {mambaverse.__version__} · fp32 (TF32 off) · batch 2 x {args.length} tokens · "
             f"{time.time() - start:.0f} s{' · SMOKE (CPU stand-ins, tiny sizes)' if args.smoke else ''}", "",
             "Random weights (every parameter perturbed), saved by the reference's own code, converted with "
             "`mambaverse convert`, loaded with `mambaverse.from_pretrained(..., backend=...)`; "
             "`auto` is our GPU path (Triton scan; mamba-ssm's SSD kernel for Mamba-2 when installed).", "",
             "| checkpoint | our backend | max abs diff | / max abs value |", "|---|---|---|---|"]
    lines += [f"| {name} | {backend} | {diff:.2e} | {rel:.2e} |" for name, backend, diff, rel in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    worst = max(rel for *_, rel in rows)
    return 0 if math.isfinite(worst) and worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
