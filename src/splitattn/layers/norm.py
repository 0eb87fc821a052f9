"""Normalisation layer choice by name: BatchNorm2d, SyncBatchNorm, FrozenBatchNorm2d, GroupNorm."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

NormLayer = Callable[[int], nn.Module]


def group_norm(num_channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``num_channels`` and leaves
    at least 2 channels per group.

    ResNeSt widths (e.g. 80 channels in the 2s2x40d model) are not all multiples of 32, and the
    split-attention ``bn1`` normalises a 1x1 vector, where a group of one channel has nothing to
    normalise over (its output would be the bias alone).
    """
    groups = math.gcd(num_channels, max(1, min(max_groups, num_channels // 2)))
    return nn.GroupNorm(groups, num_channels)


def attention_norm_layer(norm: NormLayer) -> NormLayer:
    """The norm for split attention's pooled 1x1 vector given the network's norm: GroupNorm becomes a
    one-group GroupNorm (normalising across the vector), anything else is kept."""
    if norm is group_norm or (isinstance(norm, type) and issubclass(norm, nn.GroupNorm)):
        return lambda c: nn.GroupNorm(1, c)
    return norm


_NORMS: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
    "frozenbn": FrozenBatchNorm2d,
    "groupnorm": group_norm,
    "gn": group_norm,
}


def get_norm_layer(norm: str | NormLayer | None) -> NormLayer:
    """Return a callable ``(num_channels) -> nn.Module`` for a name or a callable.

    Args:
        norm: ``"batchnorm"``, ``"syncbn"``, ``"frozenbn"``, ``"groupnorm"`` (or ``"bn"``, ``"gn"``),
            a class such as ``nn.BatchNorm2d``, or any callable; ``None`` means BatchNorm2d.
    """
    if norm is None:
        return nn.BatchNorm2d
    if isinstance(norm, str):
        key = norm.lower().replace("_", "").replace("2d", "")
        if key not in _NORMS:
            raise ValueError(f"unknown norm layer {norm!r}; choose one of {sorted(set(_NORMS))}")
        return _NORMS[key]
    if callable(norm):
        return norm
    raise TypeError(f"norm_layer must be a name or a callable, got {type(norm).__name__}")


__all__ = ["get_norm_layer", "group_norm", "NormLayer", "FrozenBatchNorm2d"]
