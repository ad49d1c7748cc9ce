"""Writing files atomically, the one implementation every writer uses (checkpoints,
configs, the metrics log, generated configs): through a temporary file beside the
target, an fsync, a rename and an fsync of the folder, so a crash, a kill or a full disk
leaves the old file or the new one, never a truncated one. Importing it does not load
torch."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from utils.errors import UserError

# Temporary files are ".<name>.tmp<pid>" beside the file being written.
TEMPORARY_PREFIX = "."


class WriteError(UserError, OSError):
    """A file that could not be written; the message names it and the cause."""


def temporary_path(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` first (this process's own name)."""
    return path.with_name(f"{TEMPORARY_PREFIX}{path.name}.tmp{os.getpid()}")


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], object], *, what: str = "file"
) -> None:
    """Write ``path`` with ``write(handle)`` through a temporary file, an fsync, a rename
    and an fsync of the folder.

    Raises:
        WriteError: the file could not be written (the message names ``what``, the path
            and the cause, e.g. no space left on device); the temporary file is removed
            and the previous file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        _fsync_directory(path.parent)
    except (OSError, RuntimeError) as error:
        raise WriteError(
            f"{path}: could not write the {what} ({_write_failure(error, path.parent)}); "
            "the previous one, if any, is unchanged"
        ) from error
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, *, what: str = "file") -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), what=what)


def _write_failure(error: BaseException, directory: Path) -> str:
    """The cause of a failed write in a few words: the OSError in the chain (torch
    wraps it in a RuntimeError of its own), or a full disk, or the error itself."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return f"No space left on device ({free} bytes free)"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` calls of processes no
    longer running left (a kill -9 mid-write); returns what was deleted."""
    removed = []
    for candidate in Path(directory).glob(f"{TEMPORARY_PREFIX}*.tmp*"):
        pid = candidate.name.rpartition(".tmp")[2]
        if not pid.isdigit() or (int(pid) != os.getpid() and _process_exists(int(pid))):
            continue
        try:
            candidate.unlink()
        except OSError:
            continue
        removed.append(candidate)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
