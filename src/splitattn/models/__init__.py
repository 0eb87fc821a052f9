"""The ResNeSt family and its registry."""

from .registry import ModelCfg, get_model_cfg, get_model_class, list_models, register_model, resolve_name
from .resnest import ResNeSt, ResNeStBottleneck, set_drop_block_prob, set_grad_checkpointing

__all__ = [
    "ModelCfg",
    "ResNeSt",
    "ResNeStBottleneck",
    "get_model_cfg",
    "get_model_class",
    "list_models",
    "register_model",
    "resolve_name",
    "set_drop_block_prob",
    "set_grad_checkpointing",
]
