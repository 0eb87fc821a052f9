"""Smoke test of the benchmark harness at a tiny size (no timing asserts)."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench import add_arguments, config_from_args
from bench import main as bench_main
from conftest import write_roofs_file
from harness import (
    BenchConfig,
    build_model,
    cpu_description,
    expand_specs,
    parse_spec,
    run_benchmark,
    saved_activation_mb,
)
from roofs import load_roofs, roof_columns, row_format
from splitattn.errors import DataError, InputError, MissingFileError
from splitattn.utils.flops import count_macs


def _cfg(**kw: object) -> BenchConfig:
    """A tiny CPU run: batch 2, 32 px, one warm-up step, one step per round."""
    base: dict[str, object] = dict(device="cpu", batch_size=2, img_size=32, rounds=2, steps=1, warmup=1)
    return BenchConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_rows_ratios_and_timm_columns() -> None:
    # Small stand-ins for the reference rows keep the test cheap; the harness is the same.
    cfg = _cfg(models=["splitattn:resnest14d", "timm:resnest14d", "tv:resnet18"],
               ref_resnest="timm:resnest14d", ref_resnet="tv:resnet18", optimized=True)
    rows = run_benchmark(cfg, log=lambda _: None)
    by = {r["model"]: r for r in rows}
    assert set(by) == {"splitattn:resnest14d", "timm:resnest14d", "tv:resnet18",
                       "splitattn:resnest14d (BN folded only)", "splitattn:resnest14d (optimized)"}
    for r in rows:
        assert r["infer_samples_per_sec"] > 0 and r["infer_batch_size"] == 2 and r["infer_img_size"] == 32
        assert r["infer_step_time"] > 0 and r["param_count"] > 0
    assert by["timm:resnest14d"]["infer_vs_timm_resnest50d"] == 1.0
    assert by["tv:resnet18"]["train_vs_resnet50"] == 1.0
    assert "train_samples_per_sec" not in by["splitattn:resnest14d (optimized)"]
    saved = {k: by[k]["train_saved_activations_mb"] for k in ("splitattn:resnest14d", "timm:resnest14d")}
    assert all(v > 0 for v in saved.values())
    assert saved["splitattn:resnest14d"] <= saved["timm:resnest14d"]
    assert by["splitattn:resnest14d"]["param_count"] == 10.61
    # Every row names the CPU and the vector instructions that decide its kernels.
    assert rows[0]["cpu"] == cpu_description() and rows[0]["cpu"].endswith(")")


def test_cpu_description_reads_model_name_and_isa_flags(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from splitattn.deploy import cpu_features

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_vnni "
                    "avx512_bf16 sse4_2\n")
    real_path = cpu_features.Path
    monkeypatch.setattr(cpu_features, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert cpu_features.cpu_flags() >= {"avx2", "avx512_vnni", "avx512_bf16"}
    assert cpu_features.cpu_description() == "AMD EPYC 9B14 (avx2 avx512f avx512_vnni avx512_bf16)"
    info.unlink()
    assert cpu_features.cpu_flags() == frozenset()
    assert cpu_features.cpu_description() == "unknown CPU (flags unknown)"


def test_saved_activation_mb_counts_storage_once() -> None:
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(1024, 256)

    def step() -> torch.Tensor:
        h = x @ w  # saves x (1 MiB); w is a parameter and not counted
        return (h * h).sum()  # saves h twice, the same storage: 1 MiB

    assert abs(saved_activation_mb(step) - 2.0) < 1e-6


def test_cli_writes_csv_and_json(tmp_path: Path) -> None:
    rc = bench_main(["-q", "--device", "cpu", "--models", "splitattn:resnest14d", "--mode", "infer",
               "-b", "1", "--img-size", "32", "--rounds", "1", "--steps", "1", "--warmup", "0", "--onnx",
               "--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "r.json"), "--threads", "2",
               "--roofs", str(write_roofs_file(tmp_path / "peak.json"))])
    assert rc == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in rows] == ["splitattn:resnest14d", "onnx:resnest14d"]
    # Model MACs per image (count_macs at 32 px) x img/s, over the fp32 roof (40 GMAC/s) of the file.
    gmacs = count_macs(build_model("splitattn:resnest14d"), (3, 32, 32)) / 1e9
    for r in rows:
        assert r["gmacs"] == round(gmacs, 3) and r["roof_format"] == "fp32"
        # img/s is rounded to 0.01 in the row, GMAC/s to 0.01, the fraction to 0.001.
        rate = gmacs * r["infer_samples_per_sec"]
        assert r["infer_gmac_per_s"] == pytest.approx(rate, abs=0.005 * gmacs + 0.0051)
        assert r["infer_roof_fraction"] == pytest.approx(rate / 40.0, abs=0.0011)
    with open(tmp_path / "r.csv") as f:
        header = next(csv.reader(f))
    for col in ("model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "param_count"):
        assert col in header
    # Each round's time, for pairing any two rows later, is in the JSON only.
    assert "infer_round_ms" not in header and all(len(r["infer_round_ms"]) == 1 for r in rows)


def test_per_row_layouts_in_one_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``@cl`` / ``@nchw`` put each model in its own layout within one run, paired against the reference."""
    import harness as benchmark

    # --measure-roofs: the roofs measured in-process (here a given result) divide the rows' GMAC/s.
    fake = json.loads(write_roofs_file(tmp_path / "peak.json").read_text())
    monkeypatch.setattr(benchmark, "measure_roofs", lambda threads, log: fake)
    cfg = _cfg(models=["splitattn:resnest14d@cl", "timm:resnest14d@nchw"], ref_resnest="timm:resnest14d@nchw",
               ref_resnet="timm:resnest14d@nchw", mode="infer", optimized=True, measure_roofs=True)
    rows = {r["model"]: r for r in run_benchmark(cfg, log=lambda _: None)}
    for r in rows.values():
        assert r["infer_roof_fraction"] == pytest.approx(r["infer_gmac_per_s"] / 40.0, abs=0.0011)
        assert r["gmacs"] > 0 and r["roof_format"] == "fp32"
    assert set(rows) == {"splitattn:resnest14d@cl", "timm:resnest14d@nchw",
                         "splitattn:resnest14d@cl (BN folded only)", "splitattn:resnest14d@cl (optimized)"}
    assert rows["splitattn:resnest14d@cl (optimized)"]["channels_last"] is True
    assert rows["timm:resnest14d@nchw"]["channels_last"] is False
    assert rows["timm:resnest14d@nchw"]["infer_vs_timm_resnest50d"] == 1.0
    assert rows["splitattn:resnest14d@cl"]["infer_vs_timm_resnest50d"] > 0
    assert parse_spec("splitattn:resnest50+opt@nchw") == ("splitattn:resnest50", "opt", "nchw")
    with pytest.raises(InputError, match="bad model spec"):
        parse_spec("timm:resnest50d@nhwc")


