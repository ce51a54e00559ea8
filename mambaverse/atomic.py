"""Atomic outputs: a file, or a set of files in one folder, is either all old or all new.

Every writer here writes under a temporary name *in the destination's folder* (so that the final step is a
``rename`` on one file system, never a copy), gives the result the mode a plain ``open`` would (``0o666``
minus the umask; ``mkstemp`` alone would leave ``0600``), and then renames it into place.

* :func:`atomic_write` / :func:`atomic_write_bytes`: one file, by ``os.replace``.
* :func:`write_set`: several files that belong together (weights + config; embeddings + coordinates +
  probabilities). They are written into a new folder beside the destination, the destination's other
  entries are hard-linked into it, and the two folders are swapped by one ``renameat2(RENAME_EXCHANGE)``
  (Linux >= 3.15); a reader sees either the old folder or the new one, never a mix. Where the exchange is not
  available, the old folder is renamed aside and the new one renamed in (a crash between the two leaves the
  old folder under a hidden name; the next :func:`write_set` puts it back).

Temporary names are ``.<name>.tmp-<host>-<pid>-<random>``. A writer removes its own on any error; a writer
killed outright (SIGKILL, power loss) cannot, so every writer first removes those of dead processes of this
host beside its destination (:func:`sweep`). Python's default SIGTERM also ends a process without cleanup;
under Lightning (``mambaverse fit``) SIGTERM is a flag checked between steps instead.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import socket
import threading
from pathlib import Path
from typing import Callable

from .errors import OutputPathError

__all__ = ["atomic_write", "atomic_write_bytes", "check_writable_dir", "ensure_dir", "file_mode", "sweep", "temp_name", "write_set"]

_HOST = socket.gethostname().replace("-", "_")


_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666`` minus the process umask. (Reading the
    umask means setting it; the lock keeps writers on several threads from restoring each other's 0.)"""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def temp_name(final: Path, kind: str = "tmp") -> Path:
    """A hidden temporary name beside ``final``, owned by this process (host and pid in the name)."""
    return final.parent / f".{final.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _unwritable(path: Path, exc: OSError, what: str) -> OutputPathError:
    """The one-line error for a folder that cannot be made or written; names the file in the way, if any."""
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "it is a file" if parent == path else f"{parent} is a file"
                return OutputPathError(f"{what} {path}: cannot create it ({where}); expected a writable folder")
            break
    return OutputPathError(f"{what} {path}: cannot create or write it ({exc.strerror or exc}); "
                           f"expected a writable folder")


def ensure_dir(path, what: str = "output folder", probe: bool = False) -> Path:
    """Create the folder ``path`` (and its parents) if needed; with ``probe``, also create and remove one
    temporary file in it, so a read-only or virtual file system is found before any work is done.

    Raises :class:`mambaverse.errors.OutputPathError` (one line naming ``what`` and the path; expected a
    writable folder) instead of a raw ``FileNotFoundError``/``NotADirectoryError``/``FileExistsError``.
    Returns ``path`` as a Path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if probe:
            _probe(path)
    except OSError as exc:
        raise _unwritable(path, exc, what) from None
    return path


def _probe(folder: Path) -> None:
    """Make and remove a file in ``folder`` (raises the OSError when that is impossible)."""
    tmp = temp_name(folder / "probe")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(tmp)


def check_writable_dir(path, what: str = "output folder") -> Path:
    """Check, without creating anything that stays, that the folder ``path`` exists and is writable or can be
    created: its nearest existing ancestor must be a folder in which a file can be made (a probe file is made
    and removed at once, so a read-only or virtual file system such as ``/proc`` is found even by root, whom
    ``os.access`` would let through). For checks before a long run. Raises
    :class:`mambaverse.errors.OutputPathError` naming ``what`` and the path; returns ``path`` as a Path."""
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    probe = path
    while not (probe.exists() or probe.is_symlink()) and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(probe))
        _probe(probe)
    except OSError as exc:
        raise _unwritable(path, exc, what) from None
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(final) -> list[Path]:
    """Remove temporaries of ``final`` left by writers of this host that no longer run (killed mid-write);
    restore a folder renamed aside by a :func:`write_set` that died before renaming the new one in.
    Returns the paths removed."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    prefix = f".{final.name}."
    for entry in final.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("-")
        if len(parts) != 4 or parts[0] not in ("tmp", "old") or parts[1] != _HOST or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or _pid_alive(pid):
            continue  # a writer still at work (or this one)
        if parts[0] == "old" and not final.exists():
            os.rename(entry, final)  # the swap died half-way: the old set is the consistent one
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to create a temporary file beside ``path``, then give it the umask's mode and rename
    it to ``path``. The temporary is removed if ``write`` raises. Returns ``path``.

    A folder that cannot be created or written raises :class:`mambaverse.errors.OutputPathError`."""
    path = Path(path)
    ensure_dir(path.parent)
    sweep(path)
    tmp = temp_name(path)
    try:
        try:
            write(tmp)
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except OSError as exc:
            if isinstance(exc, OutputPathError) or exc.filename not in (str(tmp), tmp, str(path), path):
                raise  # a writer's own error (e.g. reading its source) stays as it was
            raise _unwritable(path.parent, exc, "output folder") from None
    finally:
        if tmp.exists():
            _remove(tmp)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return atomic_write(path, write)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file or a folder tree) to ``dst``; copy where a link is refused."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        link(src, dst)


def write_set(directory, writers: dict[str, Callable[[Path], None]], stale=(), error=OSError) -> Path:
    """Write the files ``{name: write(path)}`` into ``directory`` as one set (see the module docstring).

    Entries of an existing ``directory`` that are not being written are kept (hard links), except those named
    in ``stale``, which are removed with the swap. ``error`` is the exception class raised when ``directory``
    is a file; a parent that cannot be created or written raises :class:`mambaverse.errors.OutputPathError`.
    No temporary outlives the call, whatever a writer raises. Returns ``directory`` as a Path.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise error(f"{directory} is a file; expected a folder (new or existing)")
    ensure_dir(directory.parent)
    sweep(directory)
    tmp = temp_name(directory)
    try:
        os.mkdir(tmp)
    except OSError as exc:
        raise _unwritable(directory, exc, "output folder") from None
    mode = file_mode()
    try:
        for name, write in writers.items():
            write(tmp / name)
            os.chmod(tmp / name, mode)
        if not directory.exists():
            try:
                os.rename(tmp, directory)  # fails if another writer created it meanwhile: then swap below
                return directory
            except OSError:
                pass
        shutil.copymode(directory, tmp)
        skip = set(writers) | set(stale)
        for entry in directory.iterdir():
            if entry.name not in skip:
                _link_tree(entry, tmp / entry.name)
        if not _exchange(tmp, directory):
            old = temp_name(directory, "old")
            os.rename(directory, old)
            os.rename(tmp, directory)
            tmp = old
    finally:
        if tmp.exists():
            _remove(tmp)  # the old set after a swap, or the unfinished new one after an error
    return directory
