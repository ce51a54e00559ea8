"""SC09-style metrics for generated spoken digits: a digit classifier on mel spectrograms, and FID, IS, mIS, AM.

Definitions (those SaShiMi, Goel et al. 2022, and DiffWave, Kong et al. 2021, report for SC09), with p(y|x) the
classifier's softmax and f(x) its penultimate features:

- **FID** (Heusel et al. 2017): Frechet distance between Gaussians fitted to f(x) of the training clips (the
  reference) and of the evaluated clips. torchmetrics' ``FrechetInceptionDistance`` with our feature module.
- **IS** (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), one split. torchmetrics' ``InceptionScore``.
- **mIS** (Gurumurthy et al. 2017): exp(E_{x_i, x_j} KL(p(y|x_i) || p(y|x_j))) over independent pairs; computed
  exactly over all pairs here (no library has it).
- **AM** (Zhou et al. 2018): KL(E_train p(y|x) || E_gen p(y|x)) + E_gen H(p(y|x)); lower is better (no library
  has it).

The classifier is a small timm CNN (``resnet10t`` by default, one input channel) on torchaudio log-mel
spectrograms, trained on the training split; its test accuracy is reported with the table.

Command: ``python -m mambaverse.audio.metrics --data data/sc09_synth --samples runs/audio_tiny/samples``
(``--help``). It trains the classifier once (``--classifier`` path, reused when present), then prints one table:
the real test clips (the ceiling), each folder of generated clips, and the model's test NLL if ``--config`` and
``--ckpt_path`` are given.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaverse.atomic import atomic_write, write_set
from .errors import AudioDataError


class DigitClassifier(nn.Module):
    """Waveform (B, L) float at ``sample_rate`` -> digit logits (B, num_classes).

    Log-mel front end (torchaudio ``MelSpectrogram`` with 40 ms windows and a ``hop_ms`` hop, ``AmplitudeToDB``,
    floor 1e-10 so silence gives a finite -100 dB, never NaN), a learned input BatchNorm, then a timm CNN with one
    input channel. ``features`` gives the penultimate (pre-logits) features (B, num_features) used for FID.
    """

    def __init__(self, arch: str = "resnet10t", sample_rate: int = 16000, n_mels: int = 40, num_classes: int = 10,
                 hop_ms: int = 20):
        super().__init__()
        import timm
        import torchaudio

        self.arch, self.sample_rate, self.n_mels, self.num_classes = arch, sample_rate, n_mels, num_classes
        self.hop_ms = hop_ms
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, win_length=sample_rate // 25,
                                                        hop_length=sample_rate * hop_ms // 1000, n_mels=n_mels,
                                                        pad_mode="constant")
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
        self.input_norm = nn.BatchNorm2d(1)
        self.net = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=num_classes)
        self.num_features = getattr(self.net, "head_hidden_size", None) or self.net.num_features

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, L) -> normalised log-mel (B, 1, n_mels, frames)."""
        return self.input_norm(self.to_db(self.mel(wav.float())).unsqueeze(1))

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(self.spectrogram(wav)), pre_logits=True)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.net(self.spectrogram(wav))


class _Features(nn.Module):
    """The classifier's penultimate features as a module, for torchmetrics' FID (``num_features`` declared)."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, wav):
        return self.classifier.features(wav)


def save_classifier(classifier: DigitClassifier, path: str | Path, info: dict):
    """Weights (safetensors) + a JSON header of its settings, written through temporary files and renames."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    header = {"arch": classifier.arch, "sample_rate": classifier.sample_rate, "n_mels": classifier.n_mels,
              "num_classes": classifier.num_classes, "hop_ms": classifier.hop_ms, **info}
    write_set(path, {"model.safetensors": lambda p: save_file(state, str(p)),
                     "classifier.json": lambda p: Path(p).write_text(json.dumps(header, indent=2))},
              error=AudioDataError)


