"""An SC09-style set of synthetic spoken digits (zero to nine), made with espeak-ng and sox.

SC09 (Donahue et al., 2019, "Adversarial audio synthesis") is the ten digit words of Google's Speech Commands:
one-second clips at 16 kHz, spoken by thousands of people. No recording of it can be downloaded here, so this
module synthesises a stand-in with the same shape: each *voice* is an espeak-ng accent (en-us, en-gb-scotland,
...) combined with a voice variant (``+f3``, ``+whisper``, ...) and its own base pitch and speed; each clip
adds a small jitter of pitch, speed, loudness and placement, and a faint noise floor. It is **synthetic
speech**: far less varied than SC09, so numbers measured on it are not SC09 numbers.

The split is by voice, so that no voice appears in two of train/valid/test (as SC09 splits by speaker).
Layout written (every file 16 kHz mono 16-bit PCM, exactly 1 s, written atomically)::

    OUT/train/seven/en-us+f3_0.wav   ...   OUT/valid/...   OUT/test/...   OUT/manifest.csv

Command: ``mambaverse audio-data --out data/sc09_synth`` (see ``--help``); needs the Debian packages
``espeak-ng`` and ``sox``.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mambaverse.atomic import atomic_write, check_writable_dir
from mambaverse.errors import MambaverseError
from mambaverse.validation import check_fraction, check_int
from .errors import AudioDataError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
SAMPLE_RATE = 16000


def _tools():
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise AudioDataError(f"audio-data: {' and '.join(missing)} not found on PATH; expected the Debian packages "
                             f"espeak-ng and sox (apt-get install espeak-ng sox)")


def list_variants() -> list[str]:
    """The voice variants this espeak-ng offers (``+name`` suffixes), sorted."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[4].split("/")[-1] for line in out.splitlines()[1:] if len(line.split()) >= 5]
    return sorted(set(names))


