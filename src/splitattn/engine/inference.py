"""Load a model for evaluation/prediction from a training checkpoint or a weights file."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import create_model
from ..checkpoint import load_checkpoint
from ..models.registry import ModelCfg, get_model_cfg
from ..weights import read_state_dict, save_weights


def imagenet_classes() -> list[str]:
    from importlib.resources import files

    return files("splitattn.data").joinpath("imagenet_classes.txt").read_text().splitlines()


def _with_eval(cfg: ModelCfg, ev: dict[str, Any] | None) -> ModelCfg:
    if not ev:
        return cfg
    s = int(ev["img_size"])
    return dataclasses.replace(cfg, input_size=(3, s, s), crop_pct=float(ev["crop_pct"]),
                               interpolation=ev["interpolation"], mean=tuple(ev["mean"]),
                               std=tuple(ev["std"]))


def checkpoint_state(ck: dict[str, Any], path: Path, ema: bool) -> dict[str, torch.Tensor]:
    if ema:
        if ck.get("model_ema") is None:
            raise ValueError(f"checkpoint {path} has no EMA weights (the run did not use --ema); drop --ema")
        return ck["model_ema"]
    return ck["model"]


def load_for_inference(weights: str | os.PathLike, model_name: str | None = None, ema: bool = False,
                       ) -> tuple[nn.Module, list[str]]:
    """``(model in eval mode, class names)`` from a ``.ckpt`` of ``splitattn train`` or a weights file.

    A training checkpoint or a safetensors file exported by ``splitattn export-weights`` carries the
    model name, its extra arguments, the class names and the eval preprocessing; any other file
    (official ``.pth``, timm weights) needs ``model_name`` and is assumed to be ImageNet-1k.

    Returns:
        The model, with ``pretrained_cfg`` holding the eval preprocessing, and its class names.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".ckpt":
        ck = load_checkpoint(path)
        name = model_name or ck.get("model_name")
        classes = list(ck["classes"])
        model = create_model(name, num_classes=len(classes), **ck.get("model_kwargs", {}))
        model.load_state_dict(checkpoint_state(ck, path, ema))
        model.pretrained_cfg = _with_eval(get_model_cfg(name), ck.get("eval_cfg"))
        return model.eval(), classes
    sd, meta = read_state_dict(path)
    kwargs = json.loads(meta["model_kwargs"]) if "model_kwargs" in meta else {}
    name = model_name or meta.get("model_name")
    if not name:
        raise ValueError(f"{path} does not record its model; pass --model NAME")
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    fc = sd.get("fc.weight")
    num_classes = len(classes) if classes else (int(fc.shape[0]) if fc is not None else 1000)
    model = create_model(name, pretrained=path, num_classes=num_classes, **kwargs)
    if classes is None:
        classes = imagenet_classes() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    ev = json.loads(meta["eval_cfg"]) if "eval_cfg" in meta else None
    model.pretrained_cfg = _with_eval(get_model_cfg(name), ev)
    return model.eval(), classes


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, ema: bool = False) -> Path:
    """Write the (EMA) model of a training checkpoint as safetensors that ``create_model`` loads.

    The metadata records the model name, ``model_kwargs``, class names and eval preprocessing, so
    ``splitattn eval``/``predict`` need only the file.
    """
    path = Path(checkpoint)
    ck = load_checkpoint(path)
    if "model" not in ck or "classes" not in ck:
        raise ValueError(f"{path} is not a checkpoint of `splitattn train` (no 'model'/'classes' entries)")
    name = ck["model_name"]
    model = create_model(name, num_classes=len(ck["classes"]), **ck.get("model_kwargs", {}))
    model.load_state_dict(checkpoint_state(ck, path, ema))
    model.pretrained_cfg = _with_eval(get_model_cfg(name), ck.get("eval_cfg"))
    meta = {"model_name": name, "model_kwargs": ck.get("model_kwargs", {}), "classes": ck["classes"],
            "eval_cfg": ck.get("eval_cfg") or {}, "epoch": ck.get("epoch"), "step": ck.get("step"),
            "ema": ema}
    return save_weights(model, out, metadata=meta)


__all__ = ["export_weights", "imagenet_classes", "load_for_inference"]
