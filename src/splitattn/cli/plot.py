"""``splitattn plot RUN_DIR``: loss, top-1 and learning rate per epoch as a PNG."""

from __future__ import annotations

import argparse

from ..engine.plot import plot_run


def run(args: argparse.Namespace) -> int:
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="PNG of loss, top-1 and LR per epoch of a training run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=run)
