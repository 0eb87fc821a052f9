"""Per-epoch progress (a rich bar on a terminal, plain lines otherwise) and the metrics log."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("splitattn")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class EpochProgress:
    """Progress of one epoch: ``update(n, loss=..., lr=...)`` after every step.

    On an interactive terminal this is a rich progress bar with the metrics, images/s and ETA. When
    ``stream`` is not a TTY (CI, ``> log.txt``) it prints a plain line about every ``plain_every``
    fraction of the epoch (and at the end) instead of carriage-return bar updates.

    Args:
        total: steps in the epoch.
        desc: label, e.g. ``"epoch 3/270"``.
        enabled: ``False`` on non-zero ranks: nothing is printed.
        batch_size: images per step (global), for images/s.
        stream: where to write (default ``sys.stdout``).
        force_plain: never draw a bar (e.g. ``--no-progress-bar``).
        plain_every: fraction of the epoch between plain lines.
    """

    def __init__(self, total: int, desc: str = "", enabled: bool = True, batch_size: int = 1,
                 stream: IO[str] | None = None, force_plain: bool = False, plain_every: float = 0.25) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.enabled = enabled
        self.batch_size = batch_size
        self.stream = stream or sys.stdout
        self.count = 0
        self.metrics: dict[str, Any] = {}
        self.start = time.perf_counter()
        self._plain_step = max(1, int(self.total * plain_every))
        self._next_plain = self._plain_step
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.interactive = enabled and isatty and not force_plain and os.environ.get("TERM") != "dumb"
        self._progress = None
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._task = self._progress.add_task(desc, total=self.total, info="")
            self._progress.start()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def images_per_sec(self) -> float:
        return self.count * self.batch_size / max(self.elapsed, 1e-9)

    def _info(self) -> str:
        parts = [f"{k} {_fmt(v)}" for k, v in self.metrics.items()]
        parts.append(f"{self.images_per_sec:.1f} img/s")
        return "  ".join(parts)

    def update(self, n: int = 1, **metrics: Any) -> None:
        """Advance by ``n`` steps and show ``metrics`` (floats are formatted compactly)."""
        self.count += n
        self.metrics.update(metrics)
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, advance=n, info=self._info())
        elif self.count >= self._next_plain or self.count >= self.total:
            while self._next_plain <= self.count:
                self._next_plain += self._plain_step
            eta = self.elapsed / self.count * (self.total - self.count)
            print(f"{self.desc} [{self.count}/{self.total}] {self._info()}  eta {format_eta(eta)}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsLogger:
    """Append one JSON object per call to ``run_dir/metrics.jsonl`` (and TensorBoard when installed).

    Args:
        run_dir: the run folder.
        enabled: ``False`` on non-zero ranks.
        tensorboard: write TensorBoard events under ``run_dir/tb`` if the package is importable.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional dependency
                log.warning("tensorboard logging is on but the tensorboard package is not installed: "
                            "pip install 'splitattn[tensorboard]', or set tensorboard=false; "
                            "metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tb"))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        """Append ``record`` (numbers/strings); numeric values also go to TensorBoard at ``step``."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
        if self._tb is not None:
            s = step if step is not None else int(record.get("step", record.get("epoch", 0)))
            for k, v in record.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self._tb.add_scalar(k, v, s)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


__all__ = ["EpochProgress", "MetricsLogger", "format_eta"]