def synthesize(word: str, voice: str, pitch: int, speed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``word`` with espeak-ng voice ``voice`` (e.g. ``"en-us+f3"``), pitch 0-99, speed in words/minute;
    returns float32 samples in [-1, 1] at ``sample_rate`` (sox resamples, mono, 16-bit)."""
    speech = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", word],
                            capture_output=True, check=True).stdout
    raw = subprocess.run(["sox", "-q", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1",
                          "-r", str(sample_rate), "-", "gain", "-3"], input=speech, capture_output=True,
                         check=True).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _trim(x: np.ndarray, rel_threshold: float = 0.01) -> np.ndarray:
    """Drop leading and trailing silence (below rel_threshold of the peak)."""
    loud = np.flatnonzero(np.abs(x) > rel_threshold * max(np.abs(x).max(), 1e-9))
    return x[loud[0]:loud[-1] + 1] if len(loud) else x[:0]


def make_clip(word: str, voice: str, pitch: int, speed: int, rng: np.random.Generator,
              length: int = SAMPLE_RATE) -> np.ndarray:
    """One 1-s clip: speech trimmed, faster if it does not fit, at a random offset, random peak level between
    -20 and -1 dBFS, plus a noise floor between -70 and -50 dBFS (real clips are never digitally silent)."""
    speech = _trim(synthesize(word, voice, pitch, speed))
    for _ in range(4):  # speak faster until the word fits in the clip with a little margin
        if len(speech) <= int(0.95 * length):
            break
        speed = int(speed * len(speech) / (0.9 * length)) + 1
        speech = _trim(synthesize(word, voice, pitch, speed))
    speech = speech[:length]
    speech = speech / max(np.abs(speech).max(), 1e-9) * 10 ** (rng.uniform(-20, -1) / 20)
    clip = np.zeros(length, np.float32)
    start = int(rng.integers(0, length - len(speech) + 1))
    clip[start:start + len(speech)] = speech
    clip += rng.standard_normal(length).astype(np.float32) * 10 ** (rng.uniform(-70, -50) / 20)
    return np.clip(clip, -1.0, 32767 / 32768)


def write_wav_atomic(path: Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16"):
    """Write a WAV through a temporary file in the same folder, then rename: never a half-written file."""
    import soundfile as sf

    atomic_write(path, lambda tmp: sf.write(str(tmp), samples, sample_rate, subtype=subtype, format="WAV"))


def check_args(n_voices, takes: int, val_fraction: float, test_fraction: float, workers: int = 1) -> None:
    """Refuse bad ``audio-data`` arguments up front, in one line each (AudioDataError): ``--voices`` and
    ``--takes`` integers >= 1, ``--workers`` >= 1, each fraction in [0, 1) and both together < 1 (the training
    split keeps at least one voice; a split with a fraction > 0 gets at least one voice, checked in ``plan``)."""
    for flag, value in (("--voices", n_voices), ("--takes", takes), ("--workers", workers)):
        check_int(f"audio-data: {flag}", value, 1, AudioDataError)
    for flag, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        check_fraction(f"audio-data: {flag}", value, 0.0, 1.0, high_open=True, error=AudioDataError)
    if val_fraction + test_fraction >= 1:
        raise AudioDataError(f"audio-data: --val-fraction {val_fraction} + --test-fraction {test_fraction} = "
                             f"{val_fraction + test_fraction:g}; expected a sum < 1 (the training split needs voices)")


def plan(n_voices: int, takes: int, seed: int, val_fraction: float, test_fraction: float) -> list[dict]:
    """Choose voices (accent x variant, each with its own base pitch and speed), split them by voice and list
    every clip to make: one row per (voice, take, digit)."""
    check_args(n_voices, takes, val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    pairs = [(a, v) for a in ACCENTS for v in ["", *list_variants()]]
    if n_voices > len(pairs):
        raise AudioDataError(f"audio-data: --voices {n_voices}; this espeak-ng offers at most {len(pairs)}")
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:n_voices]]
    n_test, n_val = round(test_fraction * n_voices), round(val_fraction * n_voices)
    if n_voices - n_test - n_val < 1 or (test_fraction > 0 and n_test < 1) or (val_fraction > 0 and n_val < 1):
        raise AudioDataError(f"audio-data: --voices {n_voices} is too few for validation/test fractions "
                             f"{val_fraction}/{test_fraction}; expected at least one voice in each split")
    rows = []
    for k, (accent, variant) in enumerate(chosen):
        split = "test" if k < n_test else "valid" if k < n_test + n_val else "train"
        voice = accent + (f"+{variant}" if variant else "")
        base_pitch, base_speed = int(rng.integers(25, 80)), int(rng.integers(120, 200))
        for take in range(takes):
            for digit, word in enumerate(DIGIT_WORDS):
                rows.append(dict(split=split, digit=digit, word=word, voice=voice, take=take,
                                 pitch=int(np.clip(base_pitch + rng.integers(-8, 9), 0, 99)),
                                 speed=int(base_speed + rng.integers(-15, 16)), seed=int(rng.integers(2 ** 31))))
    return rows


def build(out: str | Path, n_voices: int = 400, takes: int = 1, seed: int = 0, val_fraction: float = 0.1,
          test_fraction: float = 0.1, workers: int = 2, progress: bool = True) -> Path:
    """Synthesise the whole set under ``out`` (see the module docstring) and return the manifest's path.
    Files already present are kept, so an interrupted run resumes."""
    check_args(n_voices, takes, val_fraction, test_fraction, workers)
    _tools()
    out = Path(out)
    rows = plan(n_voices, takes, seed, val_fraction, test_fraction)

    def one(row):
        path = out / row["split"] / row["word"] / f"{row['voice']}_{row['take']}.wav"
        row["path"] = str(path.relative_to(out))
        if not path.exists():
            clip = make_clip(row["word"], row["voice"], row["pitch"], row["speed"], np.random.default_rng(row["seed"]))
            write_wav_atomic(path, clip, SAMPLE_RATE)
        return row

    done = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:  # the work is in espeak-ng/sox subprocesses
        for _ in pool.map(one, rows):
            done += 1
            if progress and (done % 500 == 0 or done == len(rows)):
                print(f"audio-data: {done}/{len(rows)} clips", file=sys.stderr)
    manifest = out / "manifest.csv"
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "split", "digit", "word", "voice", "take", "pitch",
                                                   "speed", "seed"])
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(manifest, write)


def main(argv: list[str] | None = None) -> int:
    """``mambaverse audio-data``: write the synthetic SC09-style digit set."""
    parser = argparse.ArgumentParser(prog="mambaverse audio-data", description=__doc__.split("\n\n")[0] + (
        " Synthetic speech (espeak-ng + sox), split by voice; 16 kHz mono 16-bit 1 s WAVs."))
    parser.add_argument("--out", default="data/sc09_synth", help="output folder (default: %(default)s)")
    parser.add_argument("--voices", type=int, default=400, help="number of voices, accent x variant (default: 400)")
    parser.add_argument("--takes", type=int, default=1, help="clips per voice and digit (default: 1)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel espeak-ng/sox processes (default: 2)")
    parser.add_argument("--pack", default=None, metavar="NPZ",
                        help="also write the mu-law codes of every split to this .npz (WavDataModule reads it "
                             "without soundfile, e.g. on a GPU machine)")
    args = parser.parse_args(argv)
    try:
        # before minutes of synthesis: an --out or --pack that cannot be written is one line now
        check_writable_dir(args.out, "--out")
        if args.pack:
            if Path(args.pack).is_dir():
                raise AudioDataError(f"--pack {args.pack}: is a folder; expected the path of an .npz file to write")
            check_writable_dir(Path(os.path.abspath(args.pack)).parent, f"--pack {args.pack}: its folder")
        manifest = build(args.out, args.voices, args.takes, args.seed, args.val_fraction, args.test_fraction,
                         args.workers)
        if args.pack:
            from .data import WavDataModule

            print(f"packed {WavDataModule(str(args.out)).save_packed(args.pack)}")
    except MambaverseError as err:  # AudioDataError, and OutputPathError from the folder checks
        print(f"mambaverse: error: {err}", file=sys.stderr)
        return 2
    counts = {}
    with open(manifest) as f:
        for row in csv.DictReader(f):
            counts[row["split"]] = counts.get(row["split"], 0) + 1
    print(f"wrote {sum(counts.values())} clips to {manifest.parent} ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
          f"manifest {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
