"""SIGKILL a training process after its first checkpoint, resume with --resume auto: same final weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from conftest import TINY_TRAIN_ARGS
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.engine import load_checkpoint


def _cmd(data, out, *extra):
    # The full recipe (augmentation, mixup, DropBlock ramp, label smoothing, EMA) so every RNG stream and
    # every piece of state has to be restored for the weights to match.
    return [
        sys.executable,
        "-m",
        "splitattn",
        "train",
        "--data",
        str(data),
        "--output",
        str(out),
        *TINY_TRAIN_ARGS,
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--lr",
        "0.02",
        "--seed",
        "3",
        "--checkpoint-interval",
        "2",
        "--ema",
        "--set",
        "warmup_epochs=1",
        "auto_augment=imagenet",
        "mixup_alpha=0.2",
        "drop_block_rate=0.1",
        "ema_decay=0.9",
        *extra,
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_kill_and_resume_gives_identical_weights(tmp_path):
    data = make_synthetic_imagefolder(tmp_path / "data", num_classes=2, train_per_class=6, val_per_class=2)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(data, full), env=_env(), check=True, capture_output=True, timeout=300)

    # Kill as soon as the first checkpoint (step 2 of 9) appears.
    proc = subprocess.Popen(_cmd(data, killed), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = killed / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = load_checkpoint(ckpt)
    assert first["step"] < 9, "the kill came too late to test resuming"

    res = subprocess.run(
        _cmd(data, killed, "--resume", "auto"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    a, b = load_checkpoint(full / "last.ckpt"), load_checkpoint(killed / "last.ckpt")
    assert a["step"] == b["step"] == 9
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    print(f"killed at step {first['step']} of 9, resumed: max |weight diff| = {worst:.3g}")
    for key in ("model", "model_ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    buf_a = a["optimizer"]["state"][0]["momentum_buffer"]
    torch.testing.assert_close(b["optimizer"]["state"][0]["momentum_buffer"], buf_a, rtol=0, atol=1e-6)
