"""Atomic training checkpoints that load without executing pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (RNG states are stored as
uint8 tensors), written with :func:`torch.save` to a temp file in the same folder, fsync'ed, then
``os.replace``'d over the target, so a kill at any moment leaves either the old or the new file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError, MissingFileError
from .fileio import atomic_torch_save, safe_torch_load

CKPT_SUFFIX = ".ckpt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`splitattn.fileio.atomic_torch_save`).

    Args:
        path: destination file; its folder is created.
        state: plain containers of tensors / Python scalars / strings only, so that
            :func:`load_checkpoint` can read it with ``weights_only=True``.

    Returns:
        The path written.
    """
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated/corrupt, is not a dict, or needs pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    obj = safe_torch_load(path, CheckpointError, "checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _is_valid(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except (CheckpointError, FileNotFoundError):
        return False
    return True


def find_latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest readable ``*.ckpt`` in ``run_dir`` (by modification time), or ``None``.

    ``best.ckpt`` is only a candidate when nothing else is, since it may be older than ``last.ckpt``
    even when its mtime ties. Corrupt/truncated files are skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    files = [p for p in run_dir.glob(f"*{CKPT_SUFFIX}") if p.is_file() and not p.name.startswith(".")]
    files.sort(key=lambda p: (p.name != "best.ckpt", p.stat().st_mtime_ns, p.name == "last.ckpt"),
               reverse=True)
    for p in files:
        if _is_valid(p):
            return p
    return None


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "find_latest_checkpoint"]
