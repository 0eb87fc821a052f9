"""ResNeSt as a detection / segmentation backbone: named multi-scale features, freezing, norm choice, FPN.

The backbone is built with BatchNorm, loaded from any classification checkpoint that
:func:`splitattn.create_model` reads (official ``.pth``, timm, splitattn safetensors), and only then
converted to the requested norm, so running statistics survive into FrozenBatchNorm2d and SyncBatchNorm.
"""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import ConfigError
from ..layers.norm import convert_norm, norm_name
from ._factory import create_model
from ._features import FeatureDictNet

log = logging.getLogger("splitattn")

STAGES = ("stem", "res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride of one feature map, as detectron2's ``ShapeSpec``."""

    channels: int
    stride: int


def _check_out_features(out_features: Sequence[str]) -> tuple[str, ...]:
    names = (out_features,) if isinstance(out_features, str) else tuple(out_features)
    bad = [f for f in names if f not in STAGES]
    if not names or bad:
        raise ConfigError(f"out_features must be a non-empty subset of {STAGES}, got {names}")
    return names


def _check_freeze_at(freeze_at: int) -> None:
    if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ConfigError(
            f"freeze_at must be an integer within 0..5 (0 = train all, 1 = freeze the stem, "
            f"2 = stem + res2, ... 5 = freeze all), got {freeze_at!r}"
        )


class ResNeStBackbone(FeatureDictNet):
    """A :class:`FeatureDictNet` with detectron2's stage names (``stem``, ``res2``..``res5``), its
    ``output_shape()`` and ``freeze_at``.

    Args:
        model: a :class:`~splitattn.models.ResNeSt` (any zoo model, any ``output_stride``).
        out_features: subset of ``("stem", "res2", "res3", "res4", "res5")``.
        freeze_at: detectron2's convention: 0 freezes nothing, 1 the stem, 2 the stem and res2, ... 5
            everything. Frozen parts stop taking gradients and their BatchNorms become FrozenBatchNorm2d.

    Shape:
        ``(B, 3, H, W) -> {name: (B, output_shape()[name].channels, H / stride, W / stride)}``.
    """

    def __init__(
        self,
        model: nn.Module,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
    ) -> None:
        out_features = _check_out_features(out_features)
        _check_freeze_at(freeze_at)
        super().__init__(model, [STAGES.index(f) for f in out_features], feature_names=STAGES)
        self.out_features = tuple(self.feature_names)
        self.freeze_at = 0
        self.freeze(freeze_at)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output, detectron2 style (e.g. ``res5 -> ShapeSpec(2048, 32)``)."""
        return {
            f: ShapeSpec(info["num_chs"], info["reduction"])
            for f, info in zip(self.out_features, self.feature_info.get_dicts(), strict=True)
        }

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and ``layer1..layer{freeze_at-1}`` (res2..).

        Frozen parts' BatchNorms become FrozenBatchNorm2d (statistics kept) and their parameters stop
        taking gradients. Freezing is not undone by a smaller ``freeze_at``.
        """
        _check_freeze_at(freeze_at)
        parts = [("conv1", "bn1")] + [(f"layer{i}",) for i in range(1, 5)]
        for names in parts[:freeze_at]:
            for name in names:
                mod = convert_norm(getattr(self, name), "frozenbn")
                setattr(self, name, mod)
                mod.requires_grad_(False)
        self.freeze_at = max(self.freeze_at, freeze_at)


def build_resnest_backbone(
    name: str = "resnest50",
    pretrained: bool | str | os.PathLike | None = None,
    norm: str = "frozenbn",
    freeze_at: int = 2,
    output_stride: int = 32,
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    **model_kwargs: Any,
) -> ResNeStBackbone:
    """A ResNeSt backbone from the zoo, optionally initialised from a classification checkpoint.

    Args:
        name: any registered model (``"resnest50"``, ``"resnest14d"``...).
        pretrained: ``None``/``False``, ``True`` (released weights), a URL or a path (official ``.pth``,
            timm ``.pth``/``.safetensors``, splitattn safetensors).
        norm: "frozenbn" (fine-tuning, the default), "syncbn" (distributed), "batchnorm", "groupnorm"
            (any name of :mod:`splitattn.layers.norm`'s table).
        freeze_at: see :class:`ResNeStBackbone`.
        output_stride: 32, 16 or 8 (dilated res4/res5 for dense prediction).
        out_features: stage outputs to return.
        **model_kwargs: other ResNeSt arguments (``drop_block_rate``...); ``norm_layer`` is not accepted
            (use ``norm``).

    Raises:
        ConfigError: for an unknown norm or stage name, ``freeze_at`` outside 0..5, or ``norm_layer``.
    """
    if "norm_layer" in model_kwargs:
        raise ConfigError(
            "pass the backbone norm as norm='frozenbn'|'syncbn'|'batchnorm'|'groupnorm', not norm_layer"
        )
    key = norm_name(norm)
    out_features = _check_out_features(out_features)
    _check_freeze_at(freeze_at)
    model = create_model(
        name,
        pretrained=pretrained if pretrained else False,
        num_classes=0,
        output_stride=output_stride,
        norm_layer="batchnorm",
        **model_kwargs,
    )
    if not pretrained and key == "frozenbn":
        log.warning(
            "backbone %s has random weights and FrozenBatchNorm (identity statistics): pass "
            "pretrained= a classification checkpoint, or use norm='batchnorm'/'groupnorm'",
            name,
        )
    return ResNeStBackbone(convert_norm(model, key), out_features=out_features, freeze_at=freeze_at)


def task_backbone(
    task: str,
    name: str,
    choices: Sequence[str],
    num_classes: int,
    backbone: str,
    backbone_kwargs: dict[str, Any] | None,
    **backbone_args: Any,
) -> ResNeStBackbone:
    """Check a detection / segmentation model's name and class count, then build its backbone.

    Args:
        task: "detection" or "segmentation", for the messages.
        name: the requested model, one of ``choices``.
        num_classes: must be >= 2.
        backbone: zoo model name.
        backbone_kwargs: the user's extra ResNeSt arguments.
        **backbone_args: :func:`build_resnest_backbone` arguments set by the task (``pretrained``,
            ``norm``, ``freeze_at``...); ``backbone_kwargs`` may not repeat them.
    """
    if name not in choices:
        raise ConfigError(f"unknown {task} model {name!r}; choose one of {tuple(choices)}")
    if num_classes < 2:
        what = "counts the background class and " if task == "detection" else ""
        raise ConfigError(f"num_classes {what}must be >= 2, got {num_classes}")
    extra = dict(backbone_kwargs or {})
    clash = sorted(set(extra) & set(backbone_args))
    if clash:
        raise ConfigError(f"backbone_kwargs may not set {clash}: they are arguments of the {task} model")
    return build_resnest_backbone(backbone, **backbone_args, **extra)


class ResNeStFPN(nn.Module):
    """A ResNeSt backbone + torchvision's :class:`FeaturePyramidNetwork` (P2-P5 plus a max-pooled P6).

    The output keys ``"0"``..``"3"`` and ``"pool"`` are what torchvision's RPN and
    :class:`~torchvision.ops.MultiScaleRoIAlign` expect.

    Shape:
        ``(B, 3, H, W) -> {"0": (B, C, H/4, W/4), "1": H/8, "2": H/16, "3": H/32, "pool": H/64}``,
        ``C = out_channels``.
    """

    # Not torchvision's BackboneWithFPN: it wraps the body in its own IntermediateLayerGetter, a second
    # feature extractor; here the FeatureDictNet's outputs feed the same FeaturePyramidNetwork.
    def __init__(
        self,
        body: ResNeStBackbone,
        out_channels: int = 256,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.in_features = [f for f in body.out_features if f != "stem"]
        if not self.in_features:
            raise ConfigError(
                f"the FPN needs at least one of res2..res5 in out_features, got {body.out_features}"
            )
        shapes = body.output_shape()
        self.fpn = FeaturePyramidNetwork(
            [shapes[f].channels for f in self.in_features],
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels
        self._strides = [shapes[f].stride for f in self.in_features]

    def output_shape(self) -> dict[str, ShapeSpec]:
        """FPN level name -> (channels, stride)."""
        out = {str(i): ShapeSpec(self.out_channels, s) for i, s in enumerate(self._strides)}
        out["pool"] = ShapeSpec(self.out_channels, self._strides[-1] * 2)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[f]) for i, f in enumerate(self.in_features)))


__all__ = [
    "STAGES",
    "ResNeStBackbone",
    "ResNeStFPN",
    "ShapeSpec",
    "build_resnest_backbone",
    "task_backbone",
]
