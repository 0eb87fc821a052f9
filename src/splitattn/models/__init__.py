"""The ResNeSt family (:mod:`.resnest`, its variants in :mod:`.resnest_cfgs`), the detection and
segmentation models built on it, and the model machinery in private modules: the registry
(:mod:`._registry`), the model record (:mod:`._spec`), the factory (:mod:`._factory`), weights files
(:mod:`._weights`), URL downloads (:mod:`._download`, :mod:`._urlopen`), the Hugging Face Hub and model
folders (:mod:`._hub`), feature extraction (:mod:`._features`), input checks (:mod:`._input`) and timm's
model contract (:mod:`._timm_api`)."""

from . import resnest_cfgs  # noqa: F401  (registers the variants)
from ._factory import build_model, create_model
from ._features import FeatureDictNet, FeatureListNet
from ._hub import save_pretrained
from ._pretrained import load_pretrained
from ._registry import (
    ModelCfg,
    get_model_cfg,
    get_model_class,
    get_pretrained_cfg,
    list_models,
    register_model,
    resolve_name,
)
from ._weights import save_weights
from .backbone import ResNeStBackbone, ResNeStFPN, ShapeSpec, build_resnest_backbone
from .cascade import AgnosticBoxPredictor, CascadeRoIHeads
from .detection import (
    BOX_HEADS,
    DETECTION_MODELS,
    create_detection_model,
    list_detection_models,
    make_box_head,
)
from .resnest import ResNeSt, ResNeStBottleneck, set_drop_block_prob, set_grad_checkpointing
from .segmentation import SEGMENTATION_MODELS, create_segmentation_model, segmentation_loss

__all__ = [
    "BOX_HEADS",
    "DETECTION_MODELS",
    "SEGMENTATION_MODELS",
    "AgnosticBoxPredictor",
    "CascadeRoIHeads",
    "FeatureDictNet",
    "FeatureListNet",
    "ModelCfg",
    "ResNeSt",
    "ResNeStBackbone",
    "ResNeStBottleneck",
    "ResNeStFPN",
    "ShapeSpec",
    "build_model",
    "build_resnest_backbone",
    "create_detection_model",
    "create_model",
    "create_segmentation_model",
    "get_model_cfg",
    "get_model_class",
    "get_pretrained_cfg",
    "list_detection_models",
    "list_models",
    "load_pretrained",
    "make_box_head",
    "register_model",
    "resolve_name",
    "save_pretrained",
    "save_weights",
    "segmentation_loss",
    "set_drop_block_prob",
    "set_grad_checkpointing",
]
