"""Detection / segmentation run configuration: defaults, YAML with ``_base_``, ``KEY=VALUE`` overrides."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..engine.config import load_yaml_config, suggest_key

_RUNTIME: dict[str, Any] = {
    "amp": "off",  # bf16 | fp16 | off
    "device": "auto",
    "seed": 0,
    "workers": 4,
    "output": None,  # run folder (checkpoints, metrics.jsonl, config.yaml)
    "resume": None,  # auto | PATH
    "checkpoint_period": 5000,  # iterations between last.ckpt saves (and at the end)
    "eval_period": 0,  # iterations between evaluations (0: only at the end)
    "log_period": 20,
    "progress_bar": True,
    "find_unused_parameters": False,
    "grad_clip": None,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup_iters": 1000,
    "warmup_factor": 0.001,
}

# PAPER.md "Transfer": scales 640-800 (max 1333), 1x schedule (90k iterations), batch 16, LR 0.02.
DETECTION_DEFAULTS: dict[str, Any] = {
    "task": "detection",
    "model": "faster_rcnn_fpn",
    "backbone": "resnest50",
    "pretrained_backbone": None,
    "backbone_norm": "frozenbn",
    "freeze_at": 2,
    "fpn_norm": None,
    "head_norm": None,
    "box_head": "2fc",
    "fpn_channels": 256,
    "representation_size": 1024,
    "min_size": [640, 672, 704, 736, 768, 800],
    "max_size": 1333,
    "model_kwargs": {},  # torchvision FasterRCNN/MaskRCNN arguments (rpn_*, box_*)
    "backbone_kwargs": {},  # ResNeSt arguments
    "train_images": None,
    "train_ann": None,
    "val_images": None,
    "val_ann": None,
    "num_classes": None,  # default: categories in train_ann + background
    "hflip": 0.5,
    "batch_size": 16,  # global (split over DDP processes)
    "lr": 0.02,
    "max_iter": 90000,
    "lr_steps": [60000, 80000],
    "lr_gamma": 0.1,
    **_RUNTIME,
}

SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "task": "segmentation",
    "model": "deeplabv3",
    "backbone": "resnest50",
    "pretrained_backbone": None,
    "norm": "batchnorm",  # syncbn under DDP, as in the paper
    "freeze_at": 0,
    "output_stride": 8,
    "aux_loss": True,
    "aux_weight": 0.4,
    "backbone_kwargs": {},
    "dataset": "ade20k",  # ade20k | cityscapes
    "data_root": None,
    "train_split": None,  # default: training (ADE20K) / train (Cityscapes)
    "val_split": None,  # default: validation / val
    "num_classes": None,  # default: 150 / 19
    "crop_size": 512,
    "base_size": 512,
    "scale_range": [0.5, 2.0],
    "eval_size": None,
    "hflip": 0.5,
    "batch_size": 16,
    "lr": 0.01,
    "max_iter": 80000,
    "poly_power": 0.9,
    **_RUNTIME,
    "warmup_iters": 0,
}

_INT = (
    "max_iter",
    "batch_size",
    "seed",
    "workers",
    "checkpoint_period",
    "eval_period",
    "log_period",
    "warmup_iters",
    "freeze_at",
    "max_size",
    "output_stride",
    "crop_size",
    "base_size",
    "fpn_channels",
    "representation_size",
)
_FLOAT = ("lr", "momentum", "weight_decay", "warmup_factor", "lr_gamma", "poly_power", "aux_weight", "hflip")


def defaults_for(task: str) -> dict[str, Any]:
    if task not in ("detection", "segmentation"):
        raise ValueError(f"task must be 'detection' or 'segmentation', got {task!r}")
    return copy.deepcopy(DETECTION_DEFAULTS if task == "detection" else SEGMENTATION_DEFAULTS)


def parse_overrides(items: list[str], task: str) -> dict[str, Any]:
    """``["lr=0.01", "max_iter=100"]`` -> dict, values parsed as YAML; unknown keys raise."""
    valid = defaults_for(task)
    out = {}
    for text in items:
        if "=" not in text:
            raise ValueError(f"override {text!r} must look like KEY=VALUE (e.g. max_iter=1000)")
        key, value = text.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in valid:
            raise ValueError(
                f"unknown config key '{key}' on the command line{suggest_key(key, sorted(valid))}"
            )
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"cannot parse the value of {key}: {value!r} ({e})") from e
    return out


def resolve_task_config(
    task: str, config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults <- YAML (with bases) <- overrides, checked and coerced."""
    cfg = defaults_for(task)
    if config_file:
        loaded = load_yaml_config(Path(config_file), cfg, "see configs/detection/ and configs/segmentation/")
        if loaded.get("task", task) != task:
            raise ValueError(f"config {config_file} is a {loaded['task']} config, not {task}")
        cfg.update(loaded)
    for k, v in (overrides or {}).items():
        if k not in cfg:
            raise ValueError(f"unknown config key '{k}'{suggest_key(k, sorted(cfg))}")
        if v is not None:
            cfg[k] = v
    for k in _INT:
        if cfg.get(k) is not None:
            cfg[k] = int(cfg[k])
    for k in _FLOAT:
        if cfg.get(k) is not None:
            cfg[k] = float(cfg[k])
    if cfg["amp"] is False or cfg["amp"] is None:  # YAML reads a bare `off` as false
        cfg["amp"] = "off"
    if cfg["max_iter"] < 1 or cfg["batch_size"] < 1:
        raise ValueError(
            f"max_iter and batch_size must be >= 1, got {cfg['max_iter']} and {cfg['batch_size']}"
        )
    return cfg


__all__ = [
    "DETECTION_DEFAULTS",
    "SEGMENTATION_DEFAULTS",
    "resolve_task_config",
    "parse_overrides",
    "defaults_for",
]
