"""Shared pieces of the DNA benchmarks (``dna_pretrain_context.py``, ``dna_context_sweep.py``).

The FASTA files (Debian packages ``smalt-examples``, ``ragout-examples`` and ``kleborate-examples``), a flat
``--data-dir`` copy of the ones a script reads for machines without those packages (``--stage-data DIR`` makes
it), the run's metadata (device, versions, date, command), a time planner that measures seconds per optimizer
step before it fixes a token budget, and atomic writers for the results (markdown, JSON, PNG).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMALT = Path("/usr/share/doc/smalt/test/data")
RAGOUT = Path("/usr/share/doc/ragout/examples")
AUREUS_DIR = RAGOUT / "S.Aureus/references"
AUREUS = ("COL", "JKD6008", "N315", "RF122", "USA300_FPR3757")
KLEBORATE = Path("/usr/share/doc/kleborate/examples/data")
VCHOLERAE = ("H1", "O1_Inaba", "O1_biovar", "O395")
KPNEUMONIAE = ("Klebs_HS11286", "Klebs_Kp1084", "MGH78578", "NTUH-K2044")
# file name -> where the Debian package installs it
DATA = {
    "hs37chrXtrunc.fa.gz": SMALT / "hs37chrXtrunc.fa.gz",  # human chrX, first 70 Mb (hs37)
    "genome_1.fa.gz": SMALT / "genome_1.fa.gz",  # P. falciparum, 14 chromosomes
    "cigar_ref.fa.gz": SMALT / "cigar_ref.fa.gz",  # P. knowlesi, contigs named Pk.<chromosome>.<n>
    **{f"{s}.fasta.gz": AUREUS_DIR / f"{s}.fasta.gz" for s in AUREUS},  # five S. aureus strains
    "MG1655-K12.fasta.gz": RAGOUT / "E.Coli/references/MG1655-K12.fasta.gz",  # E. coli K-12, 4.6 Mb
    # four V. cholerae strains (2 chromosomes, about 4.1 Mb each); four K. pneumoniae (5.3-5.5 Mb + plasmids)
    **{f"{s}.fasta.gz": RAGOUT / f"V.Cholerae/references/{s}.fasta.gz" for s in VCHOLERAE},
    **{f"{s}.fna.xz": KLEBORATE / f"{s}.fna.xz" for s in KPNEUMONIAE},
}
PACKAGES = "smalt-examples ragout-examples kleborate-examples"


def xz_name(name: str) -> str:
    """The name a ``.gz`` file of ``DATA`` is staged under with ``--stage-xz`` (``x.fa.gz`` -> ``x.fa.xz``)."""
    return name[:-3] + ".xz" if name.endswith(".gz") else name


def data_path(name: str, data_dir: str | None) -> str:
    """The path of FASTA file ``name`` (a key of ``DATA``): under ``data_dir`` if given (as staged: the file, or
    its ``--stage-xz`` copy), else as installed.

    Raises SystemExit with a one-line message naming the missing file and how to get it."""
    p = Path(data_dir) / name if data_dir else DATA[name]
    if data_dir and not p.is_file() and (Path(data_dir) / xz_name(name)).is_file():
        p = Path(data_dir) / xz_name(name)
    if not p.is_file():
        how = (f"copy it there (python {Path(sys.argv[0]).name} --stage-data {data_dir} on a machine with the "
               f"Debian packages {PACKAGES})" if data_dir else f"apt-get install {PACKAGES}, or pass --data-dir")
        raise SystemExit(f"{p}: FASTA file not found; {how}")
    return str(p)


def stage_data(dest: str, names, xz: bool = False) -> None:
    """Copy the FASTA files ``names`` flat into ``dest`` (what ``--data-dir`` reads). Copies of the other files
    of ``DATA`` found there are removed, so that ``dest`` carries only what this one script reads (the device
    machine's working tree is small); other files there (a checkpoint) are left alone. ``xz``: gzip files are
    recompressed with xz -9 instead (human chrX: 18.9 -> 15.0 MiB; about 3 CPU minutes, once)."""
    import gzip
    import lzma

    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    missing = [str(DATA[n]) for n in names if not DATA[n].is_file()]
    if missing:
        raise SystemExit(f"{missing[0]}: FASTA file not found; apt-get install {PACKAGES}")
    keep = {xz_name(n) if xz else n for n in names}
    for other in sorted({f for n in DATA for f in (n, xz_name(n))} - keep):
        if (d / other).is_file():
            (d / other).unlink()
    total = 0
    for name in names:
        src = DATA[name]
        if xz and name.endswith(".gz"):
            dst = d / xz_name(name)
            stamp = d / f".{dst.name}.source_size"  # the source it was made from, so a stale copy is redone
            if not dst.exists() or not stamp.exists() or stamp.read_text() != str(src.stat().st_size):
                tmp = dst.with_name(dst.name + ".tmp")
                with gzip.open(src, "rb") as fin, lzma.open(tmp, "wb", preset=9) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 22)
                os.replace(tmp, dst)
                stamp.write_text(str(src.stat().st_size))
        else:
            dst = d / name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, dst)
        total += dst.stat().st_size
    rest = sum(f.stat().st_size for f in d.iterdir() if f.is_file()) - total
    print(f"staged {len(names)} FASTA files ({total / 2**20:.1f} MiB) in {d}: {', '.join(sorted(keep))}"
          + (f"; other files there: {rest / 2**20:.1f} MiB" if rest else ""))


def versions() -> dict:
    import lightning
    import numpy
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
         "numpy": numpy.__version__}
    for mod in ("triton", "pyfaidx"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional, reported when present
            pass
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        out = ""
    v["mambaverse_commit"] = out or "unknown (no git)"
    return v


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def command_line(argv) -> str:
    return " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:]))


def parse_args(ap, argv):
    """(args, names of the options given on the command line): --tiny replaces only the ones not given."""
    argv_list = list(sys.argv[1:] if argv is None else argv)
    given = {a[2:].split("=")[0].replace("-", "_") for a in argv_list if a.startswith("--")}
    return ap.parse_args(argv_list), given


def apply_tiny(args, given: set, tiny: dict) -> None:
    """With --tiny, set the tiny defaults of every option the command line did not give."""
    if args.tiny:
        for k, v in tiny.items():
            if k not in given:
                setattr(args, k, v)


def run_meta(args, argv) -> dict:
    """The head every DNA results file starts with: date, device, versions, the --tiny caveat, command."""
    return {"date": utc_now(), "device": device_name(args.device), "versions": versions(),
            **({"note": "--tiny: a pipeline check on CPU (a 2-layer d_model 32 model, a few steps); its numbers say "
                        "nothing about context"} if args.tiny else {}),
            "command": command_line(argv)}


def utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Clock:
    """Wall-clock budget of a whole script: ``left()`` seconds remain of ``budget`` (inf without one)."""

    def __init__(self, budget: float | None):
        self.t0, self.budget = time.monotonic(), budget

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - self.elapsed()


def seconds_per_step(step, warm: int = 1, timed: int = 2, device: str = "cpu") -> float:
    """Mean wall seconds of ``step()`` (one optimizer step) over ``timed`` calls after ``warm`` calls.

    The warm calls compile the kernels for these shapes, so the runs that follow do not pay for it again."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warm):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(timed):
        step()
    sync()
    return (time.perf_counter() - t) / timed


def bisect_order(items: list) -> list:
    """Items reordered so that any prefix spreads over the whole range (middle first, then halves)."""
    out, queue = [], [(0, len(items))]
    while queue:
        lo, hi = queue.pop(0)
        if lo >= hi:
            continue
        mid = (lo + hi) // 2
        out.append(items[mid])
        queue += [(lo, mid), (mid + 1, hi)]
    return out


def write_json(path: Path, obj) -> Path:
    from mambaverse.genomics.metrics import atomic_write_json

    return atomic_write_json(path, obj)


def write_text(path: Path, text: str) -> Path:
    from mambaverse.genomics.metrics import atomic_write_bytes

    return atomic_write_bytes(path, text.encode())


def save_png(fig, path: Path) -> Path:
    from mambaverse.genomics.metrics import save_figure

    return save_figure(fig, path)


_LAST_PLOT: dict[str, float] = {}


def plot_or_skip(plot, *args, every: float = 0.0) -> Path | None:
    """``plot(*args)`` (the last argument is the PNG path, which it returns), or None: where matplotlib is not
    installed (the markdown and JSON are the results; ``--from-json`` redraws the plot on a machine that has
    it), or when this path was drawn less than ``every`` seconds ago (progressive writes of quick runs)."""
    key, now = str(args[-1]), time.monotonic()
    if every and now - _LAST_PLOT.get(key, -math.inf) < every:
        return None
    _LAST_PLOT[key] = now
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plot (rerun with --from-json on a machine that has it)", flush=True)
        return None
    return plot(*args)


def meta_lines(meta: dict) -> list[str]:
    """The header every results file carries: date, device, versions, command, and the rest of ``meta``."""
    lines = [f"- date: {meta['date']}", f"- device: {meta['device']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
             f"- command: `{meta['command']}`"]
    for key, value in meta.items():
        if key not in ("date", "device", "versions", "command") and not isinstance(value, (dict, list)):
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    return lines


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def set_cpu_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))


