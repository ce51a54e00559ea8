"""Waveform data: read any folder of WAVs, resample, mix down, pad or crop, and quantise with 8-bit mu-law.

Everything a user can bring is read through soundfile (libsndfile): any rate from 8 to 48 kHz, mono or
multi-channel, 8/16/24/32-bit integer or float PCM. torchaudio resamples (band-limited sinc) and does the
mu-law companding (``mu_law_encoding``/``mu_law_decoding``, ITU-T G.711 with mu = 255 for 256 levels).

Labels (digits 0-9) come from the parent folder or from the file name's first ``_``/``-`` separated field,
as a numeral or an English word in any case: ``7/a.wav``, ``seven/a.wav``, ``7_a.wav``, ``Seven_3f2b_nohash_0.wav``
(the SC09 naming). A folder with ``train``/``valid`` (or ``val``/``validation``)/``test`` sub-folders keeps that
split; otherwise the files are split at random by ``val_fraction``/``test_fraction``.
"""
from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader, Dataset

from mambaverse.atomic import atomic_write
from mambaverse.training.sampling import ResumableSampling
from mambaverse.validation import check_fraction, check_int

from .errors import AudioDataError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MIN_RATE, MAX_RATE = 8000, 48000
_SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}


def _check_levels(fn: str, quantization_channels) -> None:
    if (isinstance(quantization_channels, bool) or not isinstance(quantization_channels, numbers.Integral)
            or not 2 <= quantization_channels <= MAX_QUANTIZATION_CHANNELS):
        raise AudioDataError(f"{fn}: quantization_channels={quantization_channels!r}; expected an integer in "
                             f"[2, {MAX_QUANTIZATION_CHANNELS}]")


