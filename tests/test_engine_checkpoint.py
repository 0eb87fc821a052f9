"""Atomic checkpoints, corrupt-file errors, newest valid checkpoint, plain progress lines, metrics log."""

from __future__ import annotations

import io
import os
import time

import pytest
import torch

from splitattn.engine import EpochProgress, MetricsLogger, read_metrics
from splitattn.engine.rng import get_rng_state, set_rng_state
from splitattn.errors import CheckpointError
from splitattn.utils.amp import autocast, make_grad_scaler
from splitattn.utils.train_checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint


def test_save_load_roundtrip_with_rng_state(tmp_path):
    state = {"w": torch.randn(3), "epoch": 2, "names": ["a", "b"], "rng": get_rng_state()}
    path = save_checkpoint(tmp_path / "sub" / "last.ckpt", state)
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    back = load_checkpoint(path)
    torch.testing.assert_close(back["w"], state["w"])
    assert back["names"] == ["a", "b"]
    set_rng_state(back["rng"])
    x = torch.rand(4)
    set_rng_state(back["rng"])
    torch.testing.assert_close(torch.rand(4), x)


class Evil:
    """Any class: loading it would need pickled code."""


def test_truncated_and_missing_and_pickled(tmp_path):
    good = save_checkpoint(tmp_path / "last.ckpt", {"w": torch.ones(100)})
    bad = tmp_path / "epoch3.ckpt"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="epoch3.ckpt.*truncated or corrupt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")

    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="pickled code"):
        load_checkpoint(tmp_path / "evil.ckpt")


def test_find_latest_skips_corrupt_and_prefers_last(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "best.ckpt", {"step": 1})
    save_checkpoint(tmp_path / "last.ckpt", {"step": 2})
    os.utime(tmp_path / "best.ckpt", (time.time() + 10, time.time() + 10))
    assert find_latest_checkpoint(tmp_path).name == "last.ckpt"
    (tmp_path / "newer.ckpt").write_bytes(b"garbage")
    os.utime(tmp_path / "newer.ckpt", (time.time() + 20, time.time() + 20))
    assert find_latest_checkpoint(tmp_path).name == "last.ckpt"


def test_progress_prints_plain_lines_when_not_a_tty_and_nothing_when_disabled():
    buf = io.StringIO()
    with EpochProgress(8, "epoch 1/3", batch_size=4, stream=buf) as bar:
        for _ in range(8):
            bar.update(1, loss=0.5, lr=0.1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith("epoch 1/3 [") for line in lines)
    assert "\r" not in buf.getvalue() and "\x1b[" not in buf.getvalue()
    assert "loss 0.5000" in lines[-1] and "img/s" in lines[-1] and "eta" in lines[-1]
    quiet = io.StringIO()
    with EpochProgress(8, "x", enabled=False, stream=quiet) as bar:
        bar.update(8, loss=1.0)
    assert quiet.getvalue() == ""


def test_metrics_logger_appends_jsonl(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log({"epoch": 1, "train_loss": 2.0})
    log.log({"epoch": 2, "train_loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "trunc')  # a kill in the middle of a line is ignored
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    MetricsLogger(tmp_path / "other", enabled=False).log({"epoch": 1})
    assert not (tmp_path / "other").exists()


def test_amp_modes():
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "off"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16 needs a GPU"), autocast(cpu, "fp16"):
        pass
    assert not make_grad_scaler(cpu, "bf16").is_enabled()
    with pytest.raises(ValueError, match="amp must be"):
        make_grad_scaler(cpu, "fp8")


def test_shipped_recipes_resolve():
    from pathlib import Path

    from splitattn.engine import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    crops = {"resnest50": 224, "resnest101": 256, "resnest200": 320, "resnest269": 416}
    for name, crop in crops.items():
        cfg = load_config(None, root / f"{name}.yaml")
        assert (cfg.model, cfg.img_size, cfg.epochs, cfg.mixup_alpha) == (name, crop, 270, 0.2)
        assert cfg.drop_rate == (0.2 if name in ("resnest200", "resnest269") else 0.0)
    fast = load_config(None, root / "resnest50_fast_2s2x40d.yaml")
    assert fast.model == "resnest50_fast_2s2x40d" and fast.label_smoothing == 0.1
