"""ResNeSt as a detection / segmentation backbone: multi-scale features, freezing, norm choice, FPN.

The backbone is built with BatchNorm, loaded from any classification checkpoint that
:func:`splitattn.create_model` reads (official ``.pth``, timm, splitattn safetensors), and only then
converted to the requested norm, so running statistics survive into FrozenBatchNorm2d and SyncBatchNorm.
"""

from __future__ import annotations

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
from torchvision.ops.misc import FrozenBatchNorm2d

from ..factory import create_model
from ..layers import SplitAttn
from ..layers.norm import NormLayer, attention_norm_layer, group_norm

log = logging.getLogger("splitattn")

STAGES = ("stem", "res2", "res3", "res4", "res5")
NORMS = ("batchnorm", "frozenbn", "syncbn", "groupnorm")


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride of one feature map, as detectron2's ``ShapeSpec``."""

    channels: int
    stride: int


def _norm_key(norm: str) -> str:
    key = norm.lower().replace("_", "").replace("2d", "")
    key = {"bn": "batchnorm", "gn": "groupnorm", "frozen": "frozenbn", "sync": "syncbn"}.get(key, key)
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    return key


def get_head_norm(norm: str | None) -> Callable[[int], nn.Module] | None:
    """Norm layer for FPN and RoI heads: ``None`` (no norm), "batchnorm", "syncbn" or "groupnorm"."""
    if norm is None or str(norm).lower() in ("", "none"):
        return None
    key = _norm_key(norm)
    if key == "frozenbn":
        raise ValueError(
            "frozenbn is for a pretrained backbone; heads are trained from scratch: use "
            "'syncbn', 'batchnorm', 'groupnorm' or None"
        )
    return {"batchnorm": nn.BatchNorm2d, "syncbn": nn.SyncBatchNorm, "groupnorm": group_norm}[key]


