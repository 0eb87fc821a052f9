"""2 CPU processes (torchrun, gloo) train to the same weights as 1 process with the same global batch
(``--batch-size``, split over the processes)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from conftest import TINY_TRAIN_ARGS
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.utils.train_checkpoint import load_checkpoint


def _args(data, out, batch):
    # GroupNorm: BatchNorm statistics per process would differ from those of the whole batch by design.
    # Augmentation stays on: it is seeded per (seed, epoch, sample), so both layouts see the same images.
    # Mixup and DropBlock draw from per-process RNG streams, so they are off here.
    return [
        "train",
        "--data",
        str(data),
        "--output",
        str(out),
        *TINY_TRAIN_ARGS,
        "--batch-size",
        str(batch),
        "--epochs",
        "2",
        "--lr",
        "0.02",
        "--seed",
        "5",
        "--set",
        "norm_layer=groupnorm",
        "mixup_alpha=0",
        "drop_block_rate=0",
        "warmup_epochs=1",
        "auto_augment=imagenet",
    ]


def test_two_gloo_processes_match_one_process(tmp_path):
    data = make_synthetic_imagefolder(tmp_path / "data", num_classes=2, train_per_class=8, val_per_class=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "splitattn", *_args(data, tmp_path / "one", 8)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "splitattn",
            *_args(data, tmp_path / "two", 8),  # batch_size is global: 4 per process
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stdout and "global batch 8" in ddp.stdout
    a, b = load_checkpoint(tmp_path / "one" / "last.ckpt"), load_checkpoint(tmp_path / "two" / "last.ckpt")
    assert a["step"] == b["step"] == 4 and b["world_size"] == 2 and len(b["rng"]) == 2
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    print(f"DDP (2 x 4) vs single (8): max |weight diff| = {worst:.3g} after 4 steps")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"{k} (worst diff {worst:g})")
    # and they really trained: non-zero momentum, the same in both layouts
    buf_a, buf_b = (
        a["optimizer"]["state"][0]["momentum_buffer"],
        b["optimizer"]["state"][0]["momentum_buffer"],
    )
    assert buf_a.abs().sum() > 0
    torch.testing.assert_close(buf_b, buf_a, rtol=1e-4, atol=1e-5)
