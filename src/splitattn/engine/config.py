"""Training configuration: defaults, YAML files with ``_base_`` inheritance, ``KEY=VALUE`` overrides.

Every key has a default here, so a YAML file or a command-line override naming an unknown key is an
error that suggests the closest valid key (``lr_warmup`` -> ``warmup_epochs``).
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

# The paper's ImageNet recipe for ResNeSt-50 (PAPER.md "ImageNet recipe"); per-model YAMLs override.
DEFAULTS: dict[str, Any] = {
    # model
    "model": "resnest50",
    "model_kwargs": {},          # extra create_model() arguments (e.g. stem_width for a small demo net)
    "pretrained": None,          # path/URL/true: start from these weights (classifier re-initialised)
    "drop_rate": 0.0,            # dropout before the classifier (0.2 for ResNeSt-200/269)
    "drop_block_rate": 0.1,      # final DropBlock probability on layers 3-4, ramped linearly from 0
    "zero_init_last": True,      # zero gamma of each block's last BN
    "norm_layer": "batchnorm",   # batchnorm | syncbn | frozenbn | groupnorm
    "sync_bn": False,            # convert BatchNorm to SyncBatchNorm under DDP
    # data
    "data": None,
    "img_size": 224,             # training crop
    "eval_img_size": None,       # eval crop (default: img_size)
    "crop_pct": None,            # eval crop / resized short side (default: the model's, 0.875 for 224)
    "interpolation": "bicubic",
    "mean": None,                # default: the model config's (ImageNet)
    "std": None,
    "rrc_scale": [0.08, 1.0],    # RandomResizedCrop area range
    "rrc_ratio": [0.75, 1.3333333333333333],
    "hflip": 0.5,
    "auto_augment": "imagenet",  # imagenet | cifar10 | svhn | null
    "color_jitter": 0.4,
    "pca_lighting": 0.1,
    "workers": 8,
    "skip_bad_images": False,
    # optimisation
    "epochs": 270,
    "batch_size": 128,           # per process; global batch = batch_size x world size
    "lr": None,                  # peak LR; default base_lr x global batch / lr_base_batch
    "base_lr": 0.1,
    "lr_base_batch": 256,
    "warmup_epochs": 5,
    "min_lr": 0.0,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,        # on conv and linear weights only
    "label_smoothing": 0.1,
    "mixup_alpha": 0.2,
    "grad_clip": None,
    "ema": False,
    "ema_decay": 0.9999,
    # runtime
    "amp": "auto",               # auto (bf16 on GPU, off on CPU) | bf16 | fp16 | off
    "channels_last": "auto",     # auto (on for GPU) | true | false
    "compile": False,
    "grad_checkpointing": False,  # false | block | attn: recompute in backward to save memory
    "device": "auto",
    "seed": 0,
    "deterministic": False,
    "output": None,
    "resume": None,              # auto | PATH
    "checkpoint_interval": 0,    # also save last.ckpt every N iterations (0: per epoch only)
    "eval_interval": 1,          # validate every N epochs (and after the last)
    "max_steps": None,           # stop after this many iterations in total (smoke tests)
    "progress_bar": True,
    "tensorboard": True,
}

_TUPLE_KEYS = {"rrc_scale", "rrc_ratio", "mean", "std"}


def suggest_key(key: str, valid: list[str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for the closest valid key, or a list of keys when none is close."""
    valid = valid or sorted(DEFAULTS)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:
        # substring matches catch e.g. "warmup" -> "warmup_epochs"
        close = [k for k in valid if key in k or k in key][:1]
    return f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(valid)}"


def load_yaml_config(
    path: str | os.PathLike,
    valid: dict[str, Any] | None = None,
    where_to_look: str = "see the recipes in configs/",
    _seen: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Read a recipe YAML, following ``_base_: other.yaml`` (relative to the file) recursively.

    Args:
        path: the YAML file.
        valid: the known keys (default: the classification recipe's); an unknown key raises a
            ValueError naming the file and the closest valid key.
        where_to_look: the hint given when the file does not exist.
    """
    path = Path(path)
    valid = DEFAULTS if valid is None else valid
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; {where_to_look}")
    if path.resolve() in _seen:
        raise ValueError(f"config {path} inherits from itself through _base_")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    base = data.pop("_base_", None)
    for k in data:
        if k not in valid:
            raise ValueError(f"unknown config key '{k}' in config file {path}{suggest_key(k, sorted(valid))}")
    out = load_yaml_config(path.parent / base, valid, where_to_look, (*_seen, path.resolve())) if base else {}
    out.update(data)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, yaml-parsed value)``; unknown keys raise with a suggestion."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like KEY=VALUE (e.g. mixup_alpha=0)")
    key, value = text.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    if key not in DEFAULTS:
        raise ValueError(f"unknown config key '{key}' on the command line{suggest_key(key)}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse the value of {key}: {value!r} ({e})") from e


def _coerce(cfg: dict[str, Any]) -> dict[str, Any]:
    for k in _TUPLE_KEYS:
        if cfg.get(k) is not None:
            cfg[k] = [float(v) for v in cfg[k]]
    for k in ("epochs", "batch_size", "img_size", "workers", "warmup_epochs", "seed", "checkpoint_interval",
              "eval_interval", "lr_base_batch"):
        if cfg.get(k) is not None:
            cfg[k] = int(cfg[k])
    for k in ("lr", "base_lr", "min_lr", "momentum", "weight_decay", "label_smoothing", "mixup_alpha",
              "drop_rate", "drop_block_rate", "ema_decay", "color_jitter", "pca_lighting", "hflip"):
        if cfg.get(k) is not None:
            cfg[k] = float(cfg[k])
    if cfg["amp"] is False or cfg["amp"] is None:  # YAML 1.1 reads a bare `off` as false
        cfg["amp"] = "off"
    if str(cfg["amp"]).lower() not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {cfg['amp']!r}")
    cfg["amp"] = str(cfg["amp"]).lower()
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg['epochs']} and {cfg['batch_size']}")
    if not isinstance(cfg["model_kwargs"], dict):
        raise ValueError("model_kwargs must be a mapping, e.g. model_kwargs={stem_width: 16}")
    return cfg


def resolve_config(config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                   ) -> dict[str, Any]:
    """Defaults <- YAML file (with its bases) <- overrides (command-line flags and KEY=VALUE).

    Args:
        config_file: a recipe YAML or ``None`` for the defaults.
        overrides: values that win; ``None`` values are ignored (flags not given).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if config_file:
        cfg.update(load_yaml_config(config_file))
    for k, v in (overrides or {}).items():
        if k not in DEFAULTS:
            raise ValueError(f"unknown config key '{k}'{suggest_key(k)}")
        if v is not None:
            cfg[k] = v
    return _coerce(cfg)


def save_config(cfg: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


__all__ = ["DEFAULTS", "load_yaml_config", "parse_override", "resolve_config", "save_config", "suggest_key"]
