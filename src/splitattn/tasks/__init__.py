"""ResNeSt beyond classification: Faster / Cascade / Mask R-CNN + FPN and DeepLabV3 on torchvision."""

from .backbone import ResNeStBackbone, ResNeStFPN, ShapeSpec, build_resnest_backbone
from .cascade import CascadeRoIHeads
from .datasets import ADE20KSegmentation, CityscapesSegmentation, CocoDetection
from .detection import DETECTION_MODELS, create_detection_model, list_detection_models
from .metrics import SegmentationMetric, coco_evaluate, to_coco_results
from .segmentation import SEGMENTATION_MODELS, create_segmentation_model, segmentation_loss

__all__ = [
    "ADE20KSegmentation",
    "CascadeRoIHeads",
    "CityscapesSegmentation",
    "CocoDetection",
    "DETECTION_MODELS",
    "ResNeStBackbone",
    "ResNeStFPN",
    "SEGMENTATION_MODELS",
    "SegmentationMetric",
    "ShapeSpec",
    "build_resnest_backbone",
    "coco_evaluate",
    "create_detection_model",
    "create_segmentation_model",
    "list_detection_models",
    "segmentation_loss",
    "to_coco_results",
]