# --------------------------------------------------------------------------- command-line checks (before any work)
def check_lengths(lengths, flag: str = "--lengths") -> None:
    """Every length a power of two >= 2: the results' ``2^k`` column, the doubling length warmup and the
    halving of a window into shorter sequences assume it. Raises SystemExit with one line otherwise."""
    bad = [L for L in lengths if L < 2 or L & (L - 1)]
    if bad:
        raise SystemExit(f"{flag} {' '.join(map(str, lengths))}: {bad[0]} is not a power of two >= 2; expected "
                         f"lengths such as 1024 4096 16384")


def check_time_budget(budget) -> None:
    """``--time-budget`` is a positive number of seconds, or left out. Raises SystemExit with one line otherwise."""
    if budget is not None and not (budget > 0 and math.isfinite(budget)):
        raise SystemExit(f"--time-budget {budget}: expected a positive number of seconds (or leave it out)")


def check_out_dir(path, flag: str) -> None:
    """The folder ``path`` (an option's value) can be created and written: checked before hours of work, not at
    the first write. Raises SystemExit with the one-line OutputPathError message otherwise."""
    from mambaverse.atomic import check_writable_dir
    from mambaverse.errors import OutputPathError

    try:
        check_writable_dir(path, flag)
    except OutputPathError as exc:
        raise SystemExit(str(exc)) from None