def test_checkpointing_rows_train_only_and_save_less() -> None:
    cfg = _cfg(models=["splitattn:resnest14d", "splitattn:resnest14d+ckpt-attn", "splitattn:resnest14d+ckpt",
                       "timm:resnest14d+ckpt"], ref_resnest="timm:resnest14d+ckpt", rounds=1, warmup=0,
               optimized=True)
    out = run_benchmark(cfg, log=lambda _: None)
    rows = {r["model"]: r for r in out}
    assert len(out) == len(rows) == 6  # --optimized adds fold/opt once, for the plain row only
    plain, attn = rows["splitattn:resnest14d"], rows["splitattn:resnest14d (attention recompute)"]
    block = rows["splitattn:resnest14d (grad checkpointing)"]
    assert "infer_samples_per_sec" not in attn and attn["train_samples_per_sec"] > 0
    saved = [r["train_saved_activations_mb"] for r in (plain, attn, block)]
    assert saved[0] > saved[1] > saved[2]
    assert block["train_saved_activations_mb"] == rows["timm:resnest14d (grad checkpointing)"][
        "train_saved_activations_mb"]
    for bad in ("tv:resnet50+ckpt", "timm:resnest50d+ckpt-attn", "official:resnest50+opt"):
        with pytest.raises(InputError, match="applies to"):
            parse_spec(bad)


