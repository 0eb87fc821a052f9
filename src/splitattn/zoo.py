"""The model zoo as data (``splitattn info``): each registered model's config, measured live."""

from __future__ import annotations

from typing import Any

from .errors import InputError
from .factory import create_model
from .flops import count_macs, count_params
from .models import get_model_cfg, list_models


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


__all__ = ["zoo_rows"]
