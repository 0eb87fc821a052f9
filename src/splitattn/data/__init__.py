"""The data package: eval preprocessing config, transforms and datasets for classification (ImageFolder),
COCO detection and ADE20K / Cityscapes segmentation, built on torchvision.

Nothing here imports :mod:`splitattn.models` at import time (the model registry imports
:mod:`splitattn.data.constants`).
"""

from ..errors import BadImageError
from .augment import PCALighting, create_mixup, create_train_transform
from .coco import CocoDetection
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .imagefolder import (
    IMG_EXTENSIONS,
    ImageFolderDataset,
    check_same_classes,
    collate_skip_bad,
    load_rgb,
    resolve_split_dirs,
    scan_image_folder,
)
from .preprocessing import DataConfig, apply_data_config, resolve_data_config
from .seeded import SeededDataset, sample_seed
from .semantic import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    ADE20KSegmentation,
    CityscapesSegmentation,
)
from .synthetic import make_shapes_ade, make_shapes_coco, make_synthetic_imagefolder
from .transforms import (
    DetectionTransform,
    SegmentationTransform,
    create_eval_transform,
    detection_collate,
    segmentation_collate,
)

__all__ = [
    "ADE20KSegmentation",
    "BadImageError",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN",
    "CityscapesSegmentation",
    "CocoDetection",
    "DataConfig",
    "DetectionTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "PCALighting",
    "SeededDataset",
    "SegmentationTransform",
    "apply_data_config",
    "check_same_classes",
    "collate_skip_bad",
    "create_eval_transform",
    "create_mixup",
    "create_train_transform",
    "detection_collate",
    "load_rgb",
    "make_shapes_ade",
    "make_shapes_coco",
    "make_synthetic_imagefolder",
    "resolve_data_config",
    "resolve_split_dirs",
    "sample_seed",
    "scan_image_folder",
    "segmentation_collate",
]
