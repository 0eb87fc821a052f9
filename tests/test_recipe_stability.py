"""The small-data detection and segmentation recipes warm up and clip gradients (torchvision's detection
reference: linear warmup from ``warmup_factor``); the paper recipes do not clip. The 5-seed stability runs
themselves are ``benchmarks/recipe_seeds.py`` (minutes), not a test."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splitattn.data.synthetic import make_digits_ade, make_digits_coco, make_synthetic_imagefolder
from splitattn.engine import Trainer, load_config
from splitattn.engine.schedule import create_lr_scheduler, create_optimizer
from splitattn.engine.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"detection": ROOT / "configs/detection/shapes_faster_rcnn_resnest14d.yaml",
         "segmentation": ROOT / "configs/segmentation/shapes_deeplabv3_resnest14d.yaml"}


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_small_recipes_start_at_the_warmup_factor_and_clip(task):
    cfg = load_config(task, SMALL[task])
    assert cfg.grad_clip is not None and cfg.grad_clip > 0, f"{SMALL[task].name} has no grad_clip"
    assert cfg.warmup_iters > 0 and 0 < cfg.warmup_factor < 1
    schedule = create_task(cfg).schedule(1, cfg.lr)
    assert schedule(0) == pytest.approx(cfg.warmup_factor)
    after = dataclasses.replace(schedule, warmup_steps=0)  # the same schedule without the warmup
    assert schedule(cfg.warmup_iters) == pytest.approx(after(cfg.warmup_iters))
    assert schedule(cfg.warmup_iters // 2) < after(cfg.warmup_iters // 2)
    # LambdaLR applies it before the first optimizer step: iteration 0 runs at lr x warmup_factor.
    opt = create_optimizer(torch.nn.Linear(2, 2), float(cfg.lr))
    create_lr_scheduler(opt, schedule)
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.warmup_factor)


@pytest.mark.parametrize("task, recipe", [
    ("classification", "configs/resnest50.yaml"),
    ("detection", "configs/detection/faster_rcnn_fpn_resnest50.yaml"),
    ("segmentation", "configs/segmentation/deeplabv3_resnest50_ade20k.yaml"),
])
def test_paper_recipes_do_not_clip(task, recipe):
    assert load_config(task, ROOT / recipe).grad_clip is None


def _norms_at_step(tmp: Path, grad_clip: float | None, loss_scale: float | None = None) -> list[float]:
    """Train 1 tiny step; the total gradient norm the optimizer saw at each step. ``loss_scale``: train
    through an enabled grad scaler (as fp16 on a GPU does) with this initial scale."""
    data = make_synthetic_imagefolder(tmp / "data", num_classes=2, train_per_class=2, val_per_class=1)
    cfg = load_config("classification", None, {
        "data": str(data), "output": str(tmp / f"run{grad_clip}"), "model": "resnest14d", "img_size": 32,
        "model_kwargs": {"stem_width": 8, "base_width": 8}, "batch_size": 4, "epochs": 1,
        "workers": 0, "device": "cpu", "amp": "off", "auto_augment": None, "mixup_alpha": 0.0,
        "tensorboard": False, "progress_bar": False, "lr": 0.1, "grad_clip": grad_clip, "seed": 1})
    trainer = Trainer(cfg)
    if loss_scale:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale, enabled=True)
    seen: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        seen.append(float(torch.nn.utils.get_total_norm(grads)))

    trainer.optimizer.register_step_pre_hook(record)
    trainer.fit()
    return seen


def test_grad_clip_bounds_the_norm_the_optimizer_sees(tmp_path):
    free = _norms_at_step(tmp_path, None)
    # Through a loss scale of 2**10: clipping after unscale_ gives the optimizer a norm of grad_clip, not
    # grad_clip / 2**10 (clipped while scaled) nor the scaled gradient.
    clipped = _norms_at_step(tmp_path, 1e-3, loss_scale=2.0**10)
    assert len(free) == len(clipped) == 1
    assert min(free) > 1e-2, f"unclipped gradient norms {free} too small for the check to mean anything"
    assert all(math.isfinite(n) for n in clipped)
    assert clipped == pytest.approx([1e-3], rel=1e-3), f"norms after clipping at 1e-3: {clipped}"


def test_digits_on_canvases_in_coco_and_ade_layouts(tmp_path):
    ann = json.loads(make_digits_coco(tmp_path / "coco", "train", num_images=4, size=64, seed=3).read_text())
    assert [c["name"] for c in ann["categories"]] == [str(d) for d in range(10)]
    assert len(ann["images"]) == 4 and len(ann["annotations"]) >= 4
    sizes = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
    for a in ann["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert 1 <= a["category_id"] <= 10 and w > 0 and h > 0 and x + w <= width and y + h <= height, a
        assert a["segmentation"]["size"] == [height, width] and a["area"] > 0
    root = make_digits_ade(tmp_path / "ade", "training", num_images=2, size=48, seed=3)
    labels = [np.asarray(Image.open(p)) for p in sorted((root / "annotations" / "training").glob("*.png"))]
    assert len(labels) == 2 and all(lab.shape == (48, 48) for lab in labels)
    values = np.unique(np.concatenate([lab.ravel() for lab in labels]))
    assert values[0] == 1 and values.max() <= 11 and len(values) >= 2, values
