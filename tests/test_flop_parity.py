"""``benchmarks/flop_parity.py``: the verdict against the bar, from paired rounds, and the one-command report
(tiny models, no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import write_roofs_file
from flop_parity import Bar, highest_roofs, main, row_spec, verdict
from harness import row_label
from splitattn.deploy.cpu_features import cpu_description

VNNI_BF16 = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")


def _row(spec: str, round_ms: list[float], gmacs: float, roof: float | None, batch: int = 8,
         ) -> dict[str, Any]:
    """A bench row as :func:`harness.run_benchmark` writes it, with the fields the verdict reads."""
    return dict(model=row_label(spec), infer_batch_size=batch, infer_round_ms=round_ms, gmacs=gmacs,
                infer_samples_per_sec=round(batch / (sorted(round_ms)[len(round_ms) // 2] / 1e3), 2),
                infer_gmac_per_s=1.0, roof_format="int8" if "int8" in spec else "bf16",
                infer_roof_fraction=roof)


def _pair(program: str, ours: list[float], ref: list[float], roof: float | None) -> list[dict[str, Any]]:
    return [_row(row_spec("splitattn:resnest50", program), ours, 5.37, roof),
            _row(row_spec("tv:resnet50", program), ref, 4.09, 0.95)]


def test_verdict_pairs_rounds_and_never_passes_a_cpu_without_the_instructions() -> None:
    # Per-round ratios (ref / ours) 0.9, 0.5, 0.8: their median is 0.8, while the ratio of the two median
    # times (100 / 200) would be 0.5: the verdict pairs round by round.
    ours, ref = [100.0, 200.0, 300.0], [90.0, 100.0, 240.0]
    rows = _pair("int8", ours, ref, roof=0.93)
    v = verdict(rows, "int8", "splitattn:resnest50", "tv:resnet50", VNNI_BF16, Bar())
    assert (v["ratio"], v["mac_ratio"], v["verdict"], v["why"]) == (0.8, 0.762, "met", "")
    assert v["model"] == "splitattn:resnest50@cl (INT8)" and v["reference"] == "tv:resnet50@cl (INT8)"
    assert v["ratio_ok"] and v["roof_ok"] and v["reference_roof_fraction"] == 0.95

    # The same figures on a CPU without VNNI or AMX: the bar cannot be decided there.
    v = verdict(rows, "int8", "splitattn:resnest50", "tv:resnet50", ("avx2",), Bar())
    assert v["verdict"] == "not decidable here"
    assert v["why"] == "the bar is set for a CPU with avx512_vnni or avx_vnni or amx_int8"

    # Each part of the bar, and both, named when short.
    v = verdict(_pair("int8", [140.0] * 3, [100.0] * 3, 0.93), "int8", "splitattn:resnest50",
                "tv:resnet50", VNNI_BF16, Bar())
    assert (v["verdict"], v["why"]) == ("not met", "ratio 0.714 < 0.76")
    v = verdict(_pair("int8", ours, ref, 0.85), "int8", "splitattn:resnest50", "tv:resnet50", VNNI_BF16,
                Bar(min_ratio=0.9))
    assert (v["verdict"], v["why"]) == ("not met", "ratio 0.800 < 0.9; roof fraction 0.850 < 0.9")
    v = verdict(_pair("int8", ours, ref, 0.85), "int8", "splitattn:resnest50", "tv:resnet50", ("avx2",),
                Bar())
    assert v["why"].endswith("; here roof fraction 0.850 < 0.9")

    # bf16 with its instructions but no measured roof (emulated): not met, and says why.
    v = verdict(_pair("bf16", ours, ref, None), "bf16", "splitattn:resnest50", "tv:resnet50",
                ("avx512_bf16",), Bar())
    assert v["model"] == "splitattn:resnest50@cl (bf16, compiled)"
    assert (v["verdict"], v["why"]) == ("not met", "no measured bf16 roof")


def test_the_higher_of_two_roof_measurements_counts() -> None:
    def measured(fp32: float, int8: float | None) -> dict[str, Any]:
        return {"roofs": {"fp32": {"status": "measured", "gmac_per_s": fp32},
                          "bf16": {"status": "emulated", "gmac_per_s": None, "reason": "reference loop"},
                          "int8": {"status": "measured", "gmac_per_s": int8} if int8 else
                          {"status": "emulated", "gmac_per_s": None, "reason": "x"}}}

    assert highest_roofs([measured(80.0, 160.0), measured(90.0, 150.0)]) == {
        "fp32": 90.0, "bf16": None, "int8": 160.0}
    assert highest_roofs([measured(80.0, None), measured(70.0, 150.0)])["int8"] == 150.0


def test_one_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fp32 (decidable on any CPU) on small stand-ins, two batch sizes, with the scale rows."""
    rc = main(["--programs", "fp32", "--model", "splitattn:resnest14d", "--reference", "tv:resnet18",
               "--timm", "timm:resnest14d", "--fp32-rows", "--batch-sizes", "2", "1", "--img-size", "32",
               "--rounds", "2", "--steps", "1", "--warmup", "0", "--min-ratio", "0", "--min-roof", "0",
               "--roofs", str(write_roofs_file(tmp_path / "peak.json")), "--out", str(tmp_path / "fp")])
    assert rc == 0
    report = json.loads((tmp_path / "fp.json").read_text())
    assert report["cpu"] == cpu_description()
    assert report["roofs"] == {"fp32": 40.0, "bf16": None, "int8": 80.0}
    assert [(v["program"], v["batch"], v["verdict"]) for v in report["verdicts"]] == [
        ("fp32", 2, "met"), ("fp32", 1, "met")]
    for batch in ("2", "1"):
        rows = {r["model"]: r for r in report["rows"][batch]}
        assert list(rows) == ["splitattn:resnest14d@cl", "tv:resnet18@cl", "timm:resnest14d@cl",
                              "splitattn:resnest14d@cl (optimized)"]
        for r in rows.values():
            assert len(r["infer_round_ms"]) == 2 and r["roof_format"] == "fp32"
            # The roof fraction is the row's GMAC/s over the file's fp32 roof (40 GMAC/s).
            assert r["infer_roof_fraction"] == pytest.approx(r["infer_gmac_per_s"] / 40.0, abs=0.0011)
        assert rows["timm:resnest14d@cl"]["infer_vs_timm_resnest50d"] == 1.0
        v = next(v for v in report["verdicts"] if v["batch"] == int(batch))
        assert v["gmac_per_s"] == rows["splitattn:resnest14d@cl"]["infer_gmac_per_s"]
    md = (tmp_path / "fp.md").read_text()
    assert md in capsys.readouterr().out
    assert "| program | batch | resnest14d img/s | resnet18 img/s | ratio (paired) |" in md
    assert "roofs, GMAC/s: fp32 40.0, bf16 not measured (emulated), int8 80.0" in md
    assert md.count("| fp32 | ") == 2 and md.count(" | met |") == 2
