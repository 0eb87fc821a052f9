"""Training configuration: typed dataclasses, YAML files with ``_base_`` inheritance, ``KEY=VALUE`` overrides.

One section per task (:class:`ClassificationConfig`, :class:`DetectionConfig`, :class:`SegmentationConfig`),
each extending the keys every run shares (:class:`RunConfig`). Every key has a type and a default; values
from YAML files and the command line are converted to the key's type and range-checked, and an unknown
key is an error naming the closest valid key (``learning_rate`` -> ``lr``). Numbers must be finite; recipes
may not use YAML aliases or anchors (a few lines of nested aliases expand to gigabytes) nor repeat a key.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError, MissingFileError
from ..utils.fileio import atomic_write_text
from ..utils.validation import short_repr

log = logging.getLogger("splitattn")

TASKS = ("classification", "detection", "segmentation")
AMP = Literal["auto", "bf16", "fp16", "off"]


def _key(default: Any = None, lo: float | None = None, hi: float | None = None, length: int | None = None,
         ) -> Any:
    """A config field: ``default`` plus an optional closed range ``[lo, hi]`` and a fixed list length."""
    meta = {"lo": lo, "hi": hi, "length": length}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Keys of every training run: runtime, checkpoints, optimiser basics."""

    task: Literal["classification", "detection", "segmentation"] = "classification"
    model: str = "resnest50"
    model_kwargs: dict[str, Any] = _key({})
    output: str | None = None                  # run folder (checkpoints, config.yaml, metrics.jsonl)
    resume: str | None = None                  # auto | PATH
    overwrite: bool = False                    # replace the run already in the output folder
    skip_bad_images: bool = False              # drop (and count) unreadable images instead of stopping
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    dist_timeout: float = _key(10.0, lo=0.01)  # minutes a process waits for the others (start, collectives)
    seed: int = _key(0, lo=0)
    deterministic: bool = False
    workers: int = _key(4, lo=0)
    amp: AMP = "off"
    channels_last: bool | Literal["auto"] = False
    compile: bool = False
    grad_checkpointing: bool | Literal["block", "attn"] = False
    batch_size: int = _key(16, lo=1)
    lr: float | None = _key(None, lo=0)
    momentum: float = _key(0.9, lo=0, hi=1)
    nesterov: bool = False
    weight_decay: float = _key(1e-4, lo=0)    # on conv and linear weights only
    grad_clip: float | None = _key(None, lo=0)
    ema: bool = False
    ema_decay: float = _key(0.9999, lo=0, hi=1)
    checkpoint_interval: int = _key(0, lo=0)   # also save last.ckpt every N iterations (0: never)
    max_steps: int | None = _key(None, lo=1)   # stop after this many iterations in total
    progress_bar: bool = True
    tensorboard: bool = False


@dataclass
class ClassificationConfig(RunConfig):
    """The paper's ImageNet recipe for ResNeSt-50; per-model YAMLs in ``configs/`` override it."""

    task: Literal["classification"] = "classification"
    pretrained: bool | str | None = None       # path/URL/true: start from these weights (new classifier)
    drop_rate: float = _key(0.0, lo=0, hi=1)   # dropout before the classifier
    drop_block_rate: float = _key(0.1, lo=0, hi=1)  # final DropBlock probability, ramped from 0
    zero_init_last: bool = True
    norm_layer: Literal["batchnorm", "syncbn", "frozenbn", "groupnorm"] = "batchnorm"
    sync_bn: bool = False
    data: str | None = None                    # folder holding train/ and val/
    img_size: int = _key(224, lo=1)
    eval_img_size: int | None = _key(None, lo=1)
    crop_pct: float | None = _key(None, lo=1e-6, hi=1)
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: list[float] | None = _key(None, length=3)
    std: list[float] | None = _key(None, length=3)
    rrc_scale: list[float] = _key([0.08, 1.0], lo=0, hi=1, length=2)
    rrc_ratio: list[float] = _key([0.75, 1.3333333333333333], lo=1e-6, length=2)
    hflip: float = _key(0.5, lo=0, hi=1)
    auto_augment: Literal["imagenet", "cifar10", "svhn"] | None = "imagenet"
    color_jitter: float = _key(0.4, lo=0)
    pca_lighting: float = _key(0.1, lo=0)
    workers: int = _key(8, lo=0)
    epochs: int = _key(270, lo=1)
    batch_size: int = _key(128, lo=1)          # per process; global batch = batch_size x world size
    base_lr: float = _key(0.1, lo=0)           # lr default: base_lr x global batch / lr_base_batch
    lr_base_batch: int = _key(256, lo=1)
    warmup_epochs: int = _key(5, lo=0)
    min_lr: float = _key(0.0, lo=0)
    nesterov: bool = True
    label_smoothing: float = _key(0.1, lo=0, hi=1)
    mixup_alpha: float = _key(0.2, lo=0)
    amp: AMP = "auto"                          # auto: bf16 on GPU, off on CPU
    channels_last: bool | Literal["auto"] = "auto"
    eval_interval: int = _key(1, lo=1)         # validate every N epochs (and after the last)
    tensorboard: bool = True