def mu_law_encode(audio: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Float waveform in [-1, 1] (any shape) -> int64 codes in [0, quantization_channels) (torchaudio's mu-law).
    Values outside [-1, 1] are clipped first. Raises AudioDataError for NaN samples (they have no code) or
    ``quantization_channels`` outside [2, 65536]."""
    _check_levels("mu_law_encode", quantization_channels)
    if audio.is_floating_point() and bool(torch.isnan(audio).any()):  # NaN would become code -2**63
        raise AudioDataError(f"mu_law_encode: audio of shape {tuple(audio.shape)} holds NaN samples; "
                             f"expected finite samples in [-1, 1]")
    return AF.mu_law_encoding((audio if audio.is_floating_point() else audio.float()).clamp(-1.0, 1.0),
                              quantization_channels)


def mu_law_decode(codes: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """int codes in [0, quantization_channels) (any shape) -> float32 waveform in [-1, 1].
    Raises AudioDataError for float codes or codes outside [0, quantization_channels) (they would decode to
    amplitudes outside [-1, 1])."""
    _check_levels("mu_law_decode", quantization_channels)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise AudioDataError(f"mu_law_decode: codes have dtype {codes.dtype}; expected integer mu-law codes")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= quantization_channels):
        raise AudioDataError(f"mu_law_decode: codes span [{int(codes.min())}, {int(codes.max())}]; expected codes "
                             f"in [0, {quantization_channels}) for quantization_channels={quantization_channels}")
    return AF.mu_law_decoding(codes, quantization_channels)


def parse_digit(name: str) -> int | None:
    """'7', 'seven', 'Seven' -> 7; anything else -> None."""
    token = name.strip().lower()
    if re.fullmatch(r"[0-9]", token):
        return int(token)
    return DIGIT_WORDS.index(token) if token in DIGIT_WORDS else None


def label_of(path: Path) -> int | None:
    """Digit label from the parent folder name, else from the file name's first field (``7_x.wav``)."""
    digit = parse_digit(path.parent.name)
    if digit is None:
        digit = parse_digit(re.split(r"[_\-.]", path.stem, maxsplit=1)[0])
    return digit


def read_wav(path: str | Path, sample_rate: int = 16000, length: int | None = 16000) -> torch.Tensor:
    """Read one audio file -> float32 mono waveform (length,) at ``sample_rate`` Hz in [-1, 1].

    Multi-channel files are averaged; other rates are resampled (torchaudio); the clip is zero-padded at the
    end or cropped to ``length`` samples (None keeps its length). Raises AudioDataError naming the file for a
    file that is not audio, a corrupt or truncated file, a sample format libsndfile cannot decode, a rate outside
    8-48 kHz, an empty file, or non-finite samples. Pure silence is returned as zeros (never NaN).
    """
    import soundfile as sf  # imported here: the packed (.npz) path needs no libsndfile

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise AudioDataError(f"{path}: empty file (0 bytes); expected a WAV")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as exc:
        text = str(exc).split(": ", 1)[-1].strip()
        low = text.lower()
        if "not recognised" in low:
            why = "not an audio file (libsndfile does not recognise its format)"
        elif "fmt" in low or "codec" in low or "supported" in low:
            why = f"unreadable sample format ({text})"
        else:
            why = f"corrupt file ({text})"
        raise AudioDataError(f"{path}: {why}; expected a WAV of 8/16/24/32-bit integer or float PCM") from None
    except OSError as exc:
        raise AudioDataError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if "should be" in info.extra_info:  # libsndfile notes a header that promises more data than the file holds
        raise AudioDataError(f"{path}: truncated file (the header promises more samples than are stored); "
                             f"expected a complete WAV")
    if info.frames == 0:
        raise AudioDataError(f"{path}: holds no samples; expected at least one")
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise AudioDataError(f"{path}: sample rate {info.samplerate} Hz; expected {MIN_RATE} to {MAX_RATE} Hz")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDataError(f"{path}: corrupt file ({str(exc).split(': ', 1)[-1].strip()})") from None
    if not np.isfinite(data).all():
        raise AudioDataError(f"{path}: contains NaN or infinite samples; expected finite float samples")
    wav = torch.from_numpy(data).mean(dim=1)  # mix down
    if rate != sample_rate:
        wav = AF.resample(wav, rate, sample_rate)
    wav = wav.clamp(-1.0, 1.0)
    if length is not None:
        wav = wav[:length] if wav.numel() >= length else torch.nn.functional.pad(wav, (0, length - wav.numel()))
    return wav


def list_wavs(folder: str | Path) -> list[Path]:
    """Every ``*.wav`` under ``folder`` (recursively, any case), sorted; AudioDataError if none or no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioDataError(f"{folder}: not a folder; expected a folder of WAV files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not files:
        raise AudioDataError(f"{folder}: no .wav files found; expected a folder of WAVs (e.g. 7/a.wav or seven_a.wav)")
    return files


MAX_QUANTIZATION_CHANNELS = 65536  # 16-bit mu-law; more levels than a 16-bit source has are meaningless


def code_dtype(quantization_channels: int) -> torch.dtype:
    """The narrowest dtype that holds every mu-law code in [0, quantization_channels): uint8 up to 256 levels,
    int16 up to 32768, int32 above (codes are stored in memory and in packed .npz files in this dtype)."""
    return torch.uint8 if quantization_channels <= 256 else torch.int16 if quantization_channels <= 32768 \
        else torch.int32


class WaveformDataset(Dataset):
    """Clips held in memory as mu-law codes (N, length) in ``code_dtype`` (uint8 for 256 levels) with labels (N,)
    int64 (-1 if unlabelled).

    Item: (codes (crop or length,) int64, label () int64). ``crop`` takes a random window of that many samples
    (``random_crop``, drawn from torch's global generator, which the training loader seeds per item from
    (seed, epoch, index): ``mambaverse.training.sampling``) or the first one.
    """

    def __init__(self, codes: torch.Tensor, labels: torch.Tensor, crop: int | None = None, random_crop: bool = False,
                 files: list[Path] | None = None):
        self.codes, self.labels, self.crop, self.random_crop = codes, labels, crop, random_crop
        self.files = files or []

    def __len__(self):
        return self.codes.shape[0]

    def __getitem__(self, i):
        x = self.codes[i]
        if self.crop and self.crop < x.shape[0]:
            start = int(torch.randint(0, x.shape[0] - self.crop + 1, ())) if self.random_crop else 0
            x = x[start:start + self.crop]
        return x.long(), self.labels[i]


def load_clips(files: list[Path], sample_rate: int, length: int, quantization_channels: int = 256,
               require_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Read, resample, pad/crop and mu-law encode ``files`` -> (codes (N, length) ``code_dtype(quantization_channels)``
    (uint8 for <= 256 levels), labels (N,) int64)."""
    dtype = code_dtype(quantization_channels)
    codes = torch.empty(len(files), length, dtype=dtype)
    labels = torch.full((len(files),), -1, dtype=torch.long)
    for i, path in enumerate(files):
        digit = label_of(path)
        if digit is None and require_labels:
            raise AudioDataError(f"{path}: label {path.parent.name!r}/{path.stem!r} is not a digit; expected a folder "
                                 f"or file-name prefix 0-9 or zero..nine (e.g. 7/a.wav, seven_a.wav)")
        labels[i] = -1 if digit is None else digit
        codes[i] = mu_law_encode(read_wav(path, sample_rate, length), quantization_channels).to(dtype)
    return codes, labels


class WavDataModule(ResumableSampling, pl.LightningDataModule):
    """Any folder of WAVs -> batches (codes (B, L) int64 mu-law, labels (B,) int64) for waveform models.

    Args:
        root: folder of WAVs, with ``train``/``valid``/``test`` sub-folders or without (then split at random);
            or a ``.npz`` written by ``save_packed`` (mu-law codes and labels per split: no WAV decoding, no
            soundfile needed, e.g. to ship a data set to a GPU machine).
        sample_rate: the model's rate in Hz; files at other rates are resampled.
        clip_seconds: clips are padded or cropped to ``round(clip_seconds * sample_rate)`` samples.
        train_crop: train on random windows of this many samples (None: whole clips); a positive integer at most
            the clip length ``round(clip_seconds * sample_rate)`` (a longer crop is refused: it cannot be cut).
        eval_crop: validation and test use the first window of this many samples, so that NLL is comparable
            (None: whole clips); same range as ``train_crop``.
        quantization_channels: mu-law levels, an integer in [2, 65536] (256 = 8 bit); must equal the model's
            ``n_classes`` (``WaveformLM`` checks at setup). Codes are kept as uint8 up to 256 levels, wider above.
        require_labels: every file must carry a digit label (for class-conditional models and metrics).
        max_files: per split, keep at most this many files (sorted order, then a seeded shuffle) for quick runs.
        seed: seed of the random split, the ``max_files`` subset, and the training stream: the clip order and crops
            of epoch ``e`` are a function of (seed, e), kept in checkpoints, so a resumed run continues exactly.
    Raises AudioDataError naming the file or folder for any bad input (see ``read_wav``).
    """

    def __init__(self, root: str, sample_rate: int = 16000, clip_seconds: float = 1.0, train_crop: int | None = None,
                 eval_crop: int | None = None, batch_size: int = 16, num_workers: int = 0,
                 quantization_channels: int = 256, require_labels: bool = True, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, max_files: int | None = None, seed: int = 0):
        super().__init__()
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise AudioDataError(f"sample_rate={sample_rate}; expected {MIN_RATE} to {MAX_RATE} Hz")
        self.root, self.sample_rate = Path(root), sample_rate
        if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) \
                or not math.isfinite(clip_seconds):  # round() of NaN/inf raises deep in the constructor
            raise AudioDataError(f"data.clip_seconds: got {clip_seconds!r}; expected a positive finite number")
        self.length = round(clip_seconds * sample_rate)
        if self.length < 1:
            raise AudioDataError(f"clip_seconds={clip_seconds}; expected a positive clip length")
        for key, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                ("quantization_channels", quantization_channels, 2)):
            check_int(f"data.{key}", value, low, AudioDataError)
        if max_files is not None:  # 0 would mean "all", a negative count would drop files silently
            check_int("data.max_files", max_files, 1, AudioDataError)
        if quantization_channels > MAX_QUANTIZATION_CHANNELS:
            raise AudioDataError(f"data.quantization_channels: got {quantization_channels}; expected an integer in "
                                 f"[2, {MAX_QUANTIZATION_CHANNELS}] (16-bit mu-law at most)")
        for key, value in (("train_crop", train_crop), ("eval_crop", eval_crop)):
            if value is None:
                continue
            check_int(f"data.{key}", value, 1, AudioDataError)
            if value > self.length:
                raise AudioDataError(f"data.{key}: got {value} samples; expected at most the clip length {self.length} "
                                     f"(clip_seconds={clip_seconds} x sample_rate={sample_rate}), or null for whole clips")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_fraction(f"data.{key}", value, 0.0, 1.0, high_open=True, error=AudioDataError)
        self.train_crop, self.eval_crop = train_crop, eval_crop
        self.batch_size, self.num_workers = batch_size, num_workers
        self.quantization_channels, self.require_labels = quantization_channels, require_labels
        self.val_fraction, self.test_fraction, self.max_files, self.seed = val_fraction, test_fraction, max_files, seed
        self.splits: dict[str, WaveformDataset] = {}

    def split_files(self) -> dict[str, list[Path]]:
        """{'train': [...], 'val': [...], 'test': [...]} from sub-folders, else a seeded random split."""
        if not self.root.is_dir():
            raise AudioDataError(f"root={self.root}: not a folder; expected a folder of WAV files")
        subs = {_SPLIT_NAMES[p.name.lower()]: p for p in self.root.iterdir()
                if p.is_dir() and p.name.lower() in _SPLIT_NAMES}
        rng = np.random.default_rng(self.seed)
        if "train" in subs:
            out = {split: list_wavs(folder) for split, folder in subs.items()}
        else:
            files = list_wavs(self.root)
            order = rng.permutation(len(files))
            # a non-zero fraction keeps at least one file (int() gave 0 of 5 files: no validation, only a warning)
            n_test, n_val = (max(1, int(f * len(files))) if f > 0 else 0
                             for f in (self.test_fraction, self.val_fraction))
            if n_test + n_val >= len(files):
                raise AudioDataError(f"root={self.root}: {len(files)} WAV file(s) leave none to train on after "
                                     f"val_fraction={self.val_fraction} and test_fraction={self.test_fraction}; "
                                     f"expected more files or smaller fractions")
            out = {"test": [files[i] for i in order[:n_test]], "val": [files[i] for i in order[n_test:n_test + n_val]],
                   "train": [files[i] for i in order[n_test + n_val:]]}
        if self.max_files:
            out = {k: [v[i] for i in sorted(rng.permutation(len(v))[:self.max_files])] for k, v in out.items()}
        return out

    def setup(self, stage: str | None = None):
        if self.splits:
            return
        if self.root.suffix == ".npz":
            self._load_packed()
            return
        for split, files in self.split_files().items():
            codes, labels = load_clips(files, self.sample_rate, self.length, self.quantization_channels,
                                       self.require_labels)
            crop = self.train_crop if split == "train" else self.eval_crop
            self.splits[split] = WaveformDataset(codes, labels, crop, random_crop=split == "train", files=files)

    def save_packed(self, path: str | Path) -> Path:
        """Write every split's mu-law codes and labels, with the clip settings, to a compressed ``.npz``
        (atomically); ``WavDataModule(root=path)`` reads it back without touching the WAVs."""
        self.setup()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"sample_rate": np.array(self.sample_rate), "length": np.array(self.length),
                  "quantization_channels": np.array(self.quantization_channels)}
        for split, ds in self.splits.items():
            arrays[f"{split}_codes"], arrays[f"{split}_labels"] = ds.codes.numpy(), ds.labels.numpy()
        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare name
                np.savez_compressed(f, **arrays)

        return atomic_write(path, write)

    def _load_packed(self):
        try:
            packed = np.load(self.root)
            settings = (int(packed["sample_rate"]), int(packed["length"]), int(packed["quantization_channels"]))
        except (OSError, ValueError, KeyError) as exc:
            raise AudioDataError(f"root={self.root}: not a packed audio set ({type(exc).__name__}); expected an .npz "
                                 f"written by WavDataModule.save_packed") from None
        if settings != (self.sample_rate, self.length, self.quantization_channels):
            raise AudioDataError(f"root={self.root}: packed at (sample_rate, length, levels)={settings}; expected "
                                 f"{(self.sample_rate, self.length, self.quantization_channels)}")
        for split in ("train", "val", "test"):
            if f"{split}_codes" in packed:
                crop = self.train_crop if split == "train" else self.eval_crop
                codes, labels = torch.from_numpy(packed[f"{split}_codes"]), torch.from_numpy(packed[f"{split}_labels"])
                if self.max_files:  # a seeded subset, as for folders (packed clips are in path order)
                    keep = torch.from_numpy(np.sort(np.random.default_rng(self.seed).permutation(len(codes))
                                                    [:self.max_files]))
                    codes, labels = codes[keep], labels[keep]
                self.splits[split] = WaveformDataset(codes, labels, crop, random_crop=split == "train")

    def _loader(self, split, shuffle):
        if split not in self.splits:
            raise AudioDataError(f"{self.root}: no {split!r} clips; expected a {split} sub-folder or a non-zero fraction")
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, drop_last=shuffle and len(self.splits[split]) > self.batch_size)

    def train_dataloader(self):
        """Shuffled clips with random crops, a function of (seed, epoch, index) (``ResumableSampling``)."""
        if "train" not in self.splits:
            return self._loader("train", True)  # its one-line error
        ds = self.splits["train"]
        return self.resumable_loader(ds, shuffle=True, drop_last=len(ds) > self.batch_size)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
