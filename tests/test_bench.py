"""Smoke test of the benchmark harness at a tiny size (no timing asserts)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch

from splitattn.benchmark import (
    BenchConfig,
    cpu_description,
    expand_specs,
    parse_spec,
    run_benchmark,
    saved_activation_mb,
)
from splitattn.cli import main
from splitattn.cli.bench import add_arguments, config_from_args
from splitattn.errors import InputError


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
    from splitattn import cpu_features

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
    rc = main(["bench", "-q", "--device", "cpu", "--models", "splitattn:resnest14d", "--mode", "infer",
               "-b", "1", "--img-size", "32", "--rounds", "1", "--steps", "1", "--warmup", "0", "--onnx",
               "--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in rows] == ["splitattn:resnest14d", "onnx:resnest14d"]
    with open(tmp_path / "r.csv") as f:
        header = next(csv.reader(f))
    for col in ("model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "param_count"):
        assert col in header


def test_per_row_layouts_in_one_run() -> None:
    """``@cl`` / ``@nchw`` put each model in its own layout within one run, paired against the reference."""
    cfg = _cfg(models=["splitattn:resnest14d@cl", "timm:resnest14d@nchw"], ref_resnest="timm:resnest14d@nchw",
               ref_resnet="timm:resnest14d@nchw", mode="infer", optimized=True)
    rows = {r["model"]: r for r in run_benchmark(cfg, log=lambda _: None)}
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
