"""When a run logs, evaluates and saves: each task's own rhythm, in epochs or in iterations.

A :class:`~splitattn.engine.tasks.Task` builds its :class:`Cadence` from its config section; the
:class:`~splitattn.engine.trainer.Trainer` asks it after every step and adds what every run shares (a
checkpoint every ``checkpoint_interval`` iterations and at the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Moments(NamedTuple):
    """What to do after a step: write a metrics record, evaluate (into that record), save ``last.ckpt``."""

    log: bool
    evaluate: bool
    save: bool


class Cadence:
    """The interface: :meth:`moments` after each step, :meth:`stamp` for each metrics record."""

    def moments(self, step: int, at_end: bool, cut_short: bool) -> Moments:
        """What to do after iteration ``step`` (counted from 1).

        Args:
            step: iterations done.
            at_end: the run stops after this step.
            cut_short: it stops before its schedule's end (``max_steps``): no final evaluation.
        """
        raise NotImplementedError

    def stamp(self, step: int) -> dict[str, int]:
        """Counters a metrics record carries besides ``epoch`` and ``step``."""
        return {}


@dataclass(frozen=True)
class EpochCadence(Cadence):
    """Log and save at every epoch end; evaluate every ``eval_interval`` epochs and after the last."""

    steps_per_epoch: int
    eval_interval: int = 1

    def moments(self, step: int, at_end: bool, cut_short: bool) -> Moments:
        epoch_end = step % self.steps_per_epoch == 0
        due = (step // self.steps_per_epoch) % self.eval_interval == 0 or at_end
        return Moments(log=epoch_end, evaluate=epoch_end and not cut_short and due, save=epoch_end)


@dataclass(frozen=True)
class IterationCadence(Cadence):
    """Log every ``log_period`` iterations and at the end; evaluate every ``eval_period`` (0: only at the
    end); records carry ``iter``."""

    log_period: int
    eval_period: int = 0

    def moments(self, step: int, at_end: bool, cut_short: bool) -> Moments:
        periodic = bool(self.eval_period and step % self.eval_period == 0)
        return Moments(log=step % self.log_period == 0 or at_end,
                       evaluate=(at_end and not cut_short) or periodic, save=False)

    def stamp(self, step: int) -> dict[str, int]:
        return {"iter": step}


__all__ = ["Cadence", "EpochCadence", "IterationCadence", "Moments"]
