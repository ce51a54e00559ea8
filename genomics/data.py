"""FastaDataModule: labelled FASTA lists -> random training windows and deterministic eval windows.

Splits (``split`` in the config):

* ``region``: each record is cut into three contiguous regions, ``[0, a)`` for train, ``[a, b)``
  for validation and ``[b, n)`` for test, with ``a, b`` set by ``split_fractions``. A window
  lies wholly inside one region, so no test window overlaps a training window.
* ``record``: whole records go to train, validation or test (a seeded shuffle of each label's
  records, sized by ``split_fractions``); needs at least one record per split for every label.
* ``named``: whole records go to validation or test when their name matches (``re.fullmatch``) the
  pattern of that split in ``split_records`` (e.g. held-out chromosomes), and to train otherwise.
* ``blocks``: each record is tiled into blocks of ``block_size`` bases, and a seeded shuffle of each
  record's blocks sends ``split_fractions`` of them to train, validation and test, so held-out blocks
  are scattered over the whole genome (every part of it has training bases nearby). Windows lie
  wholly inside runs of blocks of one split, so no evaluation window overlaps a training window.

Training windows are drawn at random: a label uniformly (balanced classes), then a region with
probability proportional to its number of window starts, then a start. Windows whose N fraction
exceeds ``max_n_fraction`` are redrawn. Validation and test windows are fixed: evenly spaced
starts over each label's regions, N-filtered, the same on every call.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mambaverse.training.sampling import EpochSampler, ResumableSampling, _key
from mambaverse.validation import check_fraction, check_int

from .errors import GenomicsDataError
from .fasta import FastaSource, prepare_fasta
from .tokenizer import DNATokenizer

SPLITS = ("train", "val", "test")
SPLIT_MODES = ("region", "record", "named", "blocks")


@dataclass(frozen=True)
class Span:
    """A region ``[start, end)`` of one record that windows of one split may use."""

    source: int  # index into the datamodule's sources
    label: int
    record: str
    start: int
    end: int

    def n_starts(self, window: int) -> int:
        return max(0, self.end - self.start - window + 1)


@dataclass(frozen=True)
class Window:
    source: int
    label: int
    record: str
    start: int
    end: int
    strand: str = "+"


def _block_spans(si: int, li: int, name: str, n: int, block: int, fractions, rng) -> list[tuple[str, Span]]:
    """Blocks of ``block`` bases of one record, shuffled into splits by ``fractions``; runs of consecutive
    blocks of one split merged into one span."""
    nb = -(-n // block)
    counts = [round(f * nb) for f in fractions[1:]]
    order = rng.permutation(nb)
    which = np.zeros(nb, dtype=np.int64)  # 0 train, 1 val, 2 test
    which[order[:counts[0]]] = 1
    which[order[counts[0]:counts[0] + counts[1]]] = 2
    spans, k = [], 0
    while k < nb:
        j = k
        while j + 1 < nb and which[j + 1] == which[k]:
            j += 1
        spans.append((SPLITS[which[k]], Span(si, li, name, k * block, min(n, (j + 1) * block))))
        k = j + 1
    return spans


def split_spans(sources: list[FastaSource], labels: list[str], split: str, fractions: tuple[float, float, float],
                seed: int = 0, block_size: int | None = None,
                split_records: dict[str, str] | None = None) -> dict[str, list[Span]]:
    """Assign every record (or region or block of a record) to train/val/test; see the module docstring."""
    out: dict[str, list[Span]] = {s: [] for s in SPLITS}
    cuts = np.cumsum(fractions)
    if split == "region":
        for si, src in enumerate(sources):
            li = labels.index(src.label)
            for name, n in src.records:
                a, b = int(n * cuts[0]), int(n * cuts[1])
                for sname, lo, hi in (("train", 0, a), ("val", a, b), ("test", b, n)):
                    if hi > lo:
                        out[sname].append(Span(si, li, name, lo, hi))
    elif split == "record":
        for li, label in enumerate(labels):
            recs = [(si, name, n) for si, src in enumerate(sources) if src.label == label for name, n in src.records]
            need = sum(f > 0 for f in fractions)
            if len(recs) < need:
                files = ", ".join(src.path for src in sources if src.label == label)
                raise GenomicsDataError(
                    f"label '{label}': split 'record' needs at least {need} records (one per split) but its files "
                    f"({files}) hold {len(recs)}; use split: region")
            order = np.random.default_rng([seed, li]).permutation(len(recs))
            n_val = max(1, round(fractions[1] * len(recs))) if fractions[1] > 0 else 0
            n_test = max(1, round(fractions[2] * len(recs))) if fractions[2] > 0 else 0
            n_train = len(recs) - n_val - n_test
            if fractions[0] > 0 and n_train < 1:
                n_train, n_test = 1, n_test - 1
            bounds = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
            for sname, idx in bounds.items():
                for k in idx:
                    si, name, n = recs[k]
                    out[sname].append(Span(si, li, name, 0, n))
    elif split == "named":
        patterns = {k: re.compile(v) for k, v in (split_records or {}).items()}
        for si, src in enumerate(sources):
            li = labels.index(src.label)
            for name, n in src.records:
                sname = next((k for k in ("test", "val") if k in patterns and patterns[k].fullmatch(name)), "train")
                out[sname].append(Span(si, li, name, 0, n))
    elif split == "blocks":
        for si, src in enumerate(sources):
            li = labels.index(src.label)
            k = sum(1 for s in sources[:si] if s.label == src.label)  # the file's place among its label's files
            for name, n in src.records:
                # seeded by the record's name, not its path: the split must not change when the files move
                rng = np.random.default_rng([seed, li, k, zlib.crc32(name.encode())])
                for sname, span in _block_spans(si, li, name, n, int(block_size), fractions, rng):
                    out[sname].append(span)
    else:
        raise GenomicsDataError(f"split: got '{split}', expected one of {', '.join(SPLIT_MODES)}")
    return out


class _WindowReader:
    """Shared logic: read a window from its source, tokenize, optionally reverse-complement."""

    def __init__(self, sources: list[FastaSource], tokenizer: DNATokenizer):
        self.sources = sources
        self.tok = tokenizer

    def read(self, w: Window) -> np.ndarray:
        ids = self.tok.encode(self.sources[w.source].fetch(w.record, w.start, w.end))
        return self.tok.rc_tokens(ids) if w.strand == "-" else ids

    def item(self, w: Window, ids: np.ndarray) -> dict:
        return {"input_ids": torch.from_numpy(np.ascontiguousarray(ids)), "label": w.label, "record": w.record,
                "start": w.start, "end": w.end, "strand": w.strand, "file": self.sources[w.source].path}


class RandomWindowDataset(Dataset, _WindowReader):
    """``samples`` random training windows per epoch; fresh windows every epoch.

    Window ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` (and the window length): the item
    index is an ``(epoch, i)`` or ``(epoch, i, length)`` tuple from ``mambaverse.training.sampling.EpochSampler``
    (the sampler every domain shares), and its draws come
    from ``numpy.random.default_rng([seed, e, i])``. So the stream does not depend on the process, the
    worker that reads it, or where a run was resumed; a plain int ``i`` means epoch 0.
    """

    def __init__(self, sources, tokenizer, spans: list[Span], n_labels: int, window: int, samples: int,
                 max_n_fraction: float, rc_prob: float, seed: int, max_tries: int = 50):
        _WindowReader.__init__(self, sources, tokenizer)
        self.window, self.samples, self.max_n, self.rc_prob = window, samples, max_n_fraction, rc_prob
        self.seed, self.max_tries = seed, max_tries
        self.spans, self.n_labels = spans, n_labels
        self._by_length: dict[int, list[tuple[list[Span], np.ndarray]]] = {}

    def __len__(self) -> int:
        return self.samples

    def by_label(self, window: int) -> list[tuple[list[Span], np.ndarray]]:
        """Per label: the spans that fit ``window`` and their start-count weights (cached per length)."""
        got = self._by_length.get(window)
        if got is None:
            got = []
            for li in range(self.n_labels):
                sp = [s for s in self.spans if s.label == li and s.n_starts(window) > 0]
                w = np.array([s.n_starts(window) for s in sp], dtype=np.float64)
                got.append((sp, w / w.sum() if len(sp) else w))
            self._by_length[window] = got
        return got

    def draw(self, rng: np.random.Generator, label: int, window: int | None = None) -> tuple[Window, np.ndarray]:
        window = window or self.window
        spans, probs = self.by_label(window)[label]
        for _ in range(self.max_tries if spans else 0):
            s = spans[rng.choice(len(spans), p=probs)]
            start = s.start + int(rng.integers(0, s.n_starts(window)))
            w = Window(s.source, label, s.record, start, start + window)
            ids = self.tok.encode(self.sources[w.source].fetch(w.record, w.start, w.end))
            if self.tok.n_fraction(ids) <= self.max_n:
                if rng.random() < self.rc_prob:
                    return Window(w.source, label, w.record, w.start, w.end, "-"), self.tok.rc_tokens(ids)
                return w, ids
        label_spans = [s for s in self.spans if s.label == label]
        src = self.sources[label_spans[0].source if label_spans else 0]
        raise GenomicsDataError(
            f"{src.path}: label '{src.label}': no training window of length {window} with N fraction <= "
            f"{self.max_n} in {self.max_tries} draws; raise max_n_fraction or check the files")

    def __getitem__(self, key) -> dict:
        epoch, i, window = _key(key)
        window = window or self.window
        rng = np.random.default_rng([int(self.seed) % (2**63), int(epoch), int(i)])
        label = int(rng.integers(0, self.n_labels))
        w, ids = self.draw(rng, label, int(window))
        return self.item(w, ids)


class FixedWindowDataset(Dataset, _WindowReader):
    """A fixed list of windows (validation, test, prediction)."""

    def __init__(self, sources, tokenizer, windows: list[Window]):
        _WindowReader.__init__(self, sources, tokenizer)
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        return self.item(w, self.read(w))


def evenly_spaced_windows(spans: list[Span], window: int, count: int, reader: _WindowReader, max_n_fraction: float,
                          oversample: int = 3) -> list[Window]:
    """Up to ``count`` windows at evenly spaced starts over ``spans`` (in order), N-filtered; deterministic."""
    spans = [s for s in spans if s.n_starts(window) > 0]
    if not spans or count <= 0:
        return []
    sizes = np.array([s.n_starts(window) for s in spans], dtype=np.int64)
    total = int(sizes.sum())
    n_cand = min(total, count * oversample)
    offsets = np.unique(np.floor((np.arange(n_cand) + 0.5) * total / n_cand).astype(np.int64))
    bounds = np.cumsum(sizes)
    cands = []
    for off in offsets:
        k = int(np.searchsorted(bounds, off, side="right"))
        s = spans[k]
        start = s.start + int(off - (bounds[k] - sizes[k]))
        cands.append(Window(s.source, s.label, s.record, start, start + window))
    kept = [w for w in cands if reader.tok.n_fraction(reader.read(w)) <= max_n_fraction]
    if len(kept) > count:  # thin evenly so that the kept windows still cover every region
        kept = [kept[i] for i in np.floor(np.arange(count) * len(kept) / count).astype(int)]
    return kept


def _check_args(**kw) -> None:
    """One-line GenomicsDataErrors naming the key and its allowed range (checked when the datamodule is built)."""
    ranges = {"window": 1, "batch_size": 1, "train_samples": 1, "val_windows": 0, "test_windows": 0,
              "predict_windows": 0, "num_workers": 0, "seed": 0}
    for key, low in ranges.items():
        check_int(f"data.{key}", kw[key], low, GenomicsDataError)
    check_fraction("data.rc_prob", kw["rc_prob"], error=GenomicsDataError)
    cache = kw["cache_dir"]
    if cache:
        from pathlib import Path

        p = Path(cache).expanduser()
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise GenomicsDataError(f"data.cache_dir: {cache} cannot be created or written ({p} is "
                                    f"{'not a folder' if not p.is_dir() else 'not writable'}); expected a writable folder")


class FastaDataModule(ResumableSampling, pl.LightningDataModule):
    """Labelled FASTA files (``label: [paths]``) as windows of token ids for classification or LM.

    Args:
        files: label -> list of FASTA paths (plain, ``.gz``, ``.xz``); the label order fixes class ids.
        window: window length in bases.
        batch_size: windows per batch.
        split: ``region`` (cut every record into train/val/test regions), ``record`` (whole records, shuffled),
            ``named`` (whole records held out by name) or ``blocks`` (blocks scattered over every record).
        split_fractions: train, validation and test fractions (sum to 1); unused by ``named``.
        block_size: block length in bases for ``split: blocks`` (at least ``window``; held-out windows stay
            inside runs of held-out blocks).
        split_records: for ``split: named``, ``{"val": regex, "test": regex}`` (either may be left out) matched
            against whole record names; records matching neither are training records.
        train_samples: random training windows per epoch.
        val_windows: fixed validation windows per label.
        test_windows: fixed test windows per label.
        max_n_fraction: skip windows with a larger fraction of N (ambiguous) bases.
        rc_prob: probability of reverse-complementing a training window.
        cache_dir: where compressed files are decompressed and indexes live (default ``~/.cache/mambaverse/fasta``).
        num_workers: DataLoader workers.
        seed: seed of the record split and of the training window stream.
        predict_split: windows for ``predict``: those of ``train``, ``val``, ``test`` or ``all`` regions.
        predict_windows: windows per label for ``predict`` (evenly spaced, N-filtered).
    """

    def __init__(self, files: dict[str, list[str]], window: int = 1024, batch_size: int = 16,
                 split: Literal["region", "record", "named", "blocks"] = "region",
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), train_samples: int = 2048,
                 val_windows: int = 32, test_windows: int = 64, max_n_fraction: float = 0.1, rc_prob: float = 0.5,
                 cache_dir: str | None = None, num_workers: int = 0, seed: int = 0,
                 predict_split: Literal["train", "val", "test", "all"] = "test", predict_windows: int = 64,
                 block_size: int | None = None, split_records: dict[str, str] | None = None):
        super().__init__()
        if not isinstance(files, dict) or not files:
            raise GenomicsDataError("files: expected a mapping label -> [FASTA paths] with at least one label")
        for label, paths in files.items():
            if isinstance(paths, (str, os.PathLike)):
                paths = [paths]
            if not paths:
                raise GenomicsDataError(f"files: label '{label}' has no files; expected a list of FASTA paths")
        if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or abs(sum(split_fractions) - 1) > 1e-6:
            raise GenomicsDataError(f"split_fractions: got {list(split_fractions)}, expected 3 non-negative numbers summing to 1")
        if split not in SPLIT_MODES:
            raise GenomicsDataError(f"split: got '{split}', expected one of {', '.join(SPLIT_MODES)}")
        if split == "blocks" and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < window):
            raise GenomicsDataError(f"block_size: got {block_size!r}; split: blocks needs an integer block_size >= "
                                    f"window ({window}) so that a window fits in one block")
        if split == "named":
            if not isinstance(split_records, dict) or not split_records or set(split_records) - {"val", "test"}:
                raise GenomicsDataError(f"split_records: got {split_records!r}; split: named expects a mapping with "
                                        f"keys 'val' and/or 'test', each a regular expression for record names")
            for key, pattern in split_records.items():
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as exc:
                    raise GenomicsDataError(f"split_records.{key}: {pattern!r} is not a regular expression ({exc})") from None
        if window < 1:
            raise GenomicsDataError(f"window: got {window}, expected a positive number of bases")
        if not 0.0 <= max_n_fraction <= 1.0:
            raise GenomicsDataError(f"max_n_fraction: got {max_n_fraction}, expected a fraction in [0, 1]")
        _check_args(window=window, batch_size=batch_size, train_samples=train_samples, val_windows=val_windows,
                    test_windows=test_windows, predict_windows=predict_windows, rc_prob=rc_prob,
                    num_workers=num_workers, seed=seed, cache_dir=cache_dir)
        self.files = {str(k): [str(p) for p in ([v] if isinstance(v, (str, os.PathLike)) else v)] for k, v in files.items()}
        self.labels = list(self.files)
        self.window, self.batch_size, self.split = int(window), int(batch_size), split
        self._train_window = None  # set by set_seq_len (sequence-length warmup); None = window
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.block_size = block_size
        self.split_records = dict(split_records) if split_records else None
        self.train_samples, self.val_windows, self.test_windows = train_samples, val_windows, test_windows
        self.max_n_fraction, self.rc_prob = float(max_n_fraction), float(rc_prob)
        self.cache_dir, self.num_workers, self.seed = cache_dir, num_workers, seed
        self.predict_split, self.predict_windows = predict_split, predict_windows
        self.tokenizer = DNATokenizer()
        self.sources: list[FastaSource] | None = None
        self.spans: dict[str, list[Span]] = {}
        self._fixed: dict[str, list[Window]] = {}
        self.save_hyperparameters()

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        for label, paths in self.files.items():
            for p in paths:
                prepare_fasta(p, label, self.cache_dir)

    def _load(self) -> None:
        if self.sources is not None:
            return
        self.sources = [prepare_fasta(p, label, self.cache_dir) for label, paths in self.files.items() for p in paths]
        for label in self.labels:
            srcs = [s for s in self.sources if s.label == label]
            longest = max(((n, s.path, r) for s in srcs for r, n in s.records))
            if longest[0] < self.window:
                raise GenomicsDataError(
                    f"window {self.window} is longer than every record of label '{label}' (longest: record "
                    f"'{longest[2]}' in {longest[1]}, {longest[0]} bases); lower window")
        self.spans = split_spans(self.sources, self.labels, self.split, self.split_fractions, self.seed,
                                 self.block_size, self.split_records)
        used = {"train": True, "val": self.val_windows > 0, "test": self.test_windows > 0}
        fractions = self.split_fractions
        if self.split == "named":  # a split is in use when it has a pattern
            fractions = (1.0,) + tuple(float(k in self.split_records) for k in ("val", "test"))
        for sname, frac in zip(SPLITS, fractions):
            if frac == 0 or not used.get(sname, True):  # a split with no windows asked of it needs none to fit
                continue
            for li, label in enumerate(self.labels):
                if not any(s.label == li and s.n_starts(self.window) > 0 for s in self.spans[sname]):
                    srcs = [s for s in self.sources if s.label == label]
                    regions = [s for s in self.spans[sname] if s.label == li]
                    longest = max(regions, key=lambda s: s.end - s.start, default=None)
                    where = (f"longest: record '{longest.record}' in {srcs[0].path if len(srcs) == 1 else self.sources[longest.source].path}, "
                             f"{longest.end - longest.start} bases" if longest else
                             f"no record matches split_records.{sname}" if self.split == "named" else "no records")
                    raise GenomicsDataError(
                        f"window {self.window} is longer than every {sname} region of label '{label}' ({where}); "
                        f"lower window or change split_fractions/split")

    def _reader(self) -> _WindowReader:
        return _WindowReader(self.sources, self.tokenizer)

    def fixed_windows(self, which: str) -> list[Window]:
        """The deterministic windows of ``val``, ``test`` or ``predict``."""
        self._load()
        if which not in self._fixed:
            if which == "predict":
                spans = (self.spans["train"] + self.spans["val"] + self.spans["test"]) if self.predict_split == "all" \
                    else self.spans[self.predict_split]
                per_label = self.predict_windows
            else:
                spans, per_label = self.spans[which], (self.val_windows if which == "val" else self.test_windows)
            reader, out = self._reader(), []
            for li in range(self.num_classes):
                mine = sorted((s for s in spans if s.label == li), key=lambda s: (s.source, s.record, s.start))
                got = evenly_spaced_windows(mine, self.window, per_label, reader, self.max_n_fraction)
                if not got and mine and per_label > 0:
                    raise GenomicsDataError(
                        f"label '{self.labels[li]}': no {which} window of length {self.window} has N fraction <= "
                        f"{self.max_n_fraction} (files: {', '.join(self.files[self.labels[li]])})")
                out.extend(got)
            self._fixed[which] = out
        return self._fixed[which]

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def set_seq_len(self, length: int) -> None:
        """Hook of mambaverse.training.SequenceLengthWarmup: the next train_dataloader() yields windows of
        `length` bases (at most `window`); validation and test windows keep `window`."""
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= self.window:
            raise GenomicsDataError(f"set_seq_len: length {length!r}; expected an int between 1 and window={self.window}")
        self._train_window = length

    def train_dataset(self) -> RandomWindowDataset:
        self._load()
        return RandomWindowDataset(self.sources, self.tokenizer, self.spans["train"], self.num_classes,
                                   self._train_window or self.window, self.train_samples, self.max_n_fraction,
                                   self.rc_prob, self.seed)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds, shuffle=False) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Random windows, a function of (seed, epoch, index): see :class:`RandomWindowDataset`. The epoch comes
        from Lightning's ``set_epoch``, the length from :meth:`set_seq_len` when the epoch starts, and a run
        resumed from a checkpoint skips the windows it already trained on (:meth:`load_state_dict`)."""
        return self.resumable_loader(self.train_dataset(), shuffle=False, per_item_seed=False,
                                     length_fn=lambda: self._train_window or self.window)

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict:
        """Saved in Lightning checkpoints: the seed, the training length and how far into its epoch the run is
        (``consumed`` training windows over all ranks; see ``mambaverse.training.sampling.ResumableSampling``)."""
        return {**self.sampling_state(), "train_window": self._train_window, "train_samples": int(self.train_samples)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the window stream of a checkpoint: its seed (redoing a record split drawn with another seed),
        the warmup's training length and the position in the epoch; the next training iteration of that epoch
        skips the windows already trained on."""
        if not state:
            return
        drawn_with = self.seed
        self.load_sampling_state(state)
        if self.seed != drawn_with and self.split in ("record", "blocks") and self.sources is not None:
            self.sources, self._fixed = None, {}  # the split was drawn with the config's seed
            self._load()
        if state.get("train_window"):
            self._train_window = int(state["train_window"])

    def val_dataloader(self) -> DataLoader:
        return self._loader(FixedWindowDataset(self.sources, self.tokenizer, self.fixed_windows("val")))

    def test_dataloader(self) -> DataLoader:
        return self._loader(FixedWindowDataset(self.sources, self.tokenizer, self.fixed_windows("test")))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(FixedWindowDataset(self.sources, self.tokenizer, self.fixed_windows("predict")))