def _frozen_from(bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
    out = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    if bn.affine:
        out.weight.copy_(bn.weight.detach())
        out.bias.copy_(bn.bias.detach())
    if bn.track_running_stats:
        out.running_mean.copy_(bn.running_mean)
        out.running_var.copy_(bn.running_var)
    return out


def _gn_from(bn: nn.modules.batchnorm._BatchNorm, make: NormLayer = group_norm) -> nn.GroupNorm:
    out = make(bn.num_features)
    if bn.affine:
        with torch.no_grad():
            out.weight.copy_(bn.weight)
            out.bias.copy_(bn.bias)
    return out


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm in ``module`` by the requested norm (in place where possible).

    Args:
        module: a module holding ``nn.BatchNorm2d`` layers.
        norm: "batchnorm" (no change), "frozenbn" (statistics and affine kept), "syncbn",
            "groupnorm" (affine kept; 32 groups or the largest divisor of the width; the norm on the
            split-attention's pooled 1x1 vector gets one group, as with
            ``create_model(norm_layer="groupnorm")``: 1-2 values per group would normalise to constants).

    Returns:
        The converted module (a new object when ``module`` itself is a BatchNorm).
    """
    key = _norm_key(norm)
    if key == "batchnorm":
        return module
    if key == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    make = _frozen_from if key == "frozenbn" else _gn_from
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return make(module)
    if key == "groupnorm" and isinstance(module, SplitAttn) and isinstance(module.bn1, nn.BatchNorm2d):
        module.bn1 = _gn_from(module.bn1, attention_norm_layer(group_norm))
    for name, child in module.named_children():
        new = convert_norm(child, key)
        if new is not child:
            setattr(module, name, new)
    return module


class ResNeStBackbone(nn.Module):
    """The stem and stages of a ResNeSt, returning the named stage outputs ``res2``..``res5``.

    Submodule names are the classifier's (``conv1``, ``bn1``, ``layer1``...), so classification state
    dicts (without ``fc``) load directly.

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
        super().__init__()
        out_features = tuple(out_features)
        bad = [f for f in out_features if f not in STAGES]
        if not out_features or bad:
            raise ValueError(f"out_features must be a non-empty subset of {STAGES}, got {out_features}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(
                f"freeze_at must be within 0..5 (0 = train all, 5 = freeze all), got {freeze_at}"
            )
        self.out_features = tuple(f for f in STAGES if f in out_features)
        self.in_chans: int = model.in_chans
        self.conv1, self.bn1, self.act1, self.maxpool = model.conv1, model.bn1, model.act1, model.maxpool
        self._last = max(STAGES.index(f) for f in self.out_features)
        for i in range(1, self._last + 1):
            self.add_module(f"layer{i}", getattr(model, f"layer{i}"))
        self._shapes = {
            STAGES[i]: ShapeSpec(info["num_chs"], info["reduction"])
            for i, info in enumerate(model.feature_info)
        }
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)
        self.freeze_at = freeze_at
        self.freeze(freeze_at)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output, detectron2 style (e.g. ``res5 -> ShapeSpec(2048, 32)``)."""
        return {f: self._shapes[f] for f in self.out_features}

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and ``layer1..layer{freeze_at-1}``."""
        parts: list[list[str]] = [["conv1", "bn1"]] + [[f"layer{i}"] for i in range(1, 5)]
        for names in parts[:freeze_at]:
            for name in names:
                if not hasattr(self, name):
                    continue
                mod = convert_norm(getattr(self, name), "frozenbn")
                setattr(self, name, mod)
                for p in mod.parameters():
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        outs: dict[str, torch.Tensor] = OrderedDict()
        x = self.act1(self.bn1(self.conv1(x)))
        if "stem" in self.out_features:
            outs["stem"] = x
        x = self.maxpool(x)
        for i in range(1, self._last + 1):
            x = getattr(self, f"layer{i}")(x)
            if f"res{i + 1}" in self.out_features:
                outs[f"res{i + 1}"] = x
        return outs


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
        norm: "frozenbn" (fine-tuning, the default), "syncbn" (distributed), "batchnorm", "groupnorm".
        freeze_at: see :class:`ResNeStBackbone`.
        output_stride: 32, 16 or 8 (dilated res4/res5 for dense prediction).
        out_features: stage outputs to return.
        **model_kwargs: other ResNeSt arguments (``drop_block_rate``...); ``norm_layer`` is not accepted
            (use ``norm``).
    """
    if "norm_layer" in model_kwargs:
        raise ValueError(
            "pass the backbone norm as norm='frozenbn'|'syncbn'|'batchnorm'|'groupnorm', not norm_layer"
        )
    model = create_model(
        name,
        pretrained=pretrained if pretrained else False,
        num_classes=0,
        output_stride=output_stride,
        norm_layer="batchnorm",
        **model_kwargs,
    )
    if not pretrained and _norm_key(norm) == "frozenbn":
        log.warning(
            "backbone %s has random weights and FrozenBatchNorm (identity statistics): pass "
            "pretrained= a classification checkpoint, or use norm='batchnorm'/'groupnorm'",
            name,
        )
    model = convert_norm(model, norm)
    return ResNeStBackbone(model, out_features=out_features, freeze_at=freeze_at)


class ResNeStFPN(nn.Module):
    """ResNeSt body + torchvision's :class:`FeaturePyramidNetwork` (P2-P5 plus a max-pooled P6).

    The output keys ``"0"``..``"3"`` and ``"pool"`` are what torchvision's RPN and
    :class:`~torchvision.ops.MultiScaleRoIAlign` expect.

    Shape:
        ``(B, 3, H, W) -> {"0": (B, C, H/4, W/4), "1": H/8, "2": H/16, "3": H/32, "pool": H/64}``,
        ``C = out_channels``.
    """

    def __init__(
        self,
        body: ResNeStBackbone,
        out_channels: int = 256,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.in_features = [f for f in body.out_features if f != "stem"]
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
    "ShapeSpec",
    "ResNeStBackbone",
    "ResNeStFPN",
    "build_resnest_backbone",
    "convert_norm",
    "get_head_norm",
]