@dataclass
class DetectionConfig(RunConfig):
    """The paper's COCO transfer recipe: scales 640-800 (max 1333), 1x schedule, batch 16, LR 0.02."""

    task: Literal["detection"] = "detection"
    model: Literal["faster_rcnn_fpn", "cascade_rcnn_fpn", "mask_rcnn_fpn", "cascade_mask_rcnn_fpn"] = (
        "faster_rcnn_fpn")
    backbone: str = "resnest50"
    pretrained_backbone: bool | str | None = None
    backbone_norm: Literal["batchnorm", "frozenbn", "syncbn", "groupnorm"] = "frozenbn"
    freeze_at: int = _key(2, lo=0, hi=5)
    fpn_norm: Literal["batchnorm", "syncbn", "groupnorm"] | None = None
    head_norm: Literal["batchnorm", "syncbn", "groupnorm"] | None = None
    box_head: Literal["2fc", "4conv1fc"] = "2fc"
    fpn_channels: int = _key(256, lo=1)
    representation_size: int = _key(1024, lo=1)
    min_size: list[int] = _key([640, 672, 704, 736, 768, 800], lo=1)
    max_size: int = _key(1333, lo=1)
    backbone_kwargs: dict[str, Any] = _key({})
    train_images: str | None = None
    train_ann: str | None = None
    val_images: str | None = None
    val_ann: str | None = None
    num_classes: int | None = _key(None, lo=2)  # default: categories in train_ann + background
    hflip: float = _key(0.5, lo=0, hi=1)
    batch_size: int = _key(16, lo=1)           # global (split over DDP processes)
    lr: float | None = _key(0.02, lo=0)
    max_iter: int = _key(90000, lo=1)
    lr_steps: list[int] = _key([60000, 80000], lo=0)
    lr_gamma: float = _key(0.1, lo=0)
    warmup_iters: int = _key(1000, lo=0)
    warmup_factor: float = _key(0.001, lo=0, hi=1)
    checkpoint_interval: int = _key(5000, lo=0)
    eval_period: int = _key(0, lo=0)           # iterations between evaluations (0: only at the end)
    log_period: int = _key(20, lo=1)
    find_unused_parameters: bool = False


@dataclass
class SegmentationConfig(RunConfig):
    """DeepLabV3 on a dilated ResNeSt with an auxiliary FCN head (the paper's ADE20K / Cityscapes runs)."""

    task: Literal["segmentation"] = "segmentation"
    model: Literal["deeplabv3"] = "deeplabv3"
    backbone: str = "resnest50"
    pretrained_backbone: bool | str | None = None
    norm: Literal["batchnorm", "frozenbn", "syncbn", "groupnorm"] = "batchnorm"
    freeze_at: int = _key(0, lo=0, hi=5)
    output_stride: Literal[8, 16, 32] = 8
    aux_loss: bool = True
    aux_weight: float = _key(0.4, lo=0)
    backbone_kwargs: dict[str, Any] = _key({})
    dataset: Literal["ade20k", "cityscapes"] = "ade20k"
    data_root: str | None = None
    train_split: str | None = None             # default: training (ADE20K) / train (Cityscapes)
    val_split: str | None = None               # default: validation / val
    num_classes: int | None = _key(None, lo=1)  # default: 150 / 19
    crop_size: int = _key(512, lo=1)
    base_size: int = _key(512, lo=1)
    scale_range: list[float] = _key([0.5, 2.0], lo=1e-6, length=2)
    eval_size: int | None = _key(None, lo=1)
    hflip: float = _key(0.5, lo=0, hi=1)
    batch_size: int = _key(16, lo=1)           # global
    lr: float | None = _key(0.01, lo=0)
    max_iter: int = _key(80000, lo=1)
    poly_power: float = _key(0.9, lo=0)
    warmup_iters: int = _key(0, lo=0)
    warmup_factor: float = _key(0.001, lo=0, hi=1)
    checkpoint_interval: int = _key(5000, lo=0)
    eval_period: int = _key(0, lo=0)
    log_period: int = _key(20, lo=1)
    find_unused_parameters: bool = False


