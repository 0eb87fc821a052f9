"""``splitattn plot RUN_DIR``: loss, top-1 and learning rate per epoch as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def plot_run(run_dir: str, out: str | None = None) -> Path:
    """Draw ``run_dir/metrics.jsonl`` into ``out`` (default ``run_dir/curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.progress import read_metrics

    recs = [r for r in read_metrics(run_dir) if "train_loss" in r]
    if not recs:
        raise ValueError(f"{run_dir}/metrics.jsonl has no finished epoch yet; plot after the first epoch")
    ep = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(ep, [r["train_loss"] for r in recs], "o-", label="train (mixup, smoothed)")
    val = [(r["epoch"], r["val_loss"]) for r in recs if "val_loss" in r]
    if val:
        axes[0].plot(*zip(*val), "s-", label="val")
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].legend()
    top1 = [(r["epoch"], r["val_top1"]) for r in recs if "val_top1" in r]
    if top1:
        axes[1].plot(*zip(*top1), "o-", label="val top-1")
    ema = [(r["epoch"], r["val_ema_top1"]) for r in recs if "val_ema_top1" in r]
    if ema:
        axes[1].plot(*zip(*ema), "s-", label="val top-1 (EMA)")
    axes[1].set(title="top-1 accuracy (%)", xlabel="epoch")
    if top1 or ema:
        axes[1].legend()
    axes[2].plot(ep, [r["lr"] for r in recs], "o-")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    path = plot_run(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="PNG of loss, top-1 and LR per epoch of a training run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=run)
