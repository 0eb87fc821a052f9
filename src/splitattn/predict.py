"""Classification inference: load a model from a training checkpoint or a weights file, predict, export.

A training checkpoint (``.ckpt`` of ``splitattn train``) and a safetensors file written by
:func:`export_weights` carry the model name, its extra constructor arguments, the class names and the
eval preprocessing, so nothing else is needed to use them. Any other weights file (official ``.pth``,
timm weights) needs the model name and is taken to be ImageNet-1k.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CKPT_SUFFIX, load_checkpoint
from .data.imagefolder import load_rgb
from .data.preprocessing import apply_data_config, resolve_data_config
from .data.transforms import create_eval_transform
from .errors import CheckpointError, InputError, MissingFileError, WeightsError
from .factory import create_model
from .weights import read_state_dict, save_weights

WEIGHTS_SUFFIX = ".safetensors"


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    from importlib.resources import files

    return tuple(files("splitattn.data").joinpath("imagenet_classes.txt").read_text().splitlines())


def imagenet_classes() -> list[str]:
    """The 1000 readable ImageNet-1k class names, in the order of the sorted synset folders."""
    return list(_imagenet_classes())


def _entry(ck: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in ck or ck[key] is None:
        raise CheckpointError(f"checkpoint {path} has no {key!r} entry; is it a classification checkpoint "
                              "of `splitattn train`?")
    return ck[key]


def _model_kwargs(kwargs: Any, path: Path) -> dict[str, Any]:
    """The stored constructor arguments, refused when they could make ``create_model`` load weights."""
    if not isinstance(kwargs, Mapping):
        raise InputError(f"{path} stores model_kwargs as a {type(kwargs).__name__}, expected a mapping")
    if "pretrained" in kwargs:
        # A file must not be able to make loading it fetch or read other weights.
        raise InputError(f"{path} stores a 'pretrained' entry in its model_kwargs, which could load other "
                         "weights (or download them); remove it from the file's model_kwargs")
    return dict(kwargs)


def _classification_checkpoint(path: Path, ema: bool, model_name: str | None = None,
                               ) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """``(model with the eval preprocessing, class names, raw checkpoint)`` of a ``splitattn train`` run."""
    ck = load_checkpoint(path)
    task = ck.get("task", "classification")
    if task != "classification":
        raise CheckpointError(f"checkpoint {path} is a {task} checkpoint; `splitattn tasks` evaluates it")
    name = model_name or _entry(ck, "model_name", path)
    classes = [str(c) for c in _entry(ck, "classes", path)]
    model = create_model(name, num_classes=len(classes), **_model_kwargs(ck.get("model_kwargs") or {}, path))
    if ema and ck.get("model_ema") is None:
        raise CheckpointError(f"checkpoint {path} has no EMA weights (the run did not use --ema); drop --ema")
    state = _entry(ck, "model_ema" if ema else "model", path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in checkpoint {path} do not fit model {name!r} "
                              f"({str(e).splitlines()[0]})") from e
    if ck.get("eval_cfg"):
        apply_data_config(model, resolve_data_config(ck["eval_cfg"]))
    return model, classes, ck


def _json_meta(meta: Mapping[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: metadata entry {key!r} is not valid JSON ({e})") from e


def _weights_file(path: Path, model_name: str | None) -> tuple[nn.Module, list[str]]:
    sd, meta = read_state_dict(path)
    kwargs = _model_kwargs(_json_meta(meta, "model_kwargs", path) or {}, path)
    name = model_name or meta.get("model_name")
    if not name:
        raise InputError(f"{path} does not record its model; pass the model name (--model NAME)")
    classes = _json_meta(meta, "classes", path)
    fc = sd.get("fc.weight")
    num_classes = len(classes) if classes else (int(fc.shape[0]) if fc is not None else 1000)
    model = create_model(name, pretrained=path, num_classes=num_classes, **kwargs)
    if not classes:
        classes = imagenet_classes() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    eval_cfg = _json_meta(meta, "eval_cfg", path)
    if eval_cfg:
        apply_data_config(model, resolve_data_config(eval_cfg))
    return model, [str(c) for c in classes]


def load_for_inference(weights: str | os.PathLike, model_name: str | None = None, ema: bool = False,
                       ) -> tuple[nn.Module, list[str]]:
    """``(model in eval mode, class names)`` from a ``.ckpt`` of ``splitattn train`` or a weights file.

    Args:
        weights: a training checkpoint (``.ckpt``), a safetensors file of :func:`export_weights`, or an
            official / timm weights file (then ``model_name`` is needed).
        model_name: the registered model (default: the one recorded in the file).
        ema: the EMA weights of a training checkpoint.

    Returns:
        The model on CPU, its ``pretrained_cfg`` holding the eval preprocessing, and its class names.

    Raises:
        MissingFileError: ``weights`` does not exist.
        CheckpointError: the checkpoint lacks an entry (named) or its weights do not fit the model.
        InputError: the file records no model name and none was given, or its stored model arguments
            contain ``pretrained``.
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
        CheckpointError: the checkpoint lacks an entry (named) or is not a classification checkpoint.
    """
    src, dst = Path(checkpoint), Path(out)
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise InputError(f"export-weights would overwrite its input {src}; give another output file")
    if dst.suffix != WEIGHTS_SUFFIX:
        raise InputError(f"export-weights writes safetensors; name the output {dst.stem}{WEIGHTS_SUFFIX} "
                         f"instead of {dst.name}" + (" (a .ckpt name is for training checkpoints)"
                                                     if dst.suffix == CKPT_SUFFIX else ""))
    model, classes, ck = _classification_checkpoint(src, ema)
    meta = {"model_name": ck["model_name"], "model_kwargs": ck.get("model_kwargs") or {}, "classes": classes,
            "eval_cfg": resolve_data_config(model).to_dict(), "epoch": ck.get("epoch"),
            "step": ck.get("step"), "ema": ema}
    return save_weights(model, dst, metadata=meta)


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
