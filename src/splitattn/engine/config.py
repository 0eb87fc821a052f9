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

from ..errors import ConfigError, MissingFileError
from ..utils.fileio import atomic_write_text
from ..utils.train_checkpoint import CLASSIFICATION, DETECTION, SEGMENTATION
from ..utils.validation import short_repr
from .yamlfile import MAX_CONFIG_BYTES, dump_yaml, load_yaml

log = logging.getLogger("splitattn")

CONFIG_VERSION = 2
"""Version 2: ``batch_size`` is the global batch for every task (version 1, a file without
``config_version``: per process for classification); :meth:`RunConfig.upgrade` reads older versions."""
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

    task: str = ""                             # each section's name (CONFIG_CLASSES is keyed by it)
    config_version: int = _key(CONFIG_VERSION, lo=1)
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
    batch_size: int = _key(16, lo=1)          # global: split over the processes
    batch_size_per_process: int | None = _key(None, lo=1)  # set: global batch = this x processes
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

    @classmethod
    def upgrade(cls, values: dict[str, Any], version: int, where: dict[str, str]) -> None:
        """Rewrite the given ``values`` of a config of an older ``version`` in the current version's
        terms, in place (``where`` says where each key came from, for the warnings)."""


@dataclass
class ClassificationConfig(RunConfig):
    """The paper's ImageNet recipe for ResNeSt-50; per-model YAMLs in ``configs/`` override it."""

    task: str = CLASSIFICATION
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
    batch_size: int = _key(128, lo=1)
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

    @classmethod
    def upgrade(cls, values: dict[str, Any], version: int, where: dict[str, str]) -> None:
        """Version 1 (a file without ``config_version``): ``batch_size`` was per process; read it so."""
        if version < 2 and "batch_size" in values:
            b = values["batch_size_per_process"] = values.pop("batch_size")
            where["batch_size_per_process"] = where["batch_size"]
            log.warning("config key 'batch_size' %s is read per process (global batch = %d x processes), its "
                        "meaning in configs without config_version (deprecated): batch_size is now the "
                        "global batch of every task; write batch_size_per_process: %d, or config_version: "
                        "%d with the global batch_size", where["batch_size"], b, b, CONFIG_VERSION)


@dataclass
class DetectionConfig(RunConfig):
    """The paper's COCO transfer recipe: scales 640-800 (max 1333), 1x schedule, batch 16, LR 0.02."""

    task: str = DETECTION
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

    task: str = SEGMENTATION
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
    c.task: c for c in (ClassificationConfig, DetectionConfig, SegmentationConfig)}
"""The tasks, by name: the one list of them (the engine's tasks and the ``task`` key derive from it)."""
DEFAULT_TASK = ClassificationConfig.task
"""The task of a config file or checkpoint that names none."""
# Old key -> new key: still accepted, with a deprecation warning.
RENAMED = {"checkpoint_period": "checkpoint_interval"}
# Keys of which a config holds one: a later source's (child file, command line) replaces an earlier one's.
ONE_OF = (("batch_size", "batch_size_per_process"),)


def _other_of(key: str) -> list[str]:
    return [o for group in ONE_OF if key in group for o in group if o != key]


