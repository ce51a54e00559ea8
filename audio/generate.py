"""``mambaverse generate``: sample WAVs from a trained waveform model, plus a PNG grid of their spectrograms.

    mambaverse generate --config audio/configs/tiny_cpu.yaml --ckpt_path runs/audio_tiny/checkpoints/last.ckpt \
        --number 8 --digit 7 --temperature 1.0 --top_p 0.95 --seed 0 --out runs/audio_tiny/samples

Generation is autoregressive and batched through the model's recurrent ``step`` (a cache in every U-Net stage,
the prefix never re-run). On CUDA the step loop is captured as one CUDA graph per pooling period
(``--cuda_graph``, on by default there). Outputs: ``sample_000[_digit7].wav`` ... (16-bit PCM, mono, the
config's sample rate, written atomically) and ``spectrograms.png``. Reads the config with PyYAML, writes WAVs
with the standard library's ``wave``: neither soundfile nor omegaconf is needed.
"""
from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
import wave
from pathlib import Path

import numpy as np
import torch
import yaml

from mambaverse.atomic import atomic_write, check_writable_dir
from mambaverse.errors import MambaverseError
from .errors import AudioDataError


def write_pcm16_atomic(path: Path, audio: np.ndarray, sample_rate: int):
    """float waveform (L,) in [-1, 1] -> 16-bit PCM mono WAV, through a temporary file and a rename."""
    pcm = (np.clip(audio, -1.0, 32767 / 32768) * 32768).round().astype("<i2")

    def write(tmp):
        with open(tmp, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())

    atomic_write(path, write)


def save_spectrogram_grid(path: Path, clips: torch.Tensor, sample_rate: int, titles: list[str] | None = None,
                          n_mels: int = 80):
    """clips (N, L) float in [-1, 1] -> a PNG grid of their log-mel spectrograms (torchaudio), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=max(1, sample_rate // 200),
                                               n_mels=n_mels, pad_mode="constant")  # any clip length
    specs = torchaudio.transforms.AmplitudeToDB(top_db=80)(mel(clips.float().cpu()))
    n = clips.shape[0]
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(specs[k].numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(titles[k] if titles else f"sample {k}", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)


def read_config(path: str) -> dict:
    """The YAML config (LightningCLI layout) as a dict; AudioDataError if unreadable."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise AudioDataError(f"--config {path}: cannot read ({type(exc).__name__}); expected a YAML config") from None
    if not isinstance(cfg, dict):
        raise AudioDataError(f"--config {path}: expected a mapping with model/data sections")
    return cfg


def load_task(ckpt_path: str, map_location="cpu"):
    """A trained WaveformLM from a Lightning checkpoint (weights only: no pickled code is run)."""
    from .tasks import WaveformLM

    from mambaverse.cli import check_ckpt_path
    from mambaverse.errors import MambaverseError

    if not Path(ckpt_path).is_file():
        raise AudioDataError(f"--ckpt_path {ckpt_path}: not found; expected a Lightning .ckpt of a WaveformLM")
    try:  # the suite's checkpoint check: empty, truncated, not-a-checkpoint files -> one line naming the file
        check_ckpt_path(ckpt_path)
    except MambaverseError as err:
        raise AudioDataError(f"--{err}") from None
    try:
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
        hparams = dict(ckpt["hyper_parameters"])
        task = WaveformLM(**{k: v for k, v in hparams.items() if not k.startswith("_")})
        task.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError, OSError, EOFError, IndexError,
            pickle.UnpicklingError) as exc:
        # UnpicklingError: a pickle that is more than tensors (weights_only refused it, nothing ran)
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise AudioDataError(f"--ckpt_path {ckpt_path}: not a WaveformLM checkpoint "
                             f"({type(exc).__name__}: {first})") from None
    return task.eval()