def test_cli_flags_fill_every_config_field() -> None:
    """Each BenchConfig field has its flag, and the parsed values land in the config unchanged."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--models", "tv:resnet18", "--mode", "train", "--device", "cpu",
                                         "-b", "3", "--amp", "bf16", "--channels-last", "--optimized",
                                         "--threads", "1", "--rounds", "4"]))
    assert cfg == BenchConfig(models=["tv:resnet18"], mode="train", device="cpu", batch_size=3, amp="bf16",
                              channels_last=True, optimized=True, threads=1, rounds=4)
    assert expand_specs(BenchConfig(models=["splitattn:resnest14d@cl", "tv:resnet18"], optimized=True,
                                    onnx=True)) == [
        "splitattn:resnest14d@cl", "tv:resnet18", "splitattn:resnest14d+fold@cl",
        "splitattn:resnest14d+opt@cl", "onnx:resnest14d"]
    with pytest.raises(InputError, match="mode must be"):
        run_benchmark(BenchConfig(models=["tv:resnet18"], mode="eval", device="cpu"))


def test_gmac_and_roof_fraction_columns_from_given_numbers(tmp_path: Path) -> None:
    roofs = load_roofs(write_roofs_file(tmp_path / "peak.json"), threads=2)
    assert roofs == {"fp32": 40.0, "bf16": None, "int8": 80.0}
    # 4 GMAC per image at 10 img/s = 40 GMAC/s: half the INT8 roof, all of fp32's, none for emulated bf16.
    assert roof_columns(10.0, 4.0, "int8", roofs) == dict(infer_gmac_per_s=40.0, roof_format="int8",
                                                        infer_roof_fraction=0.5)
    assert roof_columns(10.0, 4.0, "fp32", roofs)["infer_roof_fraction"] == 1.0
    assert roof_columns(10.0, 4.0, "bf16", roofs)["infer_roof_fraction"] is None
    assert roof_columns(2.5, 4.0, None, roofs) == dict(infer_gmac_per_s=10.0, roof_format=None,
                                                      infer_roof_fraction=None)
    assert roof_columns(2.5, 4.0, "fp32", None)["infer_roof_fraction"] is None
    assert [row_format(v, amp) for v, amp in (("int8", None), ("bf16-compile", None), ("bf16", None),
                                               ("opt", None), ("", "bf16"), ("", "fp16"), ("", None))] == [
        "int8", "bf16", "bf16", "fp32", "bf16", None, "fp32"]
    with pytest.raises(InputError, match="measured at 2 threads, the bench runs 4; re-measure"):
        load_roofs(tmp_path / "peak.json", threads=4)
    (tmp_path / "old.json").write_text('{"cpu": "AMD EPYC (avx2)", "fp32_gmac_per_s": 33.67}')
    with pytest.raises(DataError, match=r"old.json is not a cpu_peak.py result \(missing or bad 'roofs'\)"):
        load_roofs(tmp_path / "old.json")
    (tmp_path / "old.json").write_text('{"cpu": "AMD EPYC (avx2)"}\n 00:51:40 up 13:19\n')
    with pytest.raises(DataError, match=r"old.json is not JSON \(Extra data: line 2 .*\); re-measure with"):
        load_roofs(tmp_path / "old.json")
    with pytest.raises(MissingFileError, match="nope.json does not exist; write one with"):
        load_roofs(tmp_path / "nope.json")
    with pytest.raises(InputError, match="CPU GEMM roofs, but the device is 'cuda'"):
        run_benchmark(BenchConfig(models=["tv:resnet18"], device="cuda", roofs=str(tmp_path / "peak.json")))


def test_cpu_peak_emulation_decision_and_sizing(monkeypatch: pytest.MonkeyPatch) -> None:
    import roofs

    avx2, bf16_cpu = {"avx2", "fma"}, {"avx2", "avx512f", "avx512_bf16"}
    assert roofs.emulation_reason("fp32", avx2, 1.0, 1.0) is None
    assert roofs.emulation_reason("bf16", avx2, 0.66, 28.0) == (
        "probe 0.66 GMAC/s is below 1/8 of fp32's 28 (no avx512_bf16/amx_bf16 on this CPU): "
        "a reference loop, not a roof")
    assert roofs.emulation_reason("bf16", avx2, 4.0, 28.0) is None  # converted to fp32: slow but real
    assert "(despite avx512_bf16)" in roofs.emulation_reason("bf16", bf16_cpu, 5.0, 28.0)
    assert roofs.emulation_reason("bf16", bf16_cpu, 10.0, 28.0) is None
    assert roofs.emulation_reason("int8", avx2, 53.0, 28.0) is None
    assert "(no avx512_vnni/avx_vnni/amx_int8 on this CPU)" in roofs.emulation_reason("int8", avx2, 0.2, 28.0)
    # ~0.25 s calls of a multiple-of-64 side, about 2 s in all, within [128, 4096].
    assert roofs.timed_size(32.0) == (1984, 8) and roofs.timed_size(0.01) == (128, 10)
    assert roofs.timed_size(1e6) == (4096, 100)
    # measure_format: an emulated probe is never timed; a kernel that raises is unavailable, with its error.
    monkeypatch.setattr(roofs, "_probe", lambda make: (0.5, 256))
    monkeypatch.setattr(roofs, "_time", lambda make, rate: pytest.fail("emulated format timed"))
    out = roofs.measure_format("bf16", avx2, 28.0)
    assert out["status"] == "emulated" and out["gmac_per_s"] is None and "below 1/8" in out["reason"]

    def broken(n: int) -> Callable[[], torch.Tensor]:
        raise RuntimeError("no int8 kernel\nstack")

    monkeypatch.setattr(roofs, "gemm_kernels", lambda fmt: [("fake int8", broken)])
    monkeypatch.setattr(roofs, "_probe", lambda make: make(128))
    assert roofs.measure_format("int8", avx2, 28.0) == dict(
        format="int8", status="unavailable", gmac_per_s=None, reason="fake int8: no int8 kernel")
