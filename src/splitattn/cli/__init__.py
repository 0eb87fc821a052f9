"""``splitattn`` command line: each sub-command lives in its own module with a ``register(subparsers)``.

The commands only parse arguments and call library (or engine) functions. Errors of the project
(:class:`splitattn.errors.SplitAttnError`: bad file, key, shape, config value) are printed as one line
and exit with 2; anything else is a bug and keeps its traceback (exit 1); ``-v`` shows the traceback of
every error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from ._console import make_console  # noqa: F401  (splitattn.cli.make_console, for scripts)

# Sub-command modules, in the order `splitattn --help` lists them.
COMMAND_MODULES = [
    "info",
    "demo",
    "train",
    "eval",
    "predict",
    "plot",
    "explain",
    "export_weights",
    "detect_segment",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="splitattn",
        description="ResNeSt (Split-Attention Networks): models, training, evaluation, export, explanations.",
    )
    parser.add_argument("--version", action="version", version=f"splitattn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import Interrupted, SplitAttnError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SplitAttnError as e:
        if args.verbose:
            traceback.print_exc()
        kind = "stopped" if isinstance(e, Interrupted) else "error"
        print(f"splitattn {args.command}: {kind}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
