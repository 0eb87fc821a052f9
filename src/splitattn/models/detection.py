"""``create_detection_model``: Faster / Cascade / Mask / Cascade Mask R-CNN + FPN on a ResNeSt backbone.

All four are torchvision :class:`~torchvision.models.detection.GeneralizedRCNN` models, so they take
and return torchvision's formats: ``model(images, targets)`` gives a loss dict in train mode and
``model(images)`` a list of ``{"boxes", "labels", "scores"[, "masks"]}`` in eval mode, boxes in the
input images' pixel coordinates. ``num_classes`` counts the background class, as in torchvision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from ..errors import ConfigError
from ..layers.norm import get_head_norm
from .backbone import ResNeStFPN, task_backbone
from .cascade import CASCADE_IOUS, CASCADE_WEIGHTS, AgnosticBoxPredictor, CascadeRoIHeads

DETECTION_MODELS = ("faster_rcnn_fpn", "cascade_rcnn_fpn", "mask_rcnn_fpn", "cascade_mask_rcnn_fpn")
BOX_HEADS = ("2fc", "4conv1fc")
_LEVELS = ["0", "1", "2", "3"]


def list_detection_models() -> list[str]:
    return list(DETECTION_MODELS)


def make_box_head(
    kind: str,
    in_channels: int = 256,
    resolution: int = 7,
    representation: int = 1024,
    norm: str | None = None,
) -> nn.Module:
    """Box head on pooled RoIs: ``"2fc"`` (torchvision's TwoMLPHead) or ``"4conv1fc"`` (the paper's).

    Shape:
        ``(N, in_channels, resolution, resolution) -> (N, representation)``.

    Raises:
        ConfigError: for an unknown ``kind`` or ``norm``.
    """
    _check_box_head(kind)
    if kind == "2fc":
        return TwoMLPHead(in_channels * resolution**2, representation)
    return FastRCNNConvFCHead(
        (in_channels, resolution, resolution),
        [in_channels] * 4,
        [representation],
        norm_layer=get_head_norm(norm),
    )


def _check_box_head(kind: str) -> None:
    if kind not in BOX_HEADS:
        raise ConfigError(f"unknown box_head {kind!r}; choose one of {BOX_HEADS}")


def _cascade_heads(
    model: nn.Module,
    first_head: nn.Module,
    make_head: Any,
    representation: int,
    num_classes: int,
    ious: Sequence[float],
    weights: Sequence[Sequence[float]],
) -> CascadeRoIHeads:
    """Cascade RoI heads replacing ``model.roi_heads``, keeping its sampler, post-processing and masks."""
    old = model.roi_heads
    heads = [first_head] + [make_head() for _ in ious[1:]]
    return CascadeRoIHeads(
        old.box_roi_pool,
        heads,
        [AgnosticBoxPredictor(representation, num_classes) for _ in heads],
        stage_ious=ious,
        stage_weights=weights,
        stage_loss_weights=(1.0,) * len(heads),
        batch_size_per_image=old.fg_bg_sampler.batch_size_per_image,
        positive_fraction=old.fg_bg_sampler.positive_fraction,
        score_thresh=old.score_thresh,
        nms_thresh=old.nms_thresh,
        detections_per_img=old.detections_per_img,
        mask_roi_pool=old.mask_roi_pool,
        mask_head=old.mask_head,
        mask_predictor=old.mask_predictor,
    )


def create_detection_model(
    name: str,
    backbone: str = "resnest50",
    num_classes: int = 91,
    pretrained_backbone: bool | str | os.PathLike | None = None,
    backbone_norm: str = "frozenbn",
    freeze_at: int = 2,
    fpn_norm: str | None = None,
    box_head: str = "2fc",
    head_norm: str | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    cascade_ious: Sequence[float] = CASCADE_IOUS,
    cascade_weights: Sequence[Sequence[float]] = CASCADE_WEIGHTS,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a two-stage detector with a ResNeSt-FPN backbone.

    Args:
        name: ``"faster_rcnn_fpn"``, ``"cascade_rcnn_fpn"``, ``"mask_rcnn_fpn"`` or
            ``"cascade_mask_rcnn_fpn"``.
        backbone: any zoo model name (``"resnest50"``, ``"resnest101"``, ``"resnest14d"``...).
        num_classes: object classes + 1 for the background (torchvision's convention; COCO = 91 or 81).
        pretrained_backbone: classification weights for the backbone: ``True`` (released), a URL or a path
            to an official, timm or splitattn checkpoint. ``None`` = random init.
        backbone_norm: "frozenbn" (default, fine-tuning), "syncbn" (the paper, with DDP), "batchnorm",
            "groupnorm".
        freeze_at: 0 trains all backbone stages, 1 freezes the stem, 2 the stem and res2 (default), ...
        fpn_norm, head_norm: None, "syncbn", "batchnorm" or "groupnorm" for the FPN / box and mask heads.
        box_head: "2fc" (torchvision) or "4conv1fc" (the paper's 4 conv + 1 fc head).
        min_size: short side(s) the model resizes images to; a tuple gives multi-scale training (one
            picked per batch) and its last value is used at test time, e.g. ``(640, 672, ..., 800)``.
        max_size: long-side cap.
        fpn_channels: FPN width (also the RoI heads' conv width).
        representation_size: box head output width.
        cascade_ious, cascade_weights: the cascade's per-stage IoU thresholds and BoxCoder weights.
        backbone_kwargs: extra ResNeSt arguments (``drop_block_rate``...).
        **kwargs: passed to torchvision's ``FasterRCNN`` / ``MaskRCNN`` (``rpn_*``, ``box_score_thresh``,
            ``box_detections_per_img``, ``box_batch_size_per_image``, ``image_mean``...).

    Returns:
        A :class:`~torchvision.models.detection.FasterRCNN` or ``MaskRCNN`` instance, with
        ``detection_name`` and ``num_classes`` attributes.

    Raises:
        ConfigError: naming the argument: unknown ``name``/``box_head``/norm, ``num_classes < 2``,
            ``freeze_at`` outside 0..5, mismatched ``cascade_ious``/``cascade_weights``.
    """
    # Arguments are checked before the backbone is built (or downloaded); modules are then created in
    # the same order as before the move to splitattn.models, so a seed gives the same initial weights.
    _check_box_head(box_head)
    fpn_norm_layer, mask_norm_layer = get_head_norm(fpn_norm), get_head_norm(head_norm)
    rep = representation_size

    def new_box_head() -> nn.Module:
        return make_box_head(box_head, fpn_channels, 7, rep, head_norm)

    body = task_backbone(
        "detection", name, DETECTION_MODELS, num_classes, backbone, backbone_kwargs,
        pretrained=pretrained_backbone, norm=backbone_norm, freeze_at=freeze_at,
    )
    fpn = ResNeStFPN(body, fpn_channels, norm_layer=fpn_norm_layer)
    head = new_box_head()
    common = dict(
        num_classes=None,
        box_roi_pool=MultiScaleRoIAlign(_LEVELS, output_size=7, sampling_ratio=2),
        box_head=head,
        box_predictor=FastRCNNPredictor(rep, num_classes),
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )
    if "mask" in name:
        mask_head = MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1, norm_layer=mask_norm_layer)
        mask_predictor = MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes)
        model: nn.Module = MaskRCNN(fpn, mask_head=mask_head, mask_predictor=mask_predictor, **common)
    else:
        model = FasterRCNN(fpn, **common)
    if name.startswith("cascade"):
        model.roi_heads = _cascade_heads(
            model, head, new_box_head, rep, num_classes, cascade_ious, cascade_weights
        )
    model.detection_name = name
    model.num_classes = num_classes
    return model


__all__ = [
    "BOX_HEADS",
    "DETECTION_MODELS",
    "create_detection_model",
    "list_detection_models",
    "make_box_head",
]
