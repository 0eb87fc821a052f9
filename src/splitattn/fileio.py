"""The one way splitattn writes files (atomically) and reads PyTorch pickles (without running code)."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import SplitAttnError


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
    except pickle.UnpicklingError as e:
        raise error(
            f"{what} {path} needs pickled code to load, which splitattn refuses to execute "
            f"({str(e).splitlines()[0]}); re-save it as plain tensors and containers (or safetensors)"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{what} {path} is truncated or corrupt ({first})") from e


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "safe_torch_load"]
