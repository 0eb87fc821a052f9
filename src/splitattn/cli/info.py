"""``splitattn info [PATTERN]``: the model zoo, measured live from the models."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InputError
from ..models import create_model, get_model_cfg, list_models
from ..utils.flops import count_macs, count_params
from ._console import make_console


def zoo_rows(pattern: str = "*", measure: bool = True) -> list[dict[str, Any]]:
    """One dict per model matching ``pattern`` (shell-style, e.g. ``"resnest50*"``).

    Args:
        pattern: which models.
        measure: build each model (random init) and count its parameters and GMACs (batch 1, at its
            ``input_size``; a multiply-add counts once) into ``params`` / ``gmacs``.

    Returns:
        ``[{"model", "aliases", "crop", "crop_pct", "interpolation", "paper_top1", "weights", "url",
        "params_table", "gmacs_table"[, "params", "gmacs"]}]``; the ``*_table`` figures are the config's.
    """
    names = list_models(pattern)
    if not names:
        raise InputError(f"no model matches {pattern!r}; `splitattn info` lists them all")
    rows = []
    for name in names:
        cfg = get_model_cfg(name)
        row: dict[str, Any] = dict(
            model=name, aliases=list(cfg.aliases), crop=cfg.crop_size, crop_pct=cfg.crop_pct,
            interpolation=cfg.interpolation, paper_top1=cfg.top1, weights=cfg.file_name, url=cfg.url,
            params_table=cfg.params, gmacs_table=cfg.gmacs,
        )
        if measure:
            model = create_model(name)
            row["params"] = count_params(model)
            row["gmacs"] = round(count_macs(model, cfg.input_size) / 1e9, 3)
        rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]], console: Any = None) -> None:
    """Print :func:`zoo_rows` as a rich table (measured figures where present)."""
    from rich.table import Table

    console = console or make_console()
    table = Table(title="splitattn model zoo (params and GMACs measured now, batch 1; multiply-add = 1)")
    for col, just in [("model", "left"), ("timm name", "left"), ("params", "right"), ("GMACs", "right"),
                      ("crop", "right"), ("ratio", "right"), ("paper top-1", "right"), ("weights", "left")]:
        table.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        table.add_row(
            r["model"], ", ".join(r["aliases"]) or "-", f"{r.get('params', r['params_table']):,}",
            f"{r.get('gmacs', r['gmacs_table']):.2f}", str(r["crop"]), f"{r['crop_pct']:.3f}",
            f"{r['paper_top1']:.2f}" if r["paper_top1"] else "-", r["weights"] or "-",
        )
    console.print(table)


def run(args: argparse.Namespace) -> int:
    rows = zoo_rows(args.pattern, measure=not args.no_measure)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_table(rows)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list models: params, GMACs, crop, paper top-1, weight file")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnest50*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-measure", action="store_true", help="print the config's figures, build no model")
    p.set_defaults(func=run)