def load_checkpoint(path, flag: str) -> dict:
    """A ``dna_pretrain_context.py --save-ckpt`` checkpoint (a dict with a ``state_dict``), read with
    ``torch.load(weights_only=True)`` (never runs a pickle's code). Raises SystemExit with one line naming the
    file when it is missing, unreadable or not such a checkpoint."""
    import torch

    if not Path(path).is_file():
        raise SystemExit(f"{flag} {path}: no such checkpoint (dna_pretrain_context.py --save-ckpt writes it)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, EOFError, RuntimeError, ... here
        text = str(exc)  # torch's weights-only refusal is a paragraph; its cause follows "WeightsUnpickler error:"
        text = text.split("WeightsUnpickler error:", 1)[-1]
        why = " ".join(x.strip() for x in text.strip().splitlines()[:1] if x.strip())[:120]
        raise SystemExit(f"{flag} {path}: not a checkpoint torch.load(weights_only=True) can read "
                         f"({type(exc).__name__}{': ' + why if why else ''}); expected the file "
                         f"dna_pretrain_context.py --save-ckpt writes") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        raise SystemExit(f"{flag} {path}: a {type(ck).__name__} without a state_dict; expected the checkpoint "
                         f"dna_pretrain_context.py --save-ckpt writes")
    return ck


def run_main(main) -> int:
    """``main()``, with a bad input the library reports (a ``MambaverseError``: an empty FASTA file, a checkpoint
    that does not fit the backbone) printed as its one line instead of a traceback."""
    from mambaverse.errors import MambaverseError

    try:
        return main()
    except MambaverseError as exc:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {exc}") from None


class BackgroundJob:
    """A numpy-only job (the Markov anchors) in a forked child, started before anything touches CUDA, so it
    runs beside the GPU runs. ``job(args, queue)`` puts one list of row dicts (an ``error`` key marks a
    failure); ``poll()`` returns the rows once they exist (``[]`` until then, or when ``enabled`` is False)."""

    def __init__(self, job, args, name: str, enabled: bool = True):
        import multiprocessing as mp

        self.rows: list[dict] = []
        self.proc = None
        self.name = name
        if not enabled:
            return
        ctx = mp.get_context("fork")
        self.queue = ctx.Queue()
        self.proc = ctx.Process(target=job, args=(args, self.queue), daemon=True)
        self.proc.start()

    def poll(self, wait: float = 0.0) -> list[dict]:
        import queue as q

        if self.proc is not None and not self.rows:
            try:
                got = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except q.Empty:
                return self.rows
            errors = [r["error"] for r in got if "error" in r]
            if errors:
                print(f"{self.name} failed: {errors[0]}", flush=True)
            self.rows = [r for r in got if "error" not in r]
            self.proc.join(timeout=5)
        return self.rows
