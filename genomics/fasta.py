"""FASTA files on disk: decompress once into a cache, index, validate, read windows with pyfaidx.

Every problem with a file raises :class:`GenomicsDataError` with a one-line message that names
the file (and the record, where there is one) and says what was expected.
"""
from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import lzma
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyfaidx

from mambaverse.atomic import atomic_write
from mambaverse.errors import OutputPathError

from .errors import GenomicsDataError

_MAGIC = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2"}
_OPENERS = {"gzip": gzip.open, "xz": lzma.open, "bzip2": bz2.open}
# pyfaidx picks its reader by file name (.gz/.bgz: BGZF), so a plain file with such a name is copied to the cache
_COMPRESSED_SUFFIXES = (".gz", ".bgz", ".xz", ".bz2")
_TRAILING_BLANKS = re.compile(rb"[ \t]+\n")
# a sequence line (not a '>' header, whose description may hold spaces) with a blank anywhere in it
_SEQ_BLANKS = re.compile(rb"(?m)^(?!>)[^ \t\n]*[ \t][^\n]*")  # [^ \t\n]*: no backtracking, linear time
_BLOCK = 1 << 22
# bump when the cached copies change form (v2: line endings and trailing blanks normalised; v3: blanks inside
# sequence lines dropped, a final newline added)
_CACHE_VERSION = "v3"


