"""Classification inference: load a model from a training checkpoint or a weights file, predict, export.

A training checkpoint (``.ckpt`` of ``splitattn train``) and a safetensors file written by
:func:`export_weights` carry the model name, its extra constructor arguments, the class names and the
eval preprocessing, so nothing else is needed to use them. Any other weights file (official ``.pth``,
timm weights) needs the model name and is taken to be ImageNet-1k.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CKPT_SUFFIX, load_checkpoint, require_entries
from .data.imagefolder import load_rgb
from .data.preprocessing import DataConfig, apply_data_config, resolve_data_config
from .data.transforms import create_eval_transform
from .errors import CheckpointError, ConfigError, InputError, MissingFileError, SplitAttnError, WeightsError
from .factory import create_model
from .models.registry import check_model_name, resolve_name, short_repr, validate_arch_kwargs
from .weights import check_state_dict, json_metadata, read_state_dict, save_weights

WEIGHTS_SUFFIX = ".safetensors"
MAX_IMAGE_SIDE = 8192
"""Largest eval resize a file may ask for (the released models use at most 448)."""


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    from importlib.resources import files

    return tuple(files("splitattn.data").joinpath("imagenet_classes.txt").read_text().splitlines())


def imagenet_classes() -> list[str]:
    """The 1000 readable ImageNet-1k class names, in the order of the sorted synset folders."""
    return list(_imagenet_classes())


@dataclass(frozen=True)
class _Arch:
    """What a file records to rebuild its model, validated."""

    name: str
    kwargs: dict[str, Any]
    classes: list[str] | None
    eval_cfg: DataConfig | None


def _arch(values: Mapping[str, Any], model_name: str | None, source: str,
          error: type[SplitAttnError]) -> _Arch:
    """Validate the ``model_name``, ``model_kwargs``, ``classes`` and ``eval_cfg`` a file records.

    Nothing in them may name a file or URL or make loading allocate without bound: the constructor
    arguments go through :func:`~splitattn.models.registry.validate_arch_kwargs`.
    """
    if model_name is not None:
        name = resolve_name(model_name)  # the caller's name: an InputError listing close names
    elif values.get("model_name") is None:
        raise error(f"{source} does not record its model; pass the model name (--model NAME)")
    else:
        name = check_model_name(values["model_name"], source, error)
    stored = values.get("model_kwargs")
    kwargs = validate_arch_kwargs(name, {} if stored is None else stored, source, error)
    classes = values.get("classes")
    if classes is not None and (not isinstance(classes, list) or not classes
                                or not all(isinstance(c, str) for c in classes)):
        raise error(f"{source}: 'classes' must be a non-empty list of class names (strings), got "
                    f"{short_repr(classes)}")
    eval_cfg = values.get("eval_cfg")
    return _Arch(name, kwargs, classes, None if eval_cfg is None else _eval_cfg(eval_cfg, source, error))


def _eval_cfg(value: Any, source: str, error: type[SplitAttnError]) -> DataConfig:
    """A stored ``eval_cfg`` as a :class:`DataConfig`, with finite statistics and a bounded image size."""
    if not isinstance(value, Mapping):
        raise error(f"{source}: 'eval_cfg' must be a mapping, got {type(value).__name__}")
    try:
        cfg = DataConfig.from_dict(value)
    except (ConfigError, TypeError, ValueError, OverflowError, IndexError, KeyError) as e:
        raise error(f"{source}: 'eval_cfg' is invalid ({str(e)[:200]})") from e
    if not all(math.isfinite(v) for v in (*cfg.mean, *cfg.std)):
        raise error(f"{source}: 'eval_cfg' mean/std must be finite, got {cfg.mean}, {cfg.std}")
    try:
        resize = cfg.resize_size
    except OverflowError:  # crop_pct so small that crop / crop_pct is infinite
        resize = math.inf
    if resize > MAX_IMAGE_SIDE:
        raise error(f"{source}: 'eval_cfg' resizes images to {resize} px (img_size "
                    f"{cfg.crop_size} / crop_pct {cfg.crop_pct:g}), over the limit of {MAX_IMAGE_SIDE}")
    return cfg


def _num_classes(sd: Mapping[str, torch.Tensor], classes: list[str] | None, source: str,
                 error: type[SplitAttnError]) -> int:
    """The classifier size: the class list's, which must match ``fc.weight``; else ``fc.weight``'s rows."""
    fc = sd.get("fc.weight")
    if fc is not None and fc.ndim != 2:
        raise error(f"{source}: 'fc.weight' has shape {tuple(fc.shape)}, expected (classes, features)")
    if classes is None:
        return int(fc.shape[0]) if fc is not None else 1000
    if fc is None or fc.shape[0] != len(classes):
        rows = "no 'fc.weight'" if fc is None else f"an 'fc.weight' of {fc.shape[0]} rows"
        raise error(f"{source} records {len(classes)} class names but has {rows}: the file is inconsistent")
    return len(classes)


def _build(arch: _Arch, num_classes: int, source: str, error: type[SplitAttnError],
           pretrained: Path | bool = False) -> nn.Module:
    """``create_model`` of a file's architecture, its eval preprocessing applied."""
    try:
        model = create_model(arch.name, pretrained=pretrained, num_classes=num_classes, **arch.kwargs)
    except SplitAttnError:
        raise
    except (ValueError, RuntimeError) as e:  # e.g. a width not divisible by the groups
        raise error(f"{source}: its stored model arguments do not build {arch.name!r} "
                    f"({str(e)[:200]})") from e
    if arch.eval_cfg is not None:
        apply_data_config(model, arch.eval_cfg)
    return model


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state)``, every key and shape matching, or a CheckpointError ``what (...)``."""
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch's message: a title line, then one line per mismatch
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(f"{what} ({(lines[1] if len(lines) > 1 else str(e))[:300]})") from e
    if res.missing_keys or res.unexpected_keys:
        kinds = (("missing", res.missing_keys), ("unexpected", res.unexpected_keys))
        parts = [f"{len(keys)} {kind} keys (e.g. {', '.join(k[:80] for k in keys[:3])})"
                 for kind, keys in kinds if keys]
        raise CheckpointError(f"{what}: {'; '.join(parts)}")


def _classification_checkpoint(path: Path, ema: bool, model_name: str | None = None,
                               ) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """``(model with the eval preprocessing, class names, export metadata)`` of a ``splitattn train`` run."""
    ck = load_checkpoint(path)
    task = ck.get("task", "classification")
    if not isinstance(task, str) or task != "classification":
        raise CheckpointError(f"checkpoint {path} is a {str(task)[:40]} checkpoint, not a classification "
                              "one; `splitattn tasks` evaluates it")
    require_entries(ck, ("classes", "model"), path)
    if ema and ck.get("model_ema") is None:
        raise CheckpointError(f"checkpoint {path} has no EMA weights (the run did not use --ema); drop --ema")
    source = f"checkpoint {path}"
    arch = _arch(ck, model_name, source, CheckpointError)
    key = "model_ema" if ema else "model"
    state = check_state_dict(ck[key], f"checkpoint {path} entry {key!r}", CheckpointError)
    model = _build(arch, _num_classes(state, arch.classes, source, CheckpointError), source, CheckpointError)
    _load_strict(model, state, f"the weights in checkpoint {path} do not fit model {arch.name!r}")
    counters = {k: ck.get(k) if type(ck.get(k)) is int else None for k in ("epoch", "step")}
    meta = {"model_name": arch.name, "model_kwargs": arch.kwargs, "classes": arch.classes, **counters}
    return model, arch.classes or [], meta


def _weights_file(path: Path, model_name: str | None) -> tuple[nn.Module, list[str]]:
    sd, meta = read_state_dict(path)
    values = {k: json_metadata(meta, k, path) for k in ("model_kwargs", "classes", "eval_cfg")}
    source = f"weights file {path}"
    arch = _arch({**values, "model_name": meta.get("model_name")}, model_name, source, WeightsError)
    num_classes = _num_classes(sd, arch.classes, source, WeightsError)
    model = _build(arch, num_classes, source, WeightsError, pretrained=path)
    classes = arch.classes or (imagenet_classes() if num_classes == 1000
                               else [f"class_{i}" for i in range(num_classes)])
    return model, classes


def load_for_inference(weights: str | os.PathLike, model_name: str | None = None, ema: bool = False,
                       ) -> tuple[nn.Module, list[str]]:
    """``(model in eval mode, class names)`` from a ``.ckpt`` of ``splitattn train`` or a weights file.

    The model name, constructor arguments, class names and eval preprocessing the file records are
    validated before use: a file can never name other weights to load, an unknown argument, or a size
    without bound.

    Args:
        weights: a training checkpoint (``.ckpt``), a safetensors file of :func:`export_weights`, or an
            official / timm weights file (then ``model_name`` is needed).
        model_name: the registered model (default: the one recorded in the file).
        ema: the EMA weights of a training checkpoint.

    Returns:
        The model on CPU, its ``pretrained_cfg`` holding the eval preprocessing, and its class names.

    Raises:
        MissingFileError: ``weights`` does not exist.
        CheckpointError: the checkpoint is unreadable, lacks an entry, records invalid metadata or its
            weights do not fit the model (the message names the file and the entry).
        WeightsError: the same for a weights file.
        InputError: ``ema`` for a weights file, or an unknown ``model_name``.
    """
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    if path.suffix == CKPT_SUFFIX:
        model, classes, _ = _classification_checkpoint(path, ema, model_name)
    else:
        if ema:
            raise InputError(f"--ema selects the EMA weights of a training checkpoint; {path} is a weights "
                             "file (export-weights --ema writes the EMA weights into it)")
        model, classes = _weights_file(path, model_name)
    return model.eval(), classes


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, ema: bool = False) -> Path:
    """Write the (EMA) model of a training checkpoint as safetensors that ``create_model`` loads.

    The metadata records the model name, ``model_kwargs``, class names and eval preprocessing, so
    :func:`load_for_inference` (``splitattn eval`` / ``predict``) needs only the file.

    Raises:
        InputError: ``out`` is the checkpoint itself or is not named ``*.safetensors``.
        MissingFileError: ``checkpoint`` does not exist.
        CheckpointError: the checkpoint is unreadable, lacks an entry (named), records invalid metadata,
            or is not a classification checkpoint.
    """
    src, dst = Path(checkpoint), Path(out)
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise InputError(f"export-weights would overwrite its input {src}; give another output file")
    if dst.suffix != WEIGHTS_SUFFIX:
        raise InputError(f"export-weights writes safetensors; name the output {dst.stem}{WEIGHTS_SUFFIX} "
                         f"instead of {dst.name}" + (" (a .ckpt name is for training checkpoints)"
                                                     if dst.suffix == CKPT_SUFFIX else ""))
    model, _, meta = _classification_checkpoint(src, ema)
    return save_weights(model, dst, metadata={**meta, "eval_cfg": resolve_data_config(model).to_dict(),
                                              "ema": ema})


@torch.inference_mode()
def predict_images(model: nn.Module, classes: Sequence[str], images: Sequence[str | os.PathLike],
                   topk: int = 5) -> list[dict[str, Any]]:
    """The ``topk`` most probable classes of each image, with the model's eval preprocessing.

    Args:
        model: a classifier ``(1, 3, H, W) -> (1, K)`` whose ``pretrained_cfg`` gives the preprocessing.
        classes: the ``K`` class names.
        images: image files.
        topk: how many classes per image (at most ``K``).

    Returns:
        ``[{"image": path, "top": [(class_name, index, probability), ...]}]``, most probable first.
    """
    if topk < 1:
        raise InputError(f"topk must be at least 1, got {topk}")
    missing = [str(p) for p in images if not os.path.isfile(p)]
    if missing:
        raise MissingFileError(f"image {missing[0]} does not exist" +
                               (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    tf = create_eval_transform(model)
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for path in images:
            probs = model(tf(load_rgb(str(path))).unsqueeze(0).to(device)).float().softmax(-1)[0]
            if probs.numel() != len(classes):
                raise InputError(f"the model has {probs.numel()} outputs but {len(classes)} class names")
            top = probs.topk(min(topk, probs.numel()))
            out.append({"image": str(path), "top": [(classes[i], i, p) for p, i in
                                                    zip(top.values.tolist(), top.indices.tolist())]})
    finally:
        model.train(was_training)
    return out


__all__ = ["export_weights", "imagenet_classes", "load_for_inference", "predict_images"]
