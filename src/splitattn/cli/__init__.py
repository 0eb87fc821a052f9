"""``splitattn`` command line: each sub-command lives in its own module with a ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command modules, in the order `splitattn --help` lists them.
COMMAND_MODULES = [
    "info",
    "demo",
    "train",
    "eval",
    "predict",
    "plot",
    "export_weights",
    "tasks",
    "bench",
    "export",
]


def make_console():
    """A rich Console; wide when output is not a terminal so tables are not cut to 80 columns."""
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="splitattn", description="ResNeSt (Split-Attention Networks): models, training, benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"splitattn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # User errors (bad file, bad shape, bad key) get one clear line, not a traceback.
        print(f"splitattn {args.command}: error: {e}", file=sys.stderr)
        return 2
