"""Autoregressive audio generation speed (and, with --gpu, a short SC09-style training run with IS).

What it measures, for the SaShiMi-style Mamba U-Net (``mambaverse.audio``) generating through its recurrent
``step`` (a cache in every stage; the prefix is never re-run):

- samples/s (all streams together) and real-time factor (seconds of 16 kHz audio made per second of wall
  clock, all streams) at batch 1, 16, 64 and 256;
- CPU: the tiny and the 6M preset, beside a flat stack of core ``CausalBackbone`` Mamba blocks stepping with the
  same core ``step`` (same parameter count as the 6M U-Net) as the in-run reference;
- GPU (``--gpu``): the 6M preset eager and as a captured CUDA graph, beside mamba-ssm's own CUDA-graph decoding
  (``MambaLMHeadModel.generate(cg=True)``) of two plain Mamba stacks: one with the same parameter count (d_model
  256, 14 layers) and one with the same block count and finest width (d_model 64, 40 layers). Before timing, it
  checks that CUDA-graph greedy decoding returns exactly the eager tokens. Then it trains ``sashimi_mamba_6m``
  (digit-conditional, bf16) for ``--train-seconds`` on the packed synthetic set, trains the digit classifier,
  generates 256 clips through the CUDA graph, and writes the metrics table (real test clips vs generated, NLL),
  a spectrogram grid and a few WAVs.

Commands:
    python benchmarks/audio_generation.py                       # CPU -> benchmarks/results/audio_generation_cpu.md
    python benchmarks/audio_generation.py --smoke               # every code path, tiny sizes, on CPU (a minute)
    python benchmarks/audio_generation.py --gpu --data data/sc09_packed.npz --out $OUT   # one GPU job, < 8 min
The GPU job needs no soundfile, omegaconf or jsonargparse: data comes packed (``mambaverse audio-data --pack``),
WAVs are written with the standard library. mamba-ssm (and causal-conv1d) are optional: without them the anchor
rows say so.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

RATE = 16000


def versions() -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "mamba_ssm", "causal_conv1d", "lightning", "timm", "torchmetrics"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: report as such
            out[name] = "absent"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.1f}: the cores are shared)")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_unet(model, batch: int, steps: int, device, cuda_graph: bool, repeats: int = 1) -> float:
    """Samples/s (all streams) of model.generate(batch, steps); the best of ``repeats`` after one warm-up.
    With cuda_graph the (per-call) capture of one pooling period is inside the timed call."""
    labels = (torch.arange(batch) % 10).to(device) if model.n_conditions else None
    model.generate(batch, model.period * 2, labels, cuda_graph=cuda_graph)  # warm-up: allocator, kernels, cuBLAS
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        model.generate(batch, steps, labels, cuda_graph=cuda_graph)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return batch * steps / best


class FlatStack(torch.nn.Module):
    """The in-run CPU reference: embedding -> core CausalBackbone -> linear head, stepping with the core step."""

    def __init__(self, d_model, n_layer):
        super().__init__()
        from mambaverse.backbones import CausalBackbone

        self.embed = torch.nn.Embedding(257, d_model)
        self.backbone = CausalBackbone(d_model=d_model, n_layer=n_layer)
        self.head = torch.nn.Linear(d_model, 256)

    @torch.no_grad()
    def generate(self, batch, steps):
        cache = self.backbone.allocate_cache(batch)
        prev = torch.full((batch,), 256, dtype=torch.long)
        for _ in range(steps):
            logits = self.head(self.backbone.step(self.embed(prev), cache))
            prev = torch.distributions.Categorical(logits=logits).sample()
        return prev


def time_flat(model, batch, steps) -> float:
    model.generate(batch, 8)
    start = time.perf_counter()
    model.generate(batch, steps)
    return batch * steps / (time.perf_counter() - start)


def anchor_mamba_ssm(d_model: int, n_layer: int, batch: int, steps: int, device) -> float | str:
    """Samples/s of mamba-ssm's MambaLMHeadModel.generate(cg=True) (its CUDA-graph decoding), sampling the full
    distribution (top_k=0, top_p=0, temperature 1), fp32 like ours; or the reason it could not run."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except Exception as exc:  # noqa: BLE001
        return f"mamba-ssm not importable ({type(exc).__name__})"
    key = (d_model, n_layer)
    ids = torch.full((batch, 1), 128, dtype=torch.long, device=device)
    kwargs = dict(cg=True, top_k=0, top_p=0.0, temperature=1.0)
    errors = []
    for fused in (True, False):  # its fused add+norm needs its Triton layer norm; plain norms otherwise
        try:
            if key not in _ANCHORS:
                torch.manual_seed(0)
                cfg = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=256, ssm_cfg={"layer": "Mamba1"},
                                  rms_norm=True, residual_in_fp32=True, fused_add_norm=fused,
                                  pad_vocab_size_multiple=8)
                _ANCHORS[key] = MambaLMHeadModel(cfg, device=device, dtype=torch.float32).eval()
            model = _ANCHORS[key]
            # same batch and max_length as the timed call, so that its captured graph is reused, not re-captured
            model.generate(ids, max_length=1 + steps, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - report, then try the unfused model
            errors.append(f"fused_add_norm={fused}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            _ANCHORS.pop(key, None)
    else:
        return "failed: " + "; ".join(errors)
    sync(device)
    start = time.perf_counter()
    out = model.generate(ids, max_length=1 + steps, **kwargs)
    sync(device)
    seq = out if torch.is_tensor(out) else out.sequences
    assert seq.shape[1] == 1 + steps, seq.shape
    return batch * steps / (time.perf_counter() - start)


_ANCHORS: dict = {}


def anchor_params(d_model, n_layer):
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        m = _ANCHORS.get((d_model, n_layer))
        return sum(p.numel() for p in m.parameters()) if m is not None else None
    except Exception:  # noqa: BLE001
        return None


def fmt_rate(x):
    return f"{x:,.0f}" if isinstance(x, (int, float)) else str(x)


def check_graph_parity(model, device, steps: int) -> str:
    """Greedy decoding through the CUDA graph must give exactly the eager tokens."""
    labels = (torch.arange(4) % 10).to(device) if model.n_conditions else None
    eager = model.generate(4, steps, labels, temperature=0.0, cuda_graph=False)
    graph = model.generate(4, steps, labels, temperature=0.0, cuda_graph=True)
    same = float((eager == graph).double().mean())
    if same != 1.0:
        raise SystemExit(f"CUDA-graph decoding differs from eager decoding: {same:.4f} of tokens equal")
    return f"CUDA-graph greedy decoding equals eager decoding on {steps} steps x 4 streams (all tokens equal)"


def speed_table(device, batches, steps, smoke) -> list[str]:
    from mambaverse import create_model

    lines = ["| model | params | batch | mode | samples/s | x real time (all streams) | s to make `batch` 1-s clips |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    presets = ["sashimi_mamba_tiny"] if smoke else (["sashimi_mamba_tiny", "sashimi_mamba_6m"] if device.type == "cpu"
                                                      else ["sashimi_mamba_6m"])
    results = {}
    for name in presets:
        torch.manual_seed(0)
        model = create_model(name, n_conditions=10).to(device).eval()
        n_params = sum(p.numel() for p in model.parameters())
        modes = ["eager"]
        if device.type == "cuda":
            try:
                notes.append(check_graph_parity(model, device, 4 * model.period))
                modes.append("cuda graph")
            except Exception as exc:  # noqa: BLE001 - keep the eager numbers, say why the graph is missing
                notes.append(f"CUDA graph unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
        for batch in batches:
            for mode in modes:
                try:
                    rate = time_unet(model, batch, steps, device, mode == "cuda graph")
                except Exception as exc:  # noqa: BLE001
                    rate = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                results[(name, batch, mode)] = rate
                ok = isinstance(rate, float)
                lines.append(f"| {name} (ours) | {n_params / 1e6:.2f}M | {batch} | {mode} | {fmt_rate(rate)} | "
                             f"{f'{rate / RATE:.3f}' if ok else '-'} | {f'{RATE * batch / rate:.2f}' if ok else '-'} |")
                print(lines[-1], flush=True)
    if device.type == "cpu":
        d, n = (32, 2) if smoke else (256, 14)
        flat = FlatStack(d, n).eval()
        n_params = sum(p.numel() for p in flat.parameters())
        for batch in batches:
            rate = time_flat(flat, batch, max(8, steps // 4))
            results[("flat", batch, "eager")] = rate
            lines.append(f"| flat core CausalBackbone d={d} x{n} (reference) | {n_params / 1e6:.2f}M | {batch} | eager "
                         f"| {fmt_rate(rate)} | {rate / RATE:.3f} | {RATE * batch / rate:.2f} |")
            print(lines[-1], flush=True)
        if not smoke:
            for batch in batches:
                notes.append(f"batch {batch}: 6M U-Net / flat stack of the same size = "
                             f"{results[('sashimi_mamba_6m', batch, 'eager')] / results[('flat', batch, 'eager')]:.2f}x")
    else:
        for d, n in ((256, 14), (64, 40)):
            for batch in batches:
                rate = anchor_mamba_ssm(d, n, batch, steps, device)
                results[(f"mamba_ssm_{d}x{n}", batch, "cg")] = rate
                p = anchor_params(d, n)
                lines.append(f"| mamba-ssm MambaLMHeadModel d={d} x{n} (anchor) | "
                             f"{'-' if p is None else f'{p / 1e6:.2f}M'} | {batch} | generate(cg=True) | "
                             f"{fmt_rate(rate)} | {f'{rate / RATE:.3f}' if isinstance(rate, float) else '-'} | "
                             f"{f'{RATE * batch / rate:.2f}' if isinstance(rate, float) else '-'} |")
                print(lines[-1], flush=True)
        for batch in batches:
            ours = results.get(("sashimi_mamba_6m", batch, "cuda graph"))
            for d, n in ((256, 14), (64, 40)):
                anchor = results.get((f"mamba_ssm_{d}x{n}", batch, "cg"))
                if isinstance(ours, float) and isinstance(anchor, float):
                    notes.append(f"batch {batch}: ours (CUDA graph) / mamba-ssm d={d} x{n} (cg) = {ours / anchor:.2f}x")
    return lines + [""] + [f"- {n}" for n in notes]


def train_and_score(args, device) -> list[str]:
    """Train the 6M preset (tiny with --smoke) for a fixed time, then NLL, classifier, generation, metrics."""
    import lightning.pytorch as pl

    from mambaverse.audio.data import WavDataModule, mu_law_decode
    from mambaverse.audio.generate import save_spectrogram_grid, write_pcm16_atomic
    from mambaverse.audio.metrics import accuracy, format_table, probabilities_and_features, score, train_classifier
    from mambaverse.audio.tasks import WaveformLM

    out = Path(args.out)
    smoke = args.smoke
    pl.seed_everything(0, verbose=False)
    dm = WavDataModule(args.data, batch_size=4 if smoke else 16, num_workers=0 if smoke else 2,
                       train_crop=512 if smoke else None, eval_crop=512 if smoke else None,
                       max_files=40 if smoke else None)
    dm.setup()
    overrides = {"d_model": 16} if smoke else None
    task = WaveformLM("sashimi_mamba_tiny" if smoke else "sashimi_mamba_6m", overrides, conditional=True,
                      lr=2e-3, warmup_steps=5 if smoke else 200)
    trainer = pl.Trainer(accelerator=device.type if device.type == "cpu" else "gpu", devices=1,
                         precision="32-true" if device.type == "cpu" else "bf16-mixed",
                         max_time=datetime.timedelta(seconds=args.train_seconds), max_epochs=10 ** 6,
                         max_steps=4 if smoke else -1, gradient_clip_val=1.0, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(out / "audio_run"))
    start = time.perf_counter()
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    train_s, steps_done = time.perf_counter() - start, trainer.global_step
    net = task.net.to(device).eval()
    test = dm.splits["test"]
    n_nll = 8 if smoke else 64
    codes, labels = test.codes[:n_nll].long(), test.labels[:n_nll]
    with torch.no_grad():
        nll = sum(float(net.nll(codes[i:i + 8].to(device), labels[i:i + 8].to(device))) * len(codes[i:i + 8])
                  for i in range(0, n_nll, 8)) / n_nll
    wav = {k: mu_law_decode(v.codes.long()) for k, v in dm.splits.items()}
    lab = {k: v.labels for k, v in dm.splits.items()}
    clf, info = train_classifier(wav["train"], lab["train"], wav["val"], lab["val"], device=device,
                                 epochs=1 if smoke else 12, batch_size=64)
    info["test_acc"] = accuracy(clf, wav["test"], lab["test"])
    n_gen = 8 if smoke else 256
    length = 256 if smoke else RATE
    asked = torch.arange(n_gen) % 10
    torch.manual_seed(0)
    sync(device)
    start = time.perf_counter()
    try:
        gen_codes = net.generate(n_gen, length, asked.to(device), cuda_graph=device.type == "cuda").cpu()
    except Exception as exc:  # noqa: BLE001 - a failed capture must not cost the run: decode eagerly
        print(f"CUDA-graph generation failed ({type(exc).__name__}: {exc}); generating eagerly", file=sys.stderr)
        gen_codes = net.generate(n_gen, length, asked.to(device), cuda_graph=False).cpu()
    sync(device)
    gen_s = time.perf_counter() - start
    gen = mu_law_decode(gen_codes)
    if length < RATE:
        gen = torch.nn.functional.pad(gen, (0, RATE - length))
    train_probs, _ = probabilities_and_features(clf, wav["train"])
    rows = [("real test clips (ceiling)", score(clf, wav["train"], wav["test"], lab["test"], train_probs)),
            (f"generated, {n_gen} clips asked for digits 0-9", {**score(clf, wav["train"], gen, asked, train_probs),
                                                                 "NLL": nll})]
    for k in range(min(10, n_gen)):
        write_pcm16_atomic(out / "audio_samples" / f"sample_{k:03d}_digit{int(asked[k])}.wav", gen[k].numpy(), RATE)
    try:
        save_spectrogram_grid(out / "audio_samples" / "spectrograms.png", gen[:16],
                              RATE, [f"asked {int(a)}" for a in asked[:16]])
    except ImportError as exc:  # matplotlib is not on every GPU machine; the WAVs and the table still count
        print(f"no spectrogram PNG: {exc}", file=sys.stderr)
    return [f"Training: {'tiny (smoke)' if smoke else 'sashimi_mamba_6m'}, digit-conditional, "
            f"{steps_done} steps in {train_s:.0f} s (batch {dm.batch_size}, whole 1 s clips unless smoke); "
            f"generation of {n_gen} clips x {length} samples: {gen_s:.1f} s "
            f"({n_gen * length / gen_s:,.0f} samples/s{', CUDA graph' if device.type == 'cuda' else ''}).", "",
            format_table(rows, info)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run on CUDA: speed vs mamba-ssm, then train + IS")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every code path, for a quick check")
    parser.add_argument("--steps", type=int, default=None, help="decoding steps per timing (default 1024 GPU, 256 CPU)")
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steps are tiny ops)")
    parser.add_argument("--data", default="data/sc09_packed.npz", help="packed set for --gpu training (--pack)")
    parser.add_argument("--train-seconds", type=float, default=180.0)
    parser.add_argument("--no-train", action="store_true", help="speed table only")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the table, WAVs and PNG")
    args = parser.parse_args(argv)
    if args.smoke and args.out == "benchmarks/results":
        args.out = "/tmp/mambaverse_audio_smoke_out"  # a smoke run's numbers are no result to commit
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: CUDA is not available")
    batches = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        batches = [1, 4]
    steps = args.steps or (32 if args.smoke else 1024 if args.gpu else 256)
    started = datetime.datetime.now(datetime.timezone.utc)
    report = [f"# Audio generation: SaShiMi-style Mamba U-Net{' (smoke run)' if args.smoke else ''}", "",
              f"- device: {device_name(device)}", f"- versions: {json.dumps(versions())}",
              f"- date (UTC): {started:%Y-%m-%d %H:%M}", f"- command: python benchmarks/audio_generation.py "
              f"{' '.join(sys.argv[1:] if argv is None else argv)}",
              f"- {steps} decoding steps per timing, digit-conditional models, fp32, temperature 1, full "
              f"distribution; 'x real time' = samples/s / 16000 (all streams together).", ""]
    report += speed_table(device, batches, steps, args.smoke)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "audio_generation_" + ("smoke" if args.smoke else "gpu" if args.gpu else "cpu") + ".md"
    (out / name).write_text("\n".join(report) + "\n\n(speed table only so far)\n")  # kept if training fails
    if args.gpu or args.smoke:
        if not args.no_train:
            if not Path(args.data).exists() and args.smoke:
                from mambaverse.audio.synth import build

                build("/tmp/mambaverse_audio_smoke", n_voices=10, progress=False)
                args.data = "/tmp/mambaverse_audio_smoke"
            report += ["", "## Short training run and SC09-style metrics", ""]
            try:
                report += train_and_score(args, device)
            except Exception as exc:  # noqa: BLE001 - keep the speed table; say what failed
                import traceback

                traceback.print_exc()
                report.append(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    report.append(f"\nTotal wall time: {(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds():.0f} s")
    text = "\n".join(report) + "\n"
    print(text)
    tmp = out / (name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
