"""Training curves of a run folder (``splitattn plot``): loss, top-1 and learning rate per epoch as a PNG.

matplotlib is optional (``pip install 'splitattn[plot]'``). The figure is drawn on a
:class:`matplotlib.figure.Figure`, not through pyplot, so plotting never switches the caller's backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError, require
from ..utils.fileio import atomic_write


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl`` (a truncated last line from a kill is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; is {run_dir} a splitattn training run folder?")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _series(recs: list[dict[str, Any]], key: str) -> tuple[list[Any], list[Any]]:
    pts = [(r["epoch"], r[key]) for r in recs if key in r]
    return [e for e, _ in pts], [v for _, v in pts]


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw the per-epoch records of ``run_dir/metrics.jsonl`` into a PNG.

    Args:
        run_dir: a ``splitattn train`` run folder.
        out: the PNG (default ``run_dir/curves.png``), written atomically.

    Returns:
        The PNG's path.

    Raises:
        MissingFileError: ``run_dir`` has no ``metrics.jsonl``.
        InputError: no epoch has finished yet.
        MissingDependencyError: matplotlib is not installed.
    """
    figure: Any = require("matplotlib.figure", "plot", "splitattn plot")
    recs = [r for r in read_metrics(run_dir) if "train_loss" in r]
    if not recs:
        raise InputError(f"{Path(run_dir) / 'metrics.jsonl'} has no finished epoch yet; plot after the "
                         "first epoch")
    fig = figure.Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot(*_series(recs, "train_loss"), "o-", label="train (mixup, smoothed)")
    val = _series(recs, "val_loss")
    if val[0]:
        axes[0].plot(*val, "s-", label="val")
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].legend()
    top1, ema = _series(recs, "val_top1"), _series(recs, "val_ema_top1")
    if top1[0]:
        axes[1].plot(*top1, "o-", label="val top-1")
    if ema[0]:
        axes[1].plot(*ema, "s-", label="val top-1 (EMA)")
    axes[1].set(title="top-1 accuracy (%)", xlabel="epoch")
    if top1[0] or ema[0]:
        axes[1].legend()
    axes[2].plot(*_series(recs, "lr"), "o-")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


__all__ = ["plot_run", "read_metrics"]
