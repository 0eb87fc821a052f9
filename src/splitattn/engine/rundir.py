"""The run folder: never trained into by accident, cleaned of a killed run's leftovers, kept consistent."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import ConfigError
from ..fileio import atomic_write_text, remove_stale_temp_files

log = logging.getLogger("splitattn")

RUN_FILES = ("last.ckpt", "best.ckpt", "metrics.jsonl", "config.yaml")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Check ``run_dir`` before training writes to it.

    Args:
        run_dir: the run folder (created later, when the first file is written).
        resume: the run continues one in the folder (``--resume``).
        overwrite: the run replaces the one in the folder (``--overwrite``): its files are deleted.
        is_main: this process writes files (rank 0); the others only check.

    Raises:
        ConfigError: ``run_dir`` is a file, or holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output {run_dir} is a file, not a run folder; choose another --output")
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if present and not resume and not overwrite:
        raise ConfigError(f"{run_dir} holds a run ({', '.join(present)}); pass --resume auto to continue "
                          "it, --overwrite to replace it, or choose another --output")
    if not is_main:
        return
    for path in remove_stale_temp_files(run_dir):
        log.info("removed %s, left by a write that was killed", path)
    if present and overwrite and not resume:
        for n in present:
            (run_dir / n).unlink()
        log.info("--overwrite: removed %s from %s", ", ".join(present), run_dir)


def drop_metrics_after(run_dir: Path, step: int) -> int:
    """Remove the ``metrics.jsonl`` records of steps after ``step`` (the resumed run writes them again).

    A killed run may have logged an epoch whose checkpoint it did not finish writing; resuming from the
    previous checkpoint repeats that epoch, and its record must then appear once. A truncated last line
    (a kill mid-write) is dropped too. Returns the number of records removed.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) > step:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return dropped


__all__ = ["RUN_FILES", "drop_metrics_after", "prepare_run_dir"]