def generate_clips(net, number: int, length: int, labels: torch.Tensor | None, temperature: float, top_p: float,
                   seed: int, device: torch.device, batch_size: int, cuda_graph: bool, progress: bool = True):
    """Sample ``number`` clips -> (codes (number, length) int64 on CPU, samples per second)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    if device.type == "cpu":  # a step is many tiny ops: thread hand-offs cost more than they save
        torch.set_num_threads(1)
    generator = torch.Generator(device=device).manual_seed(seed)
    out, start = [], time.perf_counter()
    bar = tqdm(total=number * length, unit="sample", unit_scale=True, disable=not progress, desc="generate",
               mininterval=1.0)
    for first in range(0, number, batch_size):
        b = min(batch_size, number - first)
        done = [0]

        def tick(n, b=b):
            bar.update((n - done[0]) * b)
            done[0] = n

        lab = None if labels is None else labels[first:first + b].to(device)
        out.append(net.generate(b, length, lab, temperature, top_p, generator, cuda_graph, callback=tick).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = number * length / (time.perf_counter() - start)
    bar.close()
    torch.set_num_threads(threads)
    return torch.cat(out), rate


def parse_device(name: str) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' -> a torch.device that exists here;
    AudioDataError (one line) for a name torch does not know or a CUDA device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AudioDataError(f"--device {name}: not a device name; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise AudioDataError(f"--device {name}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise AudioDataError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                             f"expected 'cpu' or 'auto'")
    return device


def main(argv: list[str] | None = None) -> int:
    """``mambaverse generate``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="mambaverse generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the audio YAML config the model was trained with")
    parser.add_argument("--ckpt_path", required=True, help="a Lightning checkpoint of that config's model")
    parser.add_argument("--number", "-n", type=int, default=8, help="clips to generate (default: 8)")
    parser.add_argument("--digit", type=int, default=None,
                        help="digit 0-9 for a class-conditional model (default: cycle through 0-9)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (default: 1, off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default: the config's clip)")
    parser.add_argument("--batch_size", type=int, default=64, help="streams generated together (default: 64)")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto' (default)")
    parser.add_argument("--cuda_graph", choices=["auto", "on", "off"], default="auto",
                        help="capture the step loop as a CUDA graph (auto: on for CUDA)")
    parser.add_argument("--out", default=None, help="output folder (default: <ckpt folder>/../samples)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.ckpt_path).resolve().parent.parent / "samples"
    try:
        check_writable_dir(out, "--out")  # before generating: one line now, not an error after the work
        cfg = read_config(args.config)
        data_args = ((cfg.get("data") or {}).get("init_args") or {})
        task = load_task(args.ckpt_path)
        rate = data_args.get("sample_rate", task.sample_rate)
        if rate != task.sample_rate:  # WAVs at another rate would play the model's clips at the wrong speed
            raise AudioDataError(f"--config {args.config}: data.init_args.sample_rate {rate!r}; expected the "
                                 f"checkpoint's sample_rate {task.sample_rate} Hz")
        seconds = args.seconds if args.seconds is not None else float(data_args.get("clip_seconds", 1.0))
        if not math.isfinite(seconds) or round(seconds * rate) < 1 or args.number < 1:
            raise AudioDataError(f"--seconds {seconds} --number {args.number}; expected positive values")
        length = round(seconds * rate)
        if args.batch_size < 1:
            raise AudioDataError(f"--batch_size {args.batch_size}; expected a positive number of streams")
        if not 0 < args.top_p <= 1 or not args.temperature >= 0 or not math.isfinite(args.temperature):
            raise AudioDataError(f"--top_p {args.top_p} --temperature {args.temperature}; expected 0 < top_p <= 1 "
                                 f"and a finite temperature >= 0")
        if args.digit is not None and not task.conditional:
            raise AudioDataError(f"--digit {args.digit}: this checkpoint's model is unconditional; "
                                 f"train with model.init_args.conditional: true to ask for a digit")
        if args.digit is not None and not 0 <= args.digit <= 9:
            raise AudioDataError(f"--digit {args.digit}; expected 0-9")
        labels = None
        if task.conditional:
            labels = (torch.full((args.number,), args.digit) if args.digit is not None
                      else torch.arange(args.number) % 10)
        device = parse_device(args.device)
        use_graph = device.type == "cuda" and args.cuda_graph != "off"
        net = task.net.to(device)
        codes, sps = generate_clips(net, args.number, length, labels, args.temperature, args.top_p, args.seed,
                                    device, args.batch_size, use_graph)
    except MambaverseError as err:  # the model's own checks (ShapeError) as well as ours
        print(f"mambaverse: error: {err}", file=sys.stderr)
        return 2
    from .data import mu_law_decode

    audio = mu_law_decode(codes, net.n_classes)
    titles = []
    for k in range(args.number):
        tag = f"_digit{int(labels[k])}" if labels is not None else ""
        write_pcm16_atomic(out / f"sample_{k:03d}{tag}.wav", audio[k].numpy(), rate)
        titles.append(f"sample {k}" + (f" (asked {int(labels[k])})" if labels is not None else ""))
    save_spectrogram_grid(out / "spectrograms.png", audio, rate, titles)
    print(f"wrote {args.number} clips of {length} samples at {rate} Hz and spectrograms.png to {out}; "
          f"{sps:.0f} samples/s on {device} ({sps / rate:.2f} s of audio per second, all streams)"
          + (", CUDA graph" if use_graph else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