def default_cache_dir() -> Path:
    """``$MAMBAVERSE_CACHE/fasta`` or ``~/.cache/mambaverse/fasta``."""
    root = os.environ.get("MAMBAVERSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mambaverse")
    return Path(root) / "fasta"


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def _cache_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha1(f"{_CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    name = path.name
    for suffix in (".gz", ".xz", ".bz2", ".bgz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}.{h}"


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}


def _cache_write(final: Path, write) -> None:
    """``write(tmp)`` into the cache through ``mambaverse.atomic.atomic_write`` (a temporary beside ``final``, mode
    per the umask, then a rename); a cache folder that cannot be created or written is a one-line error."""
    try:
        atomic_write(final, write)
    except OutputPathError as exc:
        raise GenomicsDataError(f"cache_dir: {exc}; set cache_dir (or $MAMBAVERSE_CACHE) to a writable folder") from None
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise GenomicsDataError(f"cache_dir: cannot write to {final.parent} ({exc.strerror or exc}); set cache_dir "
                                f"(or $MAMBAVERSE_CACHE) to a writable folder") from None


def _clean_stream(fin, fout) -> None:
    """Copy FASTA text with CR and CRLF line endings made LF, blanks (spaces, tabs) at line ends dropped,
    blanks *inside* sequence lines dropped (``ACGT ACGT`` reads as ``ACGTACGT``; header lines keep theirs, a
    description holds spaces) and a final newline added where the file lacks one.

    pyfaidx counts every byte of a sequence line but the newline as a base, so a blank would index as an
    extra base (read as [UNK]), and a CR-only file reads as one line (an empty record).
    Streams in 4 MiB blocks; a partial line (and a final CR that may start a CRLF) waits for the next block.
    """
    carry = b""
    while True:
        block = fin.read(_BLOCK)
        final = not block
        data, hold = carry + block, b""
        if not final and data.endswith(b"\r"):
            data, hold = data[:-1], b"\r"
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if final:
            data, carry = data.rstrip(b" \t"), b""
            if data and not data.endswith(b"\n"):
                data += b"\n"
        else:
            cut = data.rfind(b"\n") + 1
            data, carry = data[:cut], data[cut:] + hold
        if b" " in data or b"\t" in data:
            data = _TRAILING_BLANKS.sub(b"\n", data)
            data = _SEQ_BLANKS.sub(lambda m: m.group().replace(b" ", b"").replace(b"\t", b""), data)
        fout.write(data)
        if final:
            return


def _needs_cleaning(path: Path) -> bool:
    """Whether a plain FASTA has CR line endings, blanks at a line end or inside a sequence line, or no final
    newline (see :func:`_clean_stream`)."""
    carry = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            if not block:
                return bool(carry)  # a last line without its newline
            data = carry + block
            if b"\r" in data:
                return True
            cut = data.rfind(b"\n") + 1  # whole lines only: a line split by the block edge waits
            lines, carry = data[:cut], data[cut:]
            if (b" " in lines or b"\t" in lines) and (_TRAILING_BLANKS.search(lines) or _SEQ_BLANKS.search(lines)):
                return True  # (the byte test first: the regexes are slow, and most files have no blank at all)


def _decompress(src: Path, kind: str | None, dest: Path) -> None:
    """Stream-decompress (``kind`` None: copy) and clean ``src`` into ``dest`` atomically (:func:`_cache_write`)."""
    def write(tmp: Path) -> None:
        try:
            with (_OPENERS[kind] if kind else open)(src, "rb") as fin, open(tmp, "wb") as fout:
                _clean_stream(fin, fout)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:  # the cache's side: full, read-only, ...
                raise GenomicsDataError(f"cache_dir: cannot write to {dest.parent} ({exc.strerror or exc}); set "
                                        f"cache_dir (or $MAMBAVERSE_CACHE) to a writable folder") from None
            raise GenomicsDataError(f"{src}: cannot decompress this {kind or 'plain'} file ({exc}); expected a valid "
                                    f"{kind or 'plain'} FASTA") from None

    _cache_write(dest, write)


def _check_looks_like_fasta(path: Path, shown: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    stripped = head.lstrip()
    if not stripped:
        if path.stat().st_size == 0 or not head:
            raise GenomicsDataError(f"{shown}: file is empty; expected FASTA records ('>name' lines followed by sequence)")
        raise GenomicsDataError(f"{shown}: file holds only whitespace; expected FASTA records")
    if stripped[:1] != b">":
        first = stripped.split(b"\n", 1)[0][:40].decode("ascii", "replace")
        hint = " (looks like FASTQ)" if stripped[:1] == b"@" else ""
        raise GenomicsDataError(
            f"{shown}: not a FASTA file{hint}: first line starts {first!r}, expected a header line starting with '>'")
    if b"\x00" in head:
        raise GenomicsDataError(f"{shown}: holds binary data; expected a text FASTA file")


def _check_index(fasta: Path, index: Path, shown: Path) -> list[tuple[str, int]]:
    """Parse a .fai index and check it against the FASTA file; return (record, length) pairs."""
    size = fasta.stat().st_size
    records: list[tuple[str, int]] = []
    try:
        text = index.read_text()
    except UnicodeDecodeError:
        raise GenomicsDataError(f"{shown}: corrupt index {index} (not text); delete it to rebuild") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            name, length, offset, lbases, lbytes = parts[0], *map(int, parts[1:5])
        except (ValueError, IndexError):
            raise GenomicsDataError(
                f"{shown}: corrupt index {index} at line {lineno}: expected 5 tab-separated fields "
                f"(name, length, offset, linebases, linewidth); delete it to rebuild") from None
        if length < 0 or offset < 0 or lbases < 0 or lbytes < lbases:
            raise GenomicsDataError(f"{shown}: corrupt index {index}, record '{name}': negative or inconsistent fields; delete it to rebuild")
        if length and lbases:
            # the record's last base: the last line may be short (rest) and need not end in a newline
            full, rest = divmod(length, lbases)
            end = offset + full * lbytes + rest if rest else offset + (full - 1) * lbytes + lbases
            if end > size or offset >= size:
                raise GenomicsDataError(
                    f"{shown}: corrupt index {index}, record '{name}': points past the end of the file "
                    f"({end} > {size} bytes); delete it to rebuild")
        records.append((name, length))
    if not records:
        raise GenomicsDataError(f"{shown}: corrupt index {index}: it lists no records; delete it to rebuild")
    return records


@dataclass
class FastaSource:
    """One FASTA file of one label, ready for random access.

    ``path`` is what the user gave; ``fasta_path`` the plain file pyfaidx reads (the path itself,
    or its decompressed copy in the cache); ``index_path`` its ``.fai`` (always in the cache for
    compressed inputs, next to ``fasta_path`` for plain ones unless that folder is read-only).
    """

    label: str
    path: str
    fasta_path: str
    index_path: str
    records: list[tuple[str, int]]
    _handle: object = field(default=None, repr=False, compare=False)
    _pid: int = field(default=-1, repr=False, compare=False)

    @property
    def lengths(self) -> dict[str, int]:
        return dict(self.records)

    def _open(self):
        if self._handle is None or self._pid != os.getpid():  # one handle per (worker) process
            try:
                self._handle = pyfaidx.Fasta(self.fasta_path, indexname=self.index_path, as_raw=True,
                                             rebuild=False, build_index=False, sequence_always_upper=True)
            except (pyfaidx.FastaIndexingError, pyfaidx.IndexNotFoundError, ValueError, OSError) as exc:
                raise GenomicsDataError(f"{self.path}: cannot open with pyfaidx ({exc}); delete {self.index_path} to rebuild") from None
            self._pid = os.getpid()
        return self._handle

    def fetch(self, record: str, start: int, end: int) -> str:
        """Sequence of ``record[start:end]`` (0-based, end exclusive), upper case."""
        try:
            seq = self._open()[record][start:end]
        except KeyError:
            raise GenomicsDataError(f"{self.path}: no record '{record}'") from None
        except (pyfaidx.FetchError, ValueError) as exc:
            raise GenomicsDataError(f"{self.path}, record '{record}': cannot read [{start}, {end}) ({exc})") from None
        seq = str(seq)
        if len(seq) != end - start:
            raise GenomicsDataError(
                f"{self.path}, record '{record}': read {len(seq)} bases from [{start}, {end}), expected {end - start}; "
                f"the index {self.index_path} may be corrupt")
        return seq

    def __getstate__(self):  # file handles do not cross process boundaries
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, -1
        return state


def prepare_fasta(path: str | os.PathLike, label: str = "", cache_dir: str | os.PathLike | None = None) -> FastaSource:
    """Decompress (once, atomically) and index one FASTA file; validate it; return a :class:`FastaSource`."""
    shown = Path(path).expanduser()
    src = shown
    if not src.exists():
        raise GenomicsDataError(f"{shown}: FASTA file not found" + (f" (label '{label}')" if label else ""))
    if src.is_dir():
        raise GenomicsDataError(f"{shown}: is a folder; expected a FASTA file (plain, .gz or .xz)")
    if src.stat().st_size == 0:
        raise GenomicsDataError(f"{shown}: file is empty; expected FASTA records ('>name' lines followed by sequence)")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise GenomicsDataError(f"cache_dir: {cache} is a file; expected a writable folder")
    key = _cache_key(src)
    kind = _compression(src)  # by magic bytes: a name may lie (plain text called .gz, gzip called .fa)
    copy, index = cache / f"{key}.fa", cache / f"{key}.fai"
    if kind is None and not copy.exists() and not index.exists():
        if src.name.lower().endswith(_COMPRESSED_SUFFIXES) or _needs_cleaning(src):
            _decompress(src, None, copy)  # a cleaned plain copy pyfaidx reads by its .fa name
    if kind is not None or copy.exists():
        if not copy.exists():
            _decompress(src, kind, copy)
        fasta, index = copy, cache / f"{key}.fa.fai"
    else:
        fasta = src
    _check_looks_like_fasta(fasta, shown)
    if not index.exists():
        def build(tmp: Path) -> None:
            try:
                pyfaidx.Faidx(str(fasta), indexname=str(tmp), rebuild=True, build_index=True).close()
            except pyfaidx.FastaIndexingError as exc:
                raise GenomicsDataError(f"{shown}: cannot index this FASTA ({' '.join(str(exc).split())})") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise GenomicsDataError(f"{shown}: cannot index this FASTA ({' '.join(str(exc).split())}); "
                                        f"expected a text FASTA file") from None

        _cache_write(index, build)
        try:
            records = _check_index(fasta, index, shown)
        except GenomicsDataError:
            index.unlink(missing_ok=True)  # never leave an index this process just built and found wrong
            raise
    else:
        records = _check_index(fasta, index, shown)
    for name, length in records:
        if length == 0:
            raise GenomicsDataError(f"{shown}: record '{name}' is empty; expected at least one base")
    return FastaSource(label=label, path=str(shown), fasta_path=str(fasta), index_path=str(index), records=records)
