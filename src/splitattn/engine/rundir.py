"""The run folder: never trained into by accident, cleaned of a killed run's leftovers, kept consistent."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..utils.fileio import atomic_write_text, remove_stale_temp_files

log = logging.getLogger("splitattn")

RUN_FILES = ("last.ckpt", "best.ckpt", "metrics.jsonl", "config.yaml")
LOCK_NAME = ".lock"


class RunDirLock:
    """An exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` (which holds the owner's PID), so that one process
    at a time trains into a run folder. The kernel drops the lock when the process dies, however it dies;
    :meth:`release` (or garbage collection of the file) drops it earlier.

    Use :func:`lock_run_dir` to take one.
    """

    def __init__(self, run_dir: Path, file: Any, created_dir: bool) -> None:
        self.run_dir, self.path, self._file = run_dir, run_dir / LOCK_NAME, file
        self._created_dir = created_dir

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Remove ``.lock`` (and the run folder, when this lock created it and it stayed empty), unlock."""
        if self._file is None:
            return
        try:  # unlinked while still locked: a process waiting on the old file sees the swap and retries
            self.path.unlink(missing_ok=True)
            if self._created_dir:
                self.run_dir.rmdir()
        except OSError:
            pass
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "a process whose PID it does not record"


def lock_run_dir(run_dir: Path) -> RunDirLock:
    """Take the run folder's lock before anything in it is read, deleted or written.

    The folder is created if needed (and removed again on :meth:`RunDirLock.release` if it stayed empty).

    Raises:
        ConfigError: ``run_dir`` is a file, cannot be created, or another process holds its lock (the
            message names the folder and that process's PID).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output {run_dir} is a file, not a run folder; choose another --output")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run folder {run_dir} ({e.strerror}); choose another "
                          "--output") from e
    path = run_dir / LOCK_NAME
    while True:
        try:
            f = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held open for the whole run
        except OSError as e:
            raise ConfigError(f"cannot write to the run folder {run_dir} ({e.strerror}); choose another "
                              "--output") from e
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ConfigError(f"{run_dir} is in use by another training process ({_holder(path)}, holding "
                              f"{path}); wait for it to end or stop it, or choose another --output") from None
        except OSError as e:  # a file system without locks: train on, unguarded, and say so
            log.warning("cannot lock %s (%s): a second run on this folder would not be detected", path,
                        e.strerror)
            break
        try:  # the holder may have removed the file between our open and flock: lock the current one
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return RunDirLock(run_dir, f, created)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Check ``run_dir`` before training writes to it (rank 0 holds its :func:`lock_run_dir` lock).

    Args:
        run_dir: the run folder (on rank 0, :func:`lock_run_dir` has created it).
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


__all__ = ["LOCK_NAME", "RUN_FILES", "RunDirLock", "drop_metrics_after", "lock_run_dir", "prepare_run_dir"]
