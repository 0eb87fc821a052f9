"""The ResNeSt family, its registry, the feature extractor, and the detection / segmentation models."""

from __future__ import annotations

import importlib
from typing import Any

from . import resnest_cfgs  # noqa: F401  (registers the variants)
from .features import FeatureDictNet, FeatureListNet
from .registry import (
    ModelCfg,
    get_model_cfg,
    get_model_class,
    get_pretrained_cfg,
    list_models,
    register_model,
    resolve_name,
)
from .resnest import ResNeSt, ResNeStBottleneck, set_drop_block_prob, set_grad_checkpointing

# Loaded on first use: the dense-task modules build through splitattn.factory, which imports this package.
_LAZY = {
    "ResNeStBackbone": "backbone",
    "ResNeStFPN": "backbone",
    "ShapeSpec": "backbone",
    "build_resnest_backbone": "backbone",
    "AgnosticBoxPredictor": "cascade",
    "CascadeRoIHeads": "cascade",
    "BOX_HEADS": "detection",
    "DETECTION_MODELS": "detection",
    "create_detection_model": "detection",
    "list_detection_models": "detection",
    "make_box_head": "detection",
    "SEGMENTATION_MODELS": "segmentation",
    "create_segmentation_model": "segmentation",
    "segmentation_loss": "segmentation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FeatureDictNet",
    "FeatureListNet",
    "ModelCfg",
    "ResNeSt",
    "ResNeStBottleneck",
    "get_model_cfg",
    "get_model_class",
    "get_pretrained_cfg",
    "list_models",
    "register_model",
    "resolve_name",
    "set_drop_block_prob",
    "set_grad_checkpointing",
    *_LAZY,
]
