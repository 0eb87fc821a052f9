"""`splitattn info` reads the registry and measures the models."""

from __future__ import annotations

import json

import pytest

from splitattn.cli import main


def test_info_json_measures_models(capsys) -> None:
    assert main(["info", "resnest50*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows][:2] == ["resnest50", "resnest50_fast_1s1x64d"]
    r50 = rows[0]
    assert r50["params"] == 27_483_240 and abs(r50["gmacs"] / 5.40 - 1) < 0.015
    assert r50["crop"] == 224 and r50["crop_pct"] == 0.875 and r50["paper_top1"] == 81.03
    assert r50["weights"] == "resnest50-528c19ca.pth" and r50["aliases"] == ["resnest50d"]


def test_info_table_and_unknown_pattern(capsys) -> None:
    assert main(["info", "resnest14d"]) == 0
    out = capsys.readouterr().out
    assert "resnest14d" in out and "10,611,688" in out and "GMACs" in out
    assert main(["info", "nothing*"]) == 2
    assert "no model matches" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_packaged_demo_recipe_loads() -> None:
    from splitattn.engine import load_config
    from splitattn.engine.demo import demo_config_path

    cfg = load_config(None, demo_config_path())
    assert (cfg.model, cfg.img_size, cfg.epochs, cfg.model_kwargs) == (
        "resnest14d", 32, 8, {"stem_width": 8, "base_width": 8})


def test_zoo_rows_without_measuring() -> None:
    from splitattn.cli.info import zoo_rows
    from splitattn.errors import InputError

    (row,) = zoo_rows("resnest14d", measure=False)
    assert row["model"] == "resnest14d" and "params" not in row and row["crop"] == 224
    with pytest.raises(InputError, match="no model matches 'nothing\\*'"):
        zoo_rows("nothing*")
