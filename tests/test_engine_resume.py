"""SIGKILL a training process after its first checkpoint, resume with --resume auto: the final weights equal
those of an uninterrupted run to the bit, for classification, detection and segmentation alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_ARGS
from splitattn.data.synthetic import make_shapes_ade, make_shapes_coco, make_synthetic_imagefolder
from splitattn.utils.train_checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _classification(tmp: Path, out: Path) -> list[str]:
    data = make_synthetic_imagefolder(tmp / "data", num_classes=2, train_per_class=6, val_per_class=2)
    # The full recipe (augmentation, mixup, DropBlock ramp, label smoothing, EMA) so every RNG stream and
    # every piece of state has to be restored for the weights to match.
    return ["train", "--data", str(data), "--output", str(out), *TINY_TRAIN_ARGS, "--batch-size", "4",
            "--epochs", "3", "--lr", "0.02", "--seed", "3", "--checkpoint-interval", "2", "--ema",
            "--set", "warmup_epochs=1", "auto_augment=imagenet", "mixup_alpha=0.2", "drop_block_rate=0.1",
            "ema_decay=0.9"]


def _detection(tmp: Path, out: Path) -> list[str]:
    root = tmp / "coco"
    make_shapes_coco(root, "train", num_images=6, size=64, seed=0)
    make_shapes_coco(root, "val", num_images=2, size=64, seed=1)
    return ["detect", "train", "-o", str(out), "--batch-size", "2", "--max-iter", "6",
            "model=faster_rcnn_fpn", "backbone=resnest14d", "backbone_norm=groupnorm", "freeze_at=0",
            "fpn_channels=32", "representation_size=64", "min_size=[56, 64]", "max_size=96", "workers=0",
            "lr=0.005", "hflip=0.5", "seed=5", "warmup_iters=2", "checkpoint_interval=2", "log_period=1",
            "model_kwargs={rpn_post_nms_top_n_train: 50, rpn_post_nms_top_n_test: 20, "
            "box_batch_size_per_image: 16}", "backbone_kwargs={stem_width: 8, base_width: 8}",
            f"train_images={root}/train2017", f"train_ann={root}/annotations/instances_train2017.json",
            f"val_images={root}/val2017", f"val_ann={root}/annotations/instances_val2017.json",
            "pretrained_backbone=null"]


def _segmentation(tmp: Path, out: Path) -> list[str]:
    root = tmp / "ade"
    make_shapes_ade(root, "training", num_images=6, size=48)
    make_shapes_ade(root, "validation", num_images=1, size=48)
    return ["segment", "train", "-o", str(out), "--batch-size", "2", "--max-iter", "6", "backbone=resnest14d",
            f"data_root={root}", "num_classes=4", "crop_size=40", "base_size=48", "workers=0", "seed=7",
            "scale_range=[0.75, 1.25]", "pretrained_backbone=null", "checkpoint_interval=2", "log_period=1",
            "backbone_kwargs={stem_width: 8, base_width: 8}", "lr=0.01"]


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitattn", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.parametrize("task", [_classification, _detection, _segmentation],
                         ids=["classification", "detection", "segmentation"])
def test_kill_and_resume_gives_identical_weights(task, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    res = subprocess.run([sys.executable, "-m", "splitattn", *task(tmp_path, full)], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    proc = _run(task(tmp_path, killed))
    ckpt = killed / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = load_checkpoint(ckpt)
    a = load_checkpoint(full / "last.ckpt")
    assert first["step"] < a["step"], "the kill came too late to test resuming"

    args = task(tmp_path, killed)
    k = 1 if args[0] == "train" else 2  # after the (sub-)command
    res = subprocess.run([sys.executable, "-m", "splitattn", *args[:k], "--resume", "auto", *args[k:]],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    b = load_checkpoint(killed / "last.ckpt")
    assert a["step"] == b["step"] and b["step"] > first["step"]
    worst = 0.0
    for key in ("model", "model_ema"):
        if a[key] is None:
            continue
        assert a[key].keys() == b[key].keys()
        for name, t in a[key].items():
            worst = max(worst, (t.double() - b[key][name].double()).abs().max().item() if t.numel() else 0.0)
    print(f"{task.__name__[1:]}: killed at step {first['step']} of {a['step']}, resumed: "
          f"max |weight diff| = {worst:.3g}")
    assert worst == 0.0
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, st in a["optimizer"]["state"].items():
        assert st["momentum_buffer"].equal(b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == a["step"]
