"""Classification inference: load a model from a training checkpoint or a weights file, predict, export.

A training checkpoint (``.ckpt`` of ``splitattn train``) and a safetensors file written by
:func:`export_weights` carry the model name, its extra constructor arguments, the class names and the
eval preprocessing, so nothing else is needed to use them. Any other weights file (official ``.pth``,
timm weights) needs the model name and is taken to be ImageNet-1k.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.imagefolder import load_rgb
from ..data.transforms import create_eval_transform
from ..errors import CheckpointError, InputError, MissingFileError, WeightsError
from ..models._factory import build_model, model_from_weights
from ..models._registry import resolve_name
from ..models._spec import ModelSpec, read_spec
from ..models._weights import classifier_rows, file_problem, read_weights, save_weights, state_dict_of
from ..utils.train_checkpoint import (
    CKPT_SUFFIX,
    CLASSIFICATION,
    DETECTION,
    SEGMENTATION,
    check_format,
    load_checkpoint,
    require_entries,
)
from ..utils.validation import Invalid

WEIGHTS_SUFFIX = ".safetensors"


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    from importlib.resources import files

    return tuple(files("splitattn.data").joinpath("imagenet_classes.txt").read_text().splitlines())


def imagenet_classes() -> list[str]:
    """The 1000 readable ImageNet-1k class names, in the order of the sorted synset folders."""
    return list(_imagenet_classes())


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


def _checkpoint_spec(ck: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path,
                     model_name: str | None) -> ModelSpec:
    """The record of a training checkpoint, checked against its weights and the caller's model name."""
    try:
        spec = read_spec(ck, classifier_rows(state), encoded=False)
        if spec is not None:
            spec.check_tensors(state)
    except Invalid as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    if spec is None:
        raise CheckpointError(f"checkpoint {path} does not record its model; is it a checkpoint of "
                              "`splitattn train`?")
    if model_name is not None and resolve_name(model_name) != spec.model_name:
        raise InputError(f"checkpoint {path} holds a {spec.model_name}, not a {resolve_name(model_name)}; "
                         "drop --model (the checkpoint names its model)")
    return spec


def _classification_checkpoint(path: Path, ema: bool, model_name: str | None = None,
                               ) -> tuple[nn.Module, ModelSpec, dict[str, str]]:
    """``(model, its record, export metadata)`` of the (EMA) weights of a ``splitattn train`` checkpoint."""
    ck = load_checkpoint(path)
    check_format(ck, path)
    task = ck.get("task", CLASSIFICATION)
    if not isinstance(task, str) or task != CLASSIFICATION:
        commands = {DETECTION: "detect", SEGMENTATION: "segment"}
        command = commands.get(task) if isinstance(task, str) else None
        how = (f"evaluate it with `splitattn {command} eval --config RECIPE --checkpoint {path}`" if command
               else "it is not a checkpoint of `splitattn train`")
        raise CheckpointError(f"checkpoint {path} is a {str(task)[:40]} checkpoint, not a classification "
                              f"one; {how}")
    if ema and ck.get("model_ema") is None:
        raise CheckpointError(f"checkpoint {path} has no EMA weights (the run did not use --ema); drop --ema")
    key = "model_ema" if ema else "model"
    require_entries(ck, (key,), path)
    try:
        state = state_dict_of(ck[key])
    except Invalid as e:
        raise CheckpointError(f"checkpoint {path} entry {key!r}: {e}") from None
    spec = _checkpoint_spec(ck, state, path, model_name)
    model = build_model(spec)
    _load_strict(model, state, f"the weights in checkpoint {path} do not fit model {spec.model_name!r}")
    counters = {k: str(ck[k]) for k in ("epoch", "step") if type(ck.get(k)) is int}
    return model, spec, {**counters, "ema": str(ema).lower()}


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
    if problem := file_problem(path):
        raise MissingFileError(f"weights file {path} {problem}")
    if path.suffix == CKPT_SUFFIX:
        model, _, _ = _classification_checkpoint(path, ema, model_name)
        return model.eval(), _class_names(model)
    if ema:
        raise InputError(f"--ema selects the EMA weights of a training checkpoint; {path} is a weights "
                         "file (export-weights --ema writes the EMA weights into it)")
    weights = read_weights(path)
    if weights.spec is None and model_name is None:
        raise WeightsError(f"weights file {path} does not record its model; pass the model name "
                           "(--model NAME)")
    model = model_from_weights(weights, model_name or weights.spec.model_name)
    return model.eval(), _class_names(model)


def _class_names(model: nn.Module) -> list[str]:
    """The model's label names, else ImageNet's for 1000 classes, else ``class_<i>``."""
    n = model.num_classes
    classes = model.pretrained_cfg.get("label_names")
    if not isinstance(classes, list) or len(classes) != n:
        classes = imagenet_classes() if n == 1000 else [f"class_{i}" for i in range(n)]
    return list(classes)


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
    model, spec, meta = _classification_checkpoint(src, ema)
    return save_weights(model, dst, metadata=meta, spec=spec)


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
