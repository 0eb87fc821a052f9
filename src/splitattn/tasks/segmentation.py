"""``create_segmentation_model``: DeepLabV3 (ASPP) on a dilated ResNeSt, with an auxiliary FCN head.

The model is torchvision's :class:`~torchvision.models.segmentation.DeepLabV3`: ``model(x)`` returns
``{"out": (B, num_classes, H, W)[, "aux": (B, num_classes, H, W)]}``, logits at the input resolution.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from .backbone import ResNeStBackbone, _norm_key, build_resnest_backbone, convert_norm

SEGMENTATION_MODELS = ("deeplabv3",)


class _OutAux(nn.Module):
    """Renames the backbone's ``res5`` / ``res4`` outputs to torchvision's ``out`` / ``aux``."""

    def __init__(self, body: ResNeStBackbone, aux: bool) -> None:
        super().__init__()
        self.body = body
        self.aux = aux

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        out = OrderedDict(out=feats["res5"])
        if self.aux:
            out["aux"] = feats["res4"]
        return out


def create_segmentation_model(
    name: str = "deeplabv3",
    backbone: str = "resnest50",
    num_classes: int = 150,
    output_stride: int = 8,
    aux_loss: bool = True,
    pretrained_backbone: bool | str | os.PathLike | None = None,
    norm: str = "batchnorm",
    freeze_at: int = 0,
    backbone_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """DeepLabV3 with a dilated ResNeSt backbone.

    Args:
        name: ``"deeplabv3"``.
        backbone: any zoo model name.
        num_classes: classes predicted (150 for ADE20K, 19 for Cityscapes).
        output_stride: 8 (the paper), 16 or 32; res4/res5 are dilated accordingly.
        aux_loss: add the FCN head on res4 (layer3), whose loss is weighted by the training loop.
        pretrained_backbone: classification weights (``True``, URL, or path), or ``None``.
        norm: "batchnorm", "syncbn" (the paper, with DDP), "groupnorm" or "frozenbn" for the backbone;
            the heads use the same norm except "frozenbn" (they then keep BatchNorm).
        freeze_at: backbone stages to freeze (see :class:`~splitattn.tasks.backbone.ResNeStBackbone`).
        backbone_kwargs: extra ResNeSt arguments.

    Returns:
        A torchvision ``DeepLabV3`` module.
    """
    if name not in SEGMENTATION_MODELS:
        raise ValueError(f"unknown segmentation model {name!r}; choose one of {SEGMENTATION_MODELS}")
    body = build_resnest_backbone(
        backbone,
        pretrained=pretrained_backbone,
        norm=norm,
        freeze_at=freeze_at,
        output_stride=output_stride,
        out_features=("res4", "res5"),
        **(backbone_kwargs or {}),
    )
    shapes = body.output_shape()
    head = DeepLabHead(shapes["res5"].channels, num_classes)
    aux = FCNHead(shapes["res4"].channels, num_classes) if aux_loss else None
    key = _norm_key(norm)
    if key in ("syncbn", "groupnorm"):
        head = convert_norm(head, key)
        aux = convert_norm(aux, key) if aux is not None else None
    model = DeepLabV3(_OutAux(body, aux_loss), head, aux)
    model.num_classes = num_classes
    return model


def segmentation_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.4, ignore_index: int = 255
) -> dict[str, torch.Tensor]:
    """Cross-entropy on ``out`` (and ``aux_weight`` x on ``aux``), ignoring ``ignore_index`` pixels.

    Args:
        outputs: the model's dict, logits ``(B, K, H, W)``.
        target: ``(B, H, W)`` int64 class ids.

    Returns:
        ``{"loss_seg": ..., ["loss_aux": ...]}``; sum them for the total loss.
    """
    losses = {"loss_seg": F.cross_entropy(outputs["out"], target, ignore_index=ignore_index)}
    if "aux" in outputs and aux_weight > 0:
        losses["loss_aux"] = aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
    return losses


__all__ = ["create_segmentation_model", "segmentation_loss", "SEGMENTATION_MODELS"]
