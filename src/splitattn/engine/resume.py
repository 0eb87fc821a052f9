"""Checks a training checkpoint passes before a run resumes from it: every entry of the type and range a run
writes, and the same global batch, training set and seed as this run (else its step count would mean other
epochs, and its batch order and augmentation another stream)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..utils.validation import short_repr
from .rng import rng_state_problem

NEW_RUN = "start a new run (another --output, or --overwrite)"


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _entry_problem(ck: dict[str, Any]) -> tuple[str, str] | None:
    """The first entry of a training checkpoint whose type or value no run writes, and what is wrong."""
    for key in ("step", "epoch", "batch", "world_size", "ema_n_averaged"):
        if not _is_int(ck.get(key), lo=1 if key == "world_size" else 0):
            return key, f"is {short_repr(ck.get(key))}, expected an integer >= {int(key == 'world_size')}"
    best = ck.get("best")
    if not _is_number(best) or math.isnan(best) or best == math.inf:
        return "best", f"is {short_repr(best)}, expected a finite number or -inf"
    sums = ck.get("sums")
    if not isinstance(sums, dict) or not {"loss", "steps", "skipped", "lr"} <= sums.keys():
        return "sums", f"is {short_repr(sums)}, expected a dict with loss, steps, skipped and lr"
    wrong = [k for k, v in sums.items() if not isinstance(k, str) or not _is_number(v) or not math.isfinite(v)
             or (k in ("steps", "skipped") and not _is_int(v))]
    if wrong:
        return "sums", f"holds {short_repr(wrong[0])}: {short_repr(sums[wrong[0]])}, expected a finite number"
    sched = ck.get("scheduler")
    last = sched.get("last_epoch") if isinstance(sched, dict) else sched
    if not _is_int(last) or last != ck["step"]:
        return "scheduler", f"is at iteration {short_repr(last)}, expected the checkpoint's step {ck['step']}"
    rngs, n = ck.get("rng"), ck["world_size"]
    if not isinstance(rngs, list | tuple) or len(rngs) != n:
        got = f"a list of {len(rngs)}" if isinstance(rngs, list | tuple) else f"a {type(rngs).__name__}"
        return "rng", f"is {got}, expected a list of {n} RNG states (one per process)"
    for i, state in enumerate(rngs):
        problem = rng_state_problem(state)
        if problem:
            return "rng", f"has a bad state for process {i}: {problem}"
    return None


def check_entries(ck: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint with a malformed position, running sum, schedule or RNG entry.

    Raises:
        CheckpointError: one line naming ``path``, the entry and what is wrong with it.
    """
    problem = _entry_problem(ck)
    if problem:
        key, what = problem
        raise CheckpointError(f"checkpoint {path}: its {key!r} entry {what}; the file is damaged or was not "
                              "written by splitattn train: resume from another checkpoint, or " + NEW_RUN)


def _old_batch(ck: dict[str, Any], key: str) -> str:
    """A hint when ``ck``'s config (before ``config_version`` 2) gave ``batch_size`` per process."""
    config = ck.get("config") if isinstance(ck.get("config"), dict) else {}
    per_proc, n = config.get("batch_size"), ck.get("world_size")
    if key != "global_batch" or "config_version" in config or not _is_int(per_proc, 1) or not _is_int(n, 1):
        return ""
    if ck.get("global_batch") != per_proc * n or n == 1:
        return ""
    return (f" (that run's batch_size {per_proc} was per process, x {n} processes: set "
            f"batch_size_per_process {per_proc} or batch_size {per_proc * n})")


def check_same_run(ck: dict[str, Any], path: Path, *, global_batch: int, train_size: int, seed: int,
                   steps_per_epoch: int) -> None:
    """Refuse a checkpoint (already through :func:`check_entries`) of a run with another global batch,
    training-set size or seed. Checkpoints written before these were recorded are checked through their
    config's seed and their (epoch, batch) position, which another steps-per-epoch contradicts.

    Raises:
        CheckpointError: one line naming ``path``, the field, both values and what to do.
    """
    config = ck.get("config") if isinstance(ck.get("config"), dict) else {}
    fields = (("global_batch", "a global batch of {} images", global_batch, "global batch (batch_size)"),
              ("train_size", "a training set of {} images", train_size, "training data"),
              ("seed", "seed {}", seed, "seed"))
    for key, what, ours, how in fields:
        theirs = ck.get(key, config.get(key) if key == "seed" else None)
        if theirs is not None and theirs != ours:
            raise CheckpointError(f"checkpoint {path} was written with {what.format(short_repr(theirs))} "
                                  f"('{key}'), this run has {ours}{_old_batch(ck, key)}; resume with the "
                                  f"{how} of that run, or " + NEW_RUN)
    step = ck["step"]
    if divmod(step, steps_per_epoch) != (ck["epoch"], ck["batch"]):
        raise CheckpointError(
            f"checkpoint {path} is at step {step} = epoch {ck['epoch']} + batch {ck['batch']}, which does "
            f"not fit this run's {steps_per_epoch} steps per epoch: the global batch or the training set "
            "changed; resume with those of that run, or " + NEW_RUN)


__all__ = ["check_entries", "check_same_run"]
