"""Normalisation layers by name: one table for the model's norm, the heads' norm and BatchNorm conversion.

Names: ``"batchnorm"`` (BatchNorm2d), ``"syncbn"`` (SyncBatchNorm), ``"frozenbn"`` (torchvision's
FrozenBatchNorm2d: fixed statistics and affine), ``"groupnorm"`` (:func:`group_norm`); also ``"bn"``,
``"gn"``, ``"frozen"``, ``"sync"`` and the class-like spellings (``"BatchNorm2d"``, ``"sync_batchnorm"``...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import ConfigError
from .split_attn import SplitAttn

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


# The one name -> norm table; every function below reads it through norm_name().
NORMS: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
    "frozenbn": FrozenBatchNorm2d,
    "groupnorm": group_norm,
}
_ALIASES = {
    "bn": "batchnorm",
    "gn": "groupnorm",
    "frozen": "frozenbn",
    "frozenbatchnorm": "frozenbn",
    "sync": "syncbn",
    "syncbatchnorm": "syncbn",
}


def norm_name(norm: str) -> str:
    """The canonical table name of a norm name: ``"BN"``, ``"batch_norm2d"`` -> ``"batchnorm"``...

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    if not isinstance(norm, str):
        raise ConfigError(f"a norm name must be a string, got {type(norm).__name__}")
    key = norm.lower().replace("_", "").replace("-", "").replace("2d", "")
    key = _ALIASES.get(key, key)
    if key not in NORMS:
        raise ConfigError(
            f"unknown norm {norm!r}; choose one of {', '.join(NORMS)} (or bn, gn, frozen, sync)"
        )
    return key


def get_norm_layer(norm: str | NormLayer | None) -> NormLayer:
    """Return a callable ``(num_channels) -> nn.Module`` for a name or a callable.

    Args:
        norm: a name from the table (``"batchnorm"``, ``"syncbn"``, ``"frozenbn"``, ``"groupnorm"`` or
            an alias), a class such as ``nn.BatchNorm2d``, or any callable; ``None`` means BatchNorm2d.

    Raises:
        ConfigError: for an unknown name or a value that is neither a name nor a callable.
    """
    if norm is None:
        return nn.BatchNorm2d
    if isinstance(norm, str):
        return NORMS[norm_name(norm)]
    if callable(norm):
        return norm
    raise ConfigError(f"norm_layer must be a name or a callable, got {type(norm).__name__}")


def get_head_norm(norm: str | None) -> NormLayer | None:
    """Norm layer for heads trained from scratch (FPN, RoI heads): ``None``/``"none"`` (no norm) or a table
    name other than ``"frozenbn"``.

    Raises:
        ConfigError: for an unknown name, or ``"frozenbn"`` (fixed statistics suit a pretrained backbone
            only).
    """
    if norm is None or (isinstance(norm, str) and norm.lower() in ("", "none")):
        return None
    key = norm_name(norm)
    if key == "frozenbn":
        raise ConfigError(
            "frozenbn is for a pretrained backbone; heads are trained from scratch: use "
            "'syncbn', 'batchnorm', 'groupnorm' or None"
        )
    return NORMS[key]


def _from_batchnorm(bn: nn.modules.batchnorm._BatchNorm, make: NormLayer) -> nn.Module:
    """``make(bn.num_features)`` with ``bn``'s eps, affine parameters and (where both have them) stats."""
    new = make(bn.num_features)
    new.eps = bn.eps
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(bn, stat, None) is not None and getattr(new, stat, None) is not None:
                getattr(new, stat).copy_(getattr(bn, stat))
    if isinstance(new, nn.SyncBatchNorm):
        new.momentum = bn.momentum
    return new.train(bn.training)


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm in ``module`` by the requested norm, in place.

    Args:
        module: a module holding BatchNorm layers (a ResNeSt, a backbone, a head).
        norm: a table name: "batchnorm" (no change), "frozenbn" (statistics and affine kept), "syncbn"
            (statistics and affine kept), "groupnorm" (affine kept; 32 groups or the largest divisor of
            the width; the split-attention's pooled 1x1 vector gets one group, as with
            ``create_model(norm_layer="groupnorm")``: 1-2 values per group would normalise to constants).

    Returns:
        The converted module (a new object when ``module`` itself is a BatchNorm).

    Raises:
        ConfigError: for an unknown norm name.
    """
    key = norm_name(norm)
    return module if key == "batchnorm" else _convert(module, key, NORMS[key])


def _convert(module: nn.Module, key: str, make: NormLayer) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm):
        already = key == "syncbn" and isinstance(module, nn.SyncBatchNorm)
        return module if already else _from_batchnorm(module, make)
    for name, child in module.named_children():
        split_attn_vector = isinstance(module, SplitAttn) and name == "bn1"
        new = _convert(child, key, attention_norm_layer(make) if split_attn_vector else make)
        if new is not child:
            setattr(module, name, new)
    return module


__all__ = [
    "NORMS",
    "FrozenBatchNorm2d",
    "NormLayer",
    "attention_norm_layer",
    "convert_norm",
    "get_head_norm",
    "get_norm_layer",
    "group_norm",
    "norm_name",
]
