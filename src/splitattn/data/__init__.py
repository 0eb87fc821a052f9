"""Data pipeline: transforms and datasets."""

from .augment import PCALighting, create_mixup, create_train_transform
from .datasets import BadImageError, ImageFolderDataset, resolve_split_dirs, scan_image_folder
from .transforms import create_eval_transform, resolve_eval_cfg

__all__ = [
    "BadImageError",
    "ImageFolderDataset",
    "PCALighting",
    "create_eval_transform",
    "create_mixup",
    "create_train_transform",
    "resolve_eval_cfg",
    "resolve_split_dirs",
    "scan_image_folder",
]
