"""Data pipeline: transforms and datasets."""

from .transforms import create_eval_transform, resolve_eval_cfg

__all__ = ["create_eval_transform", "resolve_eval_cfg"]
