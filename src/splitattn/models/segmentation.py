"""``create_segmentation_model``: DeepLabV3 (ASPP) on a dilated ResNeSt, with an auxiliary FCN head.

The model is torchvision's :class:`~torchvision.models.segmentation.DeepLabV3`: ``model(x)`` returns
``{"out": (B, num_classes, H, W)[, "aux": (B, num_classes, H, W)]}``, logits at the input resolution.
"""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
import os
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from ..errors import InputError
from ..layers.norm import convert_norm, norm_name
from .backbone import ResNeStBackbone, task_backbone

SEGMENTATION_MODELS = ("deeplabv3",)


class _OutAux(nn.Module):
    """Renames the backbone's ``res5`` / ``res4`` outputs to torchvision's ``out`` / ``aux``."""

    def __init__(self, body: ResNeStBackbone, aux: bool) -> None:
        super().__init__()
        self.body = body
        self.aux = aux

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        out: dict[str, torch.Tensor] = OrderedDict()
        out["out"] = feats["res5"]
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
        freeze_at: backbone stages to freeze (see :class:`~splitattn.models.backbone.ResNeStBackbone`).
        backbone_kwargs: extra ResNeSt arguments.

    Returns:
        A torchvision ``DeepLabV3`` module with a ``num_classes`` attribute.

    Raises:
        ConfigError: naming the argument: unknown ``name``/``norm``, ``num_classes < 2``, ``output_stride``
            not 8, 16 or 32, ``freeze_at`` outside 0..5.
    """
    body = task_backbone(
        "segmentation", name, SEGMENTATION_MODELS, num_classes, backbone, backbone_kwargs,
        pretrained=pretrained_backbone, norm=norm, freeze_at=freeze_at, output_stride=output_stride,
        out_features=("res4", "res5"),
    )
    shapes = body.output_shape()
    head = DeepLabHead(shapes["res5"].channels, num_classes)
    aux = FCNHead(shapes["res4"].channels, num_classes) if aux_loss else None
    key = norm_name(norm)
    if key != "frozenbn":  # heads are trained from scratch: frozen statistics would not fit them
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

    Raises:
        InputError: when ``target`` is not an integer ``(B, H, W)`` map matching the logits.
    """
    out = outputs["out"]
    if target.ndim != 3 or target.shape != (out.shape[0], *out.shape[2:]) or target.is_floating_point():
        raise InputError(
            f"target must be an integer (B, H, W) class map matching the logits {tuple(out.shape)}, got "
            f"{target.dtype} {tuple(target.shape)}"
        )
    losses = {"loss_seg": F.cross_entropy(outputs["out"], target, ignore_index=ignore_index)}
    if "aux" in outputs and aux_weight > 0:
        losses["loss_aux"] = aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
    return losses


__all__ = ["create_segmentation_model", "segmentation_loss", "SEGMENTATION_MODELS"]