CONFIG_CLASSES: dict[str, type[RunConfig]] = {
    "classification": ClassificationConfig, "detection": DetectionConfig, "segmentation": SegmentationConfig,
}
# Old key -> new key: still accepted, with a deprecation warning.
RENAMED = {"checkpoint_period": "checkpoint_interval"}


def suggest_key(key: str, valid: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid key, or the list of keys when none is close."""
    words = [w for w in key.lower().split("_") if w]
    initials = "".join(w[0] for w in words)
    # In order: a longer key containing it (warmup -> warmup_epochs); a close spelling; initials
    # (learning_rate -> lr); a shared long word (lr_warmup -> warmup_epochs); a key inside it.
    close = (sorted((k for k in valid if len(key) > 2 and key in k), key=len)[:1]
             or difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
             or [k for k in valid if len(words) > 1 and k == initials]
             or [k for k in valid if any(w in k.split("_") for w in words if len(w) > 3)]
             or [k for k in valid if k in key]
             or difflib.get_close_matches(key, valid, n=1, cutoff=0.5))
    return f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(valid)}"


def _check_finite(key: str, value: Any, where: str) -> None:
    """ConfigError for a NaN or an infinity anywhere in ``value`` (list items and dict values included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' {where} must be a finite number, got {value!r}")
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(f"{key}[{i}]", v, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{key}.{str(k)[:60]}", v, where)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if args:
        return f"{tp.__origin__.__name__} of {_type_name(args[0])}" if tp.__origin__ is list else str(tp)
    return "null" if tp is type(None) else tp.__name__


def _convert(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or a ConfigError naming ``key``; YAML's ``off`` (False) counts as "off"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in sorted(args, key=lambda a: a is str):  # try str last: "1" should stay a number where allowed
            try:
                return _convert(key, value, a)
            except ConfigError:
                continue
    elif origin is Literal:
        if value is False and "off" in args:
            return "off"
        if value in args and type(value) is type(args[args.index(value)]):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list | tuple):
            return [_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {short_repr(value, 200)}")


def _check_range(f: dataclasses.Field, value: Any) -> None:
    lo, hi, length = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("length")
    if value is None:
        return
    if length is not None and len(value) != length:
        raise ConfigError(f"config key '{f.name}' must have {length} values, got {len(value)}: "
                          f"{short_repr(value, 200)}")
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"within [{lo}, {hi}]")
            raise ConfigError(f"config key '{f.name}' must be {bounds}, got {short_repr(value, 200)}")


def _canonical(key: str, valid: list[str], where: str) -> str:
    key = key.strip().lstrip("-").replace("-", "_")
    if key in RENAMED and RENAMED[key] in valid:
        log.warning("config key '%s' (%s) is deprecated: use '%s'", key, where, RENAMED[key])
        return RENAMED[key]
    if key not in valid:
        raise ConfigError(f"unknown config key {short_repr(key, 200)} {where}{suggest_key(key[:100], valid)}")
    return key


MAX_CONFIG_BYTES = 1 << 20
"""Largest recipe file read (recipes are a few hundred bytes)."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader refusing aliases and anchors, and duplicate keys (which YAML lets the last win).

    Ten lines of nested aliases ("billion laughs") expand to gigabytes; recipes share values through
    ``_base_`` instead.
    """

    source = "the config"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise ConfigError(f"{self.source}, line {event.start_mark.line + 1}: YAML anchors and aliases "
                              f"({sign}{str(event.anchor)[:40]}) are not allowed in splitattn configs; write "
                              "the value out (recipes share keys through _base_)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": the base class merges it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConfigError(f"{self.source}: key {short_repr(key, 200)} is given twice (lines {first} "
                                  f"and {line}); keep one")
            lines[key] = line
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, source: str) -> Any:
    """``text`` parsed by :class:`_RecipeLoader`; ``source`` ("config file x.yaml") names it in errors."""
    loader = _RecipeLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(e).split())[:300]}") from e
    except RecursionError:
        raise ConfigError(f"{source}: its YAML is nested too deeply to read") from None
    except ValueError as e:  # e.g. an int over Python's 4300-digit limit
        raise ConfigError(f"{source}: a value YAML cannot convert ({str(e)[:150]})") from e
    finally:
        loader.dispose()


def read_yaml_config(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe YAML as a dict, following ``_base_: other.yaml`` (relative to the file) recursively."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"config file {path} does not exist; see the recipes in configs/")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file; pass a recipe YAML (see configs/)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {path.stat().st_size:,} bytes, over the "
                          f"{MAX_CONFIG_BYTES:,}-byte limit of a recipe; is it the right file?")
    if path.resolve() in _seen:
        raise ConfigError(f"config {path} inherits from itself through _base_")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    data = _load_yaml(text, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    base = data.pop("_base_", None)
    out = read_yaml_config(path.parent / str(base), (*_seen, path.resolve())) if base else {}
    out.update({str(k): v for k, v in data.items()})
    out.setdefault("_file_", {})
    out["_file_"] = {**out["_file_"], **{str(k): path for k in data}}
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, YAML-parsed value)``; the key is checked when the config is built."""
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text, 200)} must look like KEY=VALUE (e.g. mixup_alpha=0)")
    key, value = text.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    return key, _load_yaml(value, f"the value of override {short_repr(key, 200)}")


def load_config(task: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- YAML file (with its bases) <- overrides, each value converted and checked.

    Args:
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``; default: the file's ``task``
            key, else classification.
        config_file: a recipe YAML, or ``None`` for the defaults.
        overrides: values that win (command-line flags and ``KEY=VALUE``); ``None`` values are ignored.

    Returns:
        The task's config dataclass.

    Raises:
        ConfigError: unknown key (with the closest valid one), wrong type, out of range, NaN or infinite,
            task mismatch; a YAML alias, anchor or duplicate key in a file.
    """
    data = read_yaml_config(config_file) if config_file else {"_file_": {}}
    files = data.pop("_file_")
    file_task = data.get("task")
    if task is None:
        task = file_task or "classification"
    if task not in CONFIG_CLASSES:
        raise ConfigError(f"task must be one of {TASKS}, got {short_repr(task, 200)}")
    if file_task is not None and file_task != task:
        raise ConfigError(f"config {config_file} is a {file_task} config, not {task}")
    cls = CONFIG_CLASSES[task]
    valid = sorted(f.name for f in fields(cls))
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for k, v in data.items():
        key = _canonical(k, valid, f"in config file {files.get(k, config_file)}")
        values[key], where[key] = v, f"in config file {files.get(k, config_file)}"
    for k, v in (overrides or {}).items():
        if v is not None:
            key = _canonical(k, valid, "on the command line")
            values[key], where[key] = v, "on the command line"
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    for k, v in values.items():
        _check_finite(k, v, where[k])
        values[k] = _convert(k, v, hints[k])
        _check_range(by_name[k], values[k])
    return cls(**values)


def save_config(cfg: RunConfig | dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a config (or a dict of resolved values) as YAML, atomically."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return atomic_write_text(path, yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False))


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value shared by two keys twice: a saved config must load without aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


__all__ = [
    "CONFIG_CLASSES", "ClassificationConfig", "DetectionConfig", "RunConfig", "SegmentationConfig",
    "load_config", "parse_override", "read_yaml_config", "save_config", "suggest_key",
]