def _check_one_of(values: dict[str, Any], where: str) -> None:
    for group in ONE_OF:
        given = [k for k in group if values.get(k) is not None]
        if len(given) > 1:
            raise ConfigError(f"{where}: {' and '.join(given)} are both given; keep one (batch_size is the "
                              "global batch, batch_size_per_process the batch of each process)")


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
    data = load_yaml(text, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    base = data.pop("_base_", None)
    out = read_yaml_config(path.parent / str(base), (*_seen, path.resolve())) if base else {}
    _check_one_of({str(k): v for k, v in data.items()}, f"config file {path}")
    for key in list(data):
        for other in _other_of(str(key)):  # this file's batch_size replaces its base's per-process one
            out.pop(other, None)
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
    return key, load_yaml(value, f"the value of override {short_repr(key, 200)}")


def load_config(task: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- YAML file (with its bases) <- overrides, each value converted and checked.

    A file without ``config_version`` is read as version 1 (:data:`CONFIG_VERSION`); with no file, the
    values are read as the current version.

    Args:
        task: a key of :data:`CONFIG_CLASSES`; default: the file's ``task`` key, else :data:`DEFAULT_TASK`.
        config_file: a recipe YAML, or ``None`` for the defaults.
        overrides: values that win (command-line flags and ``KEY=VALUE``); ``None`` values are ignored.

    Returns:
        The task's config dataclass.

    Raises:
        ConfigError: unknown key (with the closest valid one), wrong type, out of range, NaN or infinite,
            task mismatch, a newer ``config_version``; a YAML alias, anchor or duplicate key in a file.
    """
    data = read_yaml_config(config_file) if config_file else {"_file_": {}}
    files = data.pop("_file_")
    file_task = data.get("task")
    task = task if task is not None else (file_task or DEFAULT_TASK)
    if task not in CONFIG_CLASSES:
        raise ConfigError(f"task must be one of {', '.join(CONFIG_CLASSES)}, got {short_repr(task, 200)}")
    if file_task is not None and file_task != task:
        raise ConfigError(f"config {config_file} is a {str(file_task)[:40]} config, not {task}")
    cls = CONFIG_CLASSES[task]
    values, where = _collect(cls, data, files, config_file, overrides or {})
    if values.pop("task", task) != task:
        raise ConfigError(f"config key 'task' {where['task']} cannot change the task of a {task} config; "
                          "pass another recipe")
    version = values.get("config_version", 1 if config_file else CONFIG_VERSION)
    if version > CONFIG_VERSION:
        raise ConfigError(f"config_version {version} {where['config_version']} is newer than this splitattn "
                          f"reads ({CONFIG_VERSION}); upgrade splitattn")
    cls.upgrade(values, version, where)
    return cls(**{**values, "config_version": CONFIG_VERSION})


def _collect(cls: type[RunConfig], data: dict[str, Any], files: dict[str, Any], config_file: Any,
             overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(values, where each came from)``: the file's keys, then the overrides', converted and checked."""
    valid = sorted(f.name for f in fields(cls))
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for k, v in data.items():
        key = _canonical(k, valid, f"in config file {files.get(k, config_file)}")
        values[key], where[key] = v, f"in config file {files.get(k, config_file)}"
    given = {_canonical(k, valid, "on the command line"): v for k, v in overrides.items() if v is not None}
    _check_one_of(given, "on the command line")
    for key, v in given.items():
        for other in _other_of(key):  # the command line's batch_size replaces the file's per-process one
            values.pop(other, None)
        values[key], where[key] = v, "on the command line"
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    for k, v in values.items():
        _check_finite(k, v, where[k])
        values[k] = _convert(k, v, hints[k])
        _check_range(by_name[k], values[k])
    return values, where


def per_process_batch(cfg: RunConfig, world_size: int) -> int:
    """Images per process and step: ``batch_size_per_process`` if set, else the global ``batch_size``
    split over ``world_size`` processes.

    Raises:
        ConfigError: ``batch_size`` is not divisible by ``world_size``.
    """
    if cfg.batch_size_per_process:
        return cfg.batch_size_per_process
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (the global batch) is not divisible by {world_size} "
                          f"processes; use a multiple of {world_size}, or set batch_size_per_process")
    return cfg.batch_size // world_size


def save_config(cfg: RunConfig | dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a config (or a dict of resolved values) as YAML, atomically, in a form :func:`load_config`
    reads back: of each :data:`ONE_OF` group only the key that is in use (the first unless another is
    set)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    for first, *others in ONE_OF:
        used = [k for k in others if data.get(k) is not None]
        for k in ([first] if used else []) + [k for k in others if k not in used]:
            data.pop(k, None)
    return atomic_write_text(path, dump_yaml(data))


__all__ = [
    "CONFIG_CLASSES", "CONFIG_VERSION", "DEFAULT_TASK", "ClassificationConfig",
    "DetectionConfig", "RunConfig", "SegmentationConfig", "load_config", "parse_override",
    "per_process_batch", "read_yaml_config", "save_config", "suggest_key",
]
