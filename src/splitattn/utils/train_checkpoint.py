"""Atomic training checkpoints that load without executing pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (RNG states are stored as
uint8 tensors), written with :func:`torch.save` to a temp file in the same folder, fsync'ed, then
``os.replace``'d over the target, so a kill at any moment leaves either the old or the new file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, MissingFileError
from .fileio import atomic_torch_save, safe_torch_load
from .validation import short_repr

CKPT_SUFFIX = ".ckpt"
QUARANTINE_SUFFIX = ".corrupt"
CHECKPOINT_FORMAT = "splitattn-train-2"
"""The ``format`` entry written in training checkpoints."""
READABLE_FORMATS = ("splitattn-train-1", CHECKPOINT_FORMAT)
"""Formats :func:`check_format` accepts (a checkpoint without the entry, from before it, is read too)."""
CLASSIFICATION, DETECTION, SEGMENTATION = "classification", "detection", "segmentation"
"""The ``task`` a checkpoint records: the names of the engine's tasks, defined here, in the lowest layer
that reads them (a checkpoint without the entry is a classification one)."""

log = logging.getLogger("splitattn")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`splitattn.utils.fileio.atomic_torch_save`).

    Args:
        path: destination file; its folder is created.
        state: plain containers of tensors / Python scalars / strings only, so that
            :func:`load_checkpoint` can read it with ``weights_only=True``.

    Returns:
        The path written.
    """
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | os.PathLike, required: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Args:
        path: the ``.ckpt`` file.
        required: top-level keys that must be present (and not ``None``).

    Raises:
        MissingFileError: ``path`` does not exist.
        CheckpointError: the file is truncated/corrupt, is not a dict, lacks a ``required`` key, or needs
            pickled code; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    obj = safe_torch_load(path, CheckpointError, "checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict; it is not a "
                              "checkpoint of splitattn")
    require_entries(obj, required, path)
    return obj


def require_entries(ck: dict[str, Any], keys: Sequence[str], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and the ``keys`` that ``ck`` lacks (or holds None)."""
    missing = [k for k in keys if ck.get(k) is None]
    if missing:
        entries = "entries" if len(missing) > 1 else "entry"
        raise CheckpointError(f"checkpoint {path} has no {', '.join(map(repr, missing))} {entries}; is it a "
                              "checkpoint of `splitattn train`?")


def check_format(ck: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a training checkpoint of a format this version cannot read (a newer splitattn's).

    Raises:
        CheckpointError: one line naming ``path``, its format and the supported one.
    """
    fmt = ck.get("format")
    if fmt is None or (isinstance(fmt, str) and fmt in READABLE_FORMATS):
        return
    raise CheckpointError(f"checkpoint {path} has format {short_repr(fmt, 60)}, this splitattn reads "
                          f"{CHECKPOINT_FORMAT!r} and older; it was written by a newer splitattn: upgrade "
                          "splitattn to use it")


def _load_error(path: Path) -> CheckpointError | None:
    """The error loading ``path`` raises (None when it loads); a file that vanished raises."""
    try:
        load_checkpoint(path)
    except CheckpointError as e:
        return e
    return None


def quarantine(path: str | os.PathLike) -> Path:
    """Rename an unreadable checkpoint to ``<name>.corrupt`` (``<name>.corrupt-N`` if taken), out of the
    way of :func:`find_latest_checkpoint` but kept for inspection.

    Returns:
        The new path.

    Raises:
        MissingFileError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    n, target = 0, path.with_name(path.name + QUARANTINE_SUFFIX)
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{path.name}{QUARANTINE_SUFFIX}-{n}")
    os.rename(path, target)
    log.warning("moved the unreadable checkpoint %s to %s", path, target.name)
    return target


_quarantine = quarantine  # find_latest_checkpoint's argument of the same name hides it


def find_latest_checkpoint(run_dir: str | os.PathLike, quarantine: bool = False) -> Path | None:
    """The newest readable ``*.ckpt`` in ``run_dir`` (by modification time), or ``None``.

    ``best.ckpt`` is only a candidate when nothing else is, since it may be older than ``last.ckpt``
    even when its mtime ties. Corrupt/truncated files are skipped with a warning naming them.

    Args:
        run_dir: the run folder.
        quarantine: also rename each unreadable file to ``<name>.corrupt`` (:func:`quarantine`), so that
            the next save cannot overwrite the evidence; only one process of a run should do it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None

    def newest_first(p: Path) -> tuple[bool, int, bool]:
        try:
            mtime = p.stat().st_mtime_ns
        except FileNotFoundError:  # removed since the listing
            mtime = -1
        return p.name != "best.ckpt", mtime, p.name == "last.ckpt"

    files = [p for p in run_dir.glob(f"*{CKPT_SUFFIX}") if p.is_file() and not p.name.startswith(".")]
    for p in sorted(files, key=newest_first, reverse=True):
        try:
            error = _load_error(p)
        except FileNotFoundError:
            continue
        if error is None:
            return p
        log.warning("skipping %s", error)
        if quarantine:
            _quarantine(p)
    return None


__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "check_format", "find_latest_checkpoint",
           "load_checkpoint", "quarantine", "require_entries", "save_checkpoint"]
