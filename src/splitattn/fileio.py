"""The one way splitattn writes files (atomically) and reads PyTorch pickles (without running code)."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import DiskFullError, SplitAttnError

TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` all at once: a kill at any moment leaves either the old file or the new one.

    ``write(tmp)`` writes the content to a temp file in the same folder; it is then fsync'ed and
    ``os.replace``'d over ``path``, and the folder is fsync'ed so the rename is durable. The temp file
    is removed on every failure.

    Args:
        path: the destination; its folder is created.
        write: called with the temp file's path.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        full = _disk_full(path, e)
        if full is None:
            raise
        raise full from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _disk_full(path: Path, e: BaseException) -> DiskFullError | None:
    """A one-line error naming ``path`` and the free space when ``e`` means the disk is full."""
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or "unexpected pos" in str(e) or "No space left" in str(e)
    if not full:
        return None
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"no space left on the device writing {path} ({free} on that file system); "
                         f"the previous {path.name}, if any, is unchanged: free some space and run again")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that :func:`atomic_write` leaves behind when a process is killed mid-write."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`atomic_write` of ``torch.save(obj)``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: str | os.PathLike, error: type[SplitAttnError], what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain containers only, never code.

    Args:
        path: the file.
        error: the exception raised for an unreadable file (e.g. ``WeightsError``).
        what: what the file is, for the message (``"checkpoint"``).

    Raises:
        error: the file needs pickled code, or is truncated or corrupt; the message names the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError as e:
        raise error(f"{what} {path} is corrupt: it asks for more memory than this machine has") from e
    except Exception as e:  # noqa: BLE001 (a crafted file can raise anything from the unpickler)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise error(
                f"{what} {path} needs pickled code to load, which splitattn refuses to execute "
                f"({first}); re-save it as plain tensors and containers (or safetensors)"
            ) from e
        raise error(f"{what} {path} is truncated or corrupt ({first})") from e


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "remove_stale_temp_files",
           "safe_torch_load"]
