"""The one atomic writer of bitsub and bitsub_torch: nothing a user saved is lost or half-written.

A file is written to a temporary file beside its target, flushed and fsync'ed, renamed over the
target with :func:`os.replace` and the directory fsync'ed, so a crash at any point leaves either
the previous file or the new one. Temporary names are ``.<name>.<pid>.<random>.tmp``: a failed
write removes its own temporary file, and the next write of the same target removes those left by
processes that no longer exist (killed saves).

Everything that writes a user's file (``bitsub.save``, checkpoints, ``results.json``, figures)
goes through :func:`atomic_path` or :func:`write_bytes`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "clean_stale", "fsync_dir", "write_bytes"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Fsync ``directory`` so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def clean_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files of ``target`` left by processes that no longer run; return them."""
    target = Path(os.fspath(target))
    directory = target.parent if str(target.parent) else Path(".")
    removed = []
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        if _pid_alive(int(parts[0])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on a clean exit it replaces ``target`` atomically.

    The caller writes the whole file to the yielded path (by any library: h5py, torch.save,
    matplotlib). On exit the file is fsync'ed, given the usual permissions (``0o666`` minus the
    umask, or ``mode``), renamed over ``target`` and the directory fsync'ed. On an exception the
    temporary file is removed and the exception propagates; ``target`` is untouched.
    """
    target = Path(os.fspath(target))
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path")
    directory = target.parent if str(target.parent) else Path(".")
    clean_stale(target)
    tmp = directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is None:
            umask = os.umask(0o22)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def write_bytes(target: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
