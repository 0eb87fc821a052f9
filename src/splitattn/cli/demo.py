"""``splitattn demo``: train a small ResNeSt on real handwritten digits with the paper's recipe (CPU)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..engine.config import parse_override
    from ..engine.demo import run_demo
    from ._console import make_console

    overrides = dict(parse_override(text) for text in args.overrides)
    if args.epochs:
        overrides["epochs"] = args.epochs
    return 0 if run_demo(args.out, overrides, args.config, make_console()) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small ResNeSt on real digits with the paper's recipe (CPU)")
    p.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--epochs", type=int, help="override the demo recipe's epochs")
    p.add_argument("--config", help="another recipe (default: the packaged demo_digits.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any other config key")
    p.set_defaults(func=run)