def load_classifier(path: str | Path, map_location="cpu") -> tuple[DigitClassifier, dict]:
    """A classifier saved by ``save_classifier`` -> (classifier in eval mode, its info dict)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "classifier.json").is_file() or not (path / "model.safetensors").is_file():
        raise AudioDataError(f"{path}: no saved digit classifier; expected classifier.json and model.safetensors")
    info = json.loads((path / "classifier.json").read_text())
    clf = DigitClassifier(info["arch"], info["sample_rate"], info["n_mels"], info["num_classes"], info["hop_ms"])
    clf.load_state_dict(load_file(str(path / "model.safetensors"), device=str(map_location)))
    return clf.eval(), info


def _batches(n, batch_size):
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


@torch.no_grad()
def accuracy(classifier: DigitClassifier, wavs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of wavs (N, L) float classified as labels (N,)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    hits = sum(int((classifier(wavs[s].to(device)).argmax(-1).cpu() == labels[s]).sum())
               for s in _batches(len(wavs), batch_size))
    return hits / max(1, len(wavs))


def train_classifier(train_wavs, train_labels, val_wavs, val_labels, arch: str = "resnet10t",
                     sample_rate: int = 16000, epochs: int = 8, batch_size: int = 64, lr: float = 2e-3,
                     device="cpu", seed: int = 0, log=print) -> tuple[DigitClassifier, dict]:
    """Train a DigitClassifier on wavs (N, L) float / labels (N,) int64 with AdamW + cosine schedule and random
    time shifts (up to 0.1 s, circular) as augmentation; keep the epoch with the best validation accuracy.
    Returns (classifier in eval mode, {"val_acc", "epochs", "seconds"})."""
    torch.manual_seed(seed)
    clf = DigitClassifier(arch, sample_rate).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * max(1, len(train_wavs) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    best, best_state, start = -1.0, None, time.perf_counter()
    max_shift = sample_rate // 10
    for epoch in range(epochs):
        clf.train()
        order = torch.randperm(len(train_wavs))
        for s in _batches(len(order) - len(order) % batch_size or len(order), batch_size):
            idx = order[s]
            x = train_wavs[idx].to(device)
            x = torch.roll(x, int(torch.randint(-max_shift, max_shift + 1, ())), dims=1)
            loss = F.cross_entropy(clf(x), train_labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch < steps - 1:
                sched.step()
        acc = accuracy(clf, val_wavs, val_labels)
        log(f"classifier epoch {epoch + 1}/{epochs}: train loss {loss.item():.3f}, val acc {acc:.3f}")
        if acc > best:
            best, best_state = acc, {k: v.detach().clone() for k, v in clf.state_dict().items()}
    clf.load_state_dict(best_state)
    return clf.eval(), {"arch": arch, "val_acc": best, "epochs": epochs,
                        "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def probabilities_and_features(classifier: DigitClassifier, wavs: torch.Tensor, batch_size: int = 256):
    """wavs (N, L) -> (p(y|x) (N, C) float64, features (N, F) float64), on the classifier's device, CPU out."""
    classifier.eval()
    device = next(classifier.parameters()).device
    probs, feats = [], []
    for s in _batches(len(wavs), batch_size):
        f = classifier.features(wavs[s].to(device))
        # softmax in float64: a confident classifier's small probabilities stay representable for mIS and AM
        probs.append(classifier.net.get_classifier()(f).double().softmax(-1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(probs), torch.cat(feats)


def modified_inception_score(probs: torch.Tensor) -> float:
    """mIS = exp(E_{i,j} KL(p_i || p_j)) over all ordered pairs (i, j) of probs (N, C), exactly: the mean of
    sum_c p_ic (log p_ic - log p_jc) over i and j is mean_i sum p_i log p_i - (mean_i p_i) . (mean_j log p_j)."""
    logp = probs.clamp_min(1e-300).log()
    exponent = float((probs * logp).sum(-1).mean() - (probs.mean(0) * logp.mean(0)).sum())
    return math.exp(exponent) if exponent < 700 else math.inf  # a near-one-hot classifier can reach e^700


def am_score(train_probs: torch.Tensor, probs: torch.Tensor) -> float:
    """AM = KL(mean train p(y|x) || mean p(y|x)) + mean entropy of p(y|x); lower is better."""
    p_train, p_gen = train_probs.mean(0), probs.mean(0).clamp_min(1e-300)
    kl = float((p_train * (p_train.clamp_min(1e-300).log() - p_gen.log())).sum())
    entropy = float(-(probs * probs.clamp_min(1e-300).log()).sum(-1).mean())
    return kl + entropy


def score(classifier: DigitClassifier, train_wavs: torch.Tensor, wavs: torch.Tensor,
          labels: torch.Tensor | None = None, train_probs: torch.Tensor | None = None, batch_size: int = 256) -> dict:
    """FID (vs the training clips), IS, mIS, AM of wavs (N, L) under ``classifier``; plus the accuracy when labels
    (N,) are known (for generated clips: the digit asked for). N >= 2."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    if len(wavs) < 2:
        raise AudioDataError(f"metrics: {len(wavs)} clip(s); expected at least 2 to fit a covariance")
    device = next(classifier.parameters()).device
    classifier.eval()
    fid = FrechetInceptionDistance(feature=_Features(classifier), reset_real_features=False).to(device)
    inception = InceptionScore(feature=classifier, splits=1).to(device)
    with torch.no_grad():
        for s in _batches(len(train_wavs), batch_size):
            fid.update(train_wavs[s].to(device), real=True)
        for s in _batches(len(wavs), batch_size):
            fid.update(wavs[s].to(device), real=False)
            inception.update(wavs[s].to(device))
    probs, _ = probabilities_and_features(classifier, wavs, batch_size)
    if train_probs is None:
        train_probs, _ = probabilities_and_features(classifier, train_wavs, batch_size)
    out = {"n": len(wavs), "FID": float(fid.compute()), "IS": float(inception.compute()[0]),
           "mIS": modified_inception_score(probs), "AM": am_score(train_probs, probs)}
    if labels is not None and bool((labels >= 0).all()):
        out["digit_acc"] = float((probs.argmax(-1) == labels).double().mean())
    return out


def format_table(rows: list[tuple[str, dict]], classifier_info: dict) -> str:
    """Markdown table: one row per (name, metrics) with NLL, FID, IS, mIS, AM, digit accuracy."""
    def cell(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    lines = ["| clips | n | NLL (bits/sample) | FID (lower is better) | IS | mIS | AM (lower is better) | digit acc |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['n']} | {cell(m.get('NLL'), '.3f')} | {cell(m['FID'], '.2f')} | "
                     f"{cell(m['IS'], '.2f')} | {cell(m['mIS'], '.4g')} | {cell(m['AM'], '.3f')} | "
                     f"{cell(m.get('digit_acc'), '.3f')} |")
    lines.append(f"\nClassifier: timm {classifier_info.get('arch')} on log-mel spectrograms, test accuracy "
                 f"{classifier_info.get('test_acc', float('nan')):.3f} (val {classifier_info.get('val_acc', float('nan')):.3f}).")
    return "\n".join(lines)


def read_generated(folder: str | Path, sample_rate: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated WAVs of a folder -> (wavs (N, length) float, asked digits (N,) int64, -1 if unknown); the digit
    is read from ``digit<k>`` in the file name (as ``mambaverse generate`` names them) or from the usual labels."""
    from .data import label_of, list_wavs, read_wav

    files = list_wavs(folder)
    wavs = torch.stack([read_wav(f, sample_rate, length) for f in files])
    labels = []
    for f in files:
        m = re.search(r"digit(\d)", f.stem)
        labels.append(int(m.group(1)) if m else (label_of(f) if label_of(f) is not None else -1))
    return wavs, torch.tensor(labels)


def _decode(codes: torch.Tensor) -> torch.Tensor:
    from .data import mu_law_decode

    return mu_law_decode(codes.long())


def main(argv: list[str] | None = None) -> int:
    """``python -m mambaverse.audio.metrics`` (or ``mambaverse audio-metrics``): see the module docstring."""
    parser = argparse.ArgumentParser(prog="mambaverse audio-metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the WAV folder with train/valid/test (e.g. data/sc09_synth)")
    parser.add_argument("--samples", nargs="*", default=[], help="folders of generated WAVs to score")
    parser.add_argument("--classifier", default="runs/audio_classifier",
                        help="where the classifier is saved; trained there first if absent (default: %(default)s)")
    parser.add_argument("--arch", default="resnet10t", help="timm architecture of the classifier")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--config", default=None, help="audio config of a checkpoint, to add its test NLL")
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--nll_clips", type=int, default=64, help="test clips for the NLL (default: 64)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    from .data import WavDataModule

    from .generate import parse_device

    try:
        # up front, before minutes of classifier training: a bad count, device or samples folder is one line
        for key, value in (("--nll_clips", args.nll_clips), ("--epochs", args.epochs)):
            if value < 1:  # --nll_clips 0 divided by zero after the work
                raise AudioDataError(f"{key} {value}; expected a positive integer")
        device = parse_device(args.device)
        for folder in args.samples:
            if not Path(folder).is_dir():
                raise AudioDataError(f"--samples {folder}: not a folder; expected a folder of generated WAVs")
        dm = WavDataModule(args.data, sample_rate=16000, clip_seconds=1.0)
        dm.setup()
        wav = {k: _decode(v.codes) for k, v in dm.splits.items()}
        lab = {k: v.labels for k, v in dm.splits.items()}
        if "val" not in wav or "test" not in wav:
            raise AudioDataError(f"--data {args.data}: expected train, valid and test clips")
        if Path(args.classifier, "classifier.json").is_file():
            clf, info = load_classifier(args.classifier, device)
            clf.to(device)
            trained_on = info.get("data")
            if info.get("arch") != args.arch or (trained_on and trained_on != str(Path(args.data).resolve())):
                raise AudioDataError(f"{args.classifier}: a saved classifier ({info.get('arch')}, trained on "
                                     f"{trained_on or 'unrecorded data'}) differs from --arch {args.arch} / --data "
                                     f"{args.data}; delete it or pass another --classifier folder to train anew")
            print(f"metrics: using the saved classifier in {args.classifier} ({info.get('arch')}, test accuracy "
                  f"{info.get('test_acc', float('nan')):.3f}); delete it to retrain", file=sys.stderr)
        else:
            clf, info = train_classifier(wav["train"], lab["train"], wav["val"], lab["val"], args.arch,
                                         device=device, epochs=args.epochs,
                                         log=lambda m: print(m, file=sys.stderr))
            info["test_acc"] = accuracy(clf, wav["test"], lab["test"])
            info["data"] = str(Path(args.data).resolve())
            save_classifier(clf, args.classifier, info)
        train_probs, _ = probabilities_and_features(clf, wav["train"])
        rows = [("real test clips (ceiling)", score(clf, wav["train"], wav["test"], lab["test"], train_probs))]
        nll = None
        if args.ckpt_path:
            from .generate import load_task

            task = load_task(args.ckpt_path).to(device)
            codes, labels = dm.splits["test"].codes[:args.nll_clips].long(), lab["test"][:args.nll_clips]
            with torch.no_grad():
                nll = sum(float(task.net.nll(codes[s].to(device), labels[s].to(device) if task.conditional else None))
                          * (s.stop - s.start) for s in _batches(len(codes), 8)) / len(codes)
        for folder in args.samples:
            gen, asked = read_generated(folder, 16000, dm.length)
            row = score(clf, wav["train"], gen, asked, train_probs)
            if nll is not None:
                row["NLL"] = nll
            rows.append((f"generated: {folder}", row))
    except AudioDataError as err:
        print(f"mambaverse: error: {err}", file=sys.stderr)
        return 2
    table = format_table(rows, info)
    print(table)
    if args.out:
        atomic_write(args.out, lambda p: Path(p).write_text(table + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
