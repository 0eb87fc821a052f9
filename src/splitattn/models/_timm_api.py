"""timm's model interface for ResNeSt: feature indices, the pooling of the head, and the methods timm's
tools call (``forward_intermediates``, ``prune_intermediate_layers``, ``group_matcher``,
``get_classifier``, ``default_cfg``), with the signatures and semantics of timm's ResNet.
"""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError

GLOBAL_POOLS = ("avg", "max", "avgmax", "")
STAGE_HINT = " (0 = stem, 4 = layer4)"


def feature_take_indices(n: int, indices: int | Sequence[int] | None = None, what: str = "indices",
                         hint: str = "", error: type[Exception] = InputError) -> tuple[list[int], int]:
    """The feature indices to take out of ``n`` (timm's ``feature_take_indices``), and the largest.

    Args:
        n: number of features (5 for a ResNeSt: stem, layer1..layer4).
        indices: ``None``: all; an int ``k``: the last ``k``; a sequence: those indices, negative ones
            counted from the end.
        what, hint: the argument's name and a note on its meaning, for the message.
        error: the exception class to raise.

    Returns:
        ``(indices within 0..n-1 in the order given, their maximum)``.

    Raises:
        error: an index out of range, an empty sequence, or a non-integer, naming it.
    """
    if indices is None:
        indices = n
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= n:
            raise error(f"{what}={indices} asks for the last {indices} of {n} features; use 1..{n}, or a "
                        f"list of indices{hint}")
        take = list(range(n - indices, n))
        return take, n - 1
    given = tuple(indices) if isinstance(indices, Sequence) and not isinstance(indices, str) else None
    if not given:
        raise error(f"{what} must be an int or a non-empty list of indices{hint}, got {indices!r}")
    take = []
    for i in given:
        try:
            idx = operator.index(i) if not isinstance(i, bool) else None
        except TypeError:
            idx = None
        if idx is None or not -n <= idx < n:
            raise error(f"{what} must be within 0..{n - 1}{hint} or -{n}..-1 (counted from the end): index "
                        f"{i!r} is out of range; got {given!r}")
        take.append(idx % n)
    return take, max(take)


def device_dtype(module: nn.Module) -> dict[str, Any]:
    """``{"device", "dtype"}`` of ``module``'s first floating-point parameter (empty if it has none)."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


class _AvgMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], 1)


def make_pool(kind: str) -> tuple[nn.Module, nn.Module]:
    """``(pool, flatten)`` for ``global_pool=kind``; the pool's ``pool_type`` says which, as timm's does."""
    if kind == "avg":
        pool, flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
    elif kind == "max":
        pool, flatten = nn.AdaptiveMaxPool2d(1), nn.Flatten(1)
    elif kind == "avgmax":
        pool, flatten = _AvgMaxPool(), nn.Flatten(1)
    elif kind == "":
        pool, flatten = nn.Identity(), nn.Identity()
    else:
        raise InputError(f"global_pool must be one of {GLOBAL_POOLS}, got {kind!r}")
    pool.pool_type = kind  # read by timm's export (timm.models._input._get_global_pool)
    return pool, flatten


def stem_in_chans(conv1: nn.Module) -> int | None:
    """The input channels the first conv of a ResNeSt stem takes, read from its weight (``None`` if it has
    no conv weight), so a stem conv swapped or adapted after construction (timm's ``adapt_input_conv``)
    counts, even one whose ``in_channels`` attribute was left as it was."""
    first = conv1[0] if isinstance(conv1, nn.Sequential) else conv1
    weight = getattr(first, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 4:
        return int(weight.shape[1]) * int(getattr(first, "groups", 1))
    chans = getattr(first, "in_channels", None)
    return chans if isinstance(chans, int) else None


class StemChannelsMixin:
    """``in_chans``: the input channels of the stem conv ``conv1`` (see :func:`stem_in_chans`).

    A class using it lists ``"in_chans"`` in ``__jit_unused_properties__``.
    """

    @property
    def in_chans(self) -> int | None:
        """Input channels, as the stem conv (``conv1``, ``conv1[0]`` for the deep stem) takes them."""
        return stem_in_chans(self.conv1)

    @in_chans.setter
    def in_chans(self, value: int) -> None:
        if value != self.in_chans:
            raise InputError(
                f"in_chans follows the stem conv, which takes {self.in_chans} channels, not {value!r}: "
                "replace the stem conv (model.conv1[0], or model.conv1 without the deep stem) with one of "
                f"{value!r} input channels, or create the model with in_chans={value!r}"
            )


class DefaultCfgMixin:
    """``default_cfg``: timm's older name of the ``pretrained_cfg`` attribute (the same dict).

    A class using it lists ``"default_cfg"`` in ``__jit_unused_properties__`` (TorchScript would compile
    the property) and ``"pretrained_cfg"`` in ``__jit_ignored_attributes__``.
    """

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of ``pretrained_cfg`` (the same dict)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value: dict[str, Any]) -> None:
        self.pretrained_cfg = value


class TimmModelMixin(DefaultCfgMixin):
    """The parts of timm's model interface that only read a ResNeSt's layout.

    The model provides ``conv1``/``bn1``/``act1`` (``forward_stem``), ``maxpool``, ``layer1``..``layer4``,
    ``fc``, ``feature_info``, ``num_features``, ``check_input``, ``reset_classifier`` and the attribute
    ``pretrained_cfg``.
    """

    @torch.jit.unused
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The classifier module (``fc``), or its name with ``name_only``."""
        return "fc" if name_only else self.fc

    @torch.jit.unused
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups as timm's ResNet gives them (for ``timm.optim`` layer-wise lr decay).

        Returns:
            ``{"stem": regex, "blocks": regex}``: ``blocks`` groups by stage (``coarse``) or by block.
        """
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.unused
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature maps of the stem and the stages, with the final map (timm's ResNet signature).

        Args:
            x: ``(B, in_chans, H, W)``.
            indices: of the 5 levels (0 = stem after BN + ReLU, 1-4 = layer1-4): ``None`` all, an int
                ``k`` the last ``k``, a list those (negative ones from the end).
            norm: accepted for timm's signature; a ResNeSt has no final norm.
            stop_early: stop after the last requested level (the final map is then that level's).
            output_fmt: ``"NCHW"`` only.
            intermediates_only: return the list only.

        Returns:
            ``(final (B, num_features, H/os, W/os), [(B, feature_info[i]["num_chs"], H/r_i, W/r_i)...])``
            in stage order, or the list alone.

        Raises:
            InputError: an index out of range, an ``output_fmt`` other than ``"NCHW"``, or an input the
                model cannot take.
        """
        if output_fmt != "NCHW":
            raise InputError(f"output_fmt must be 'NCHW' for a ResNeSt, got {output_fmt!r}")
        take, max_index = feature_take_indices(5, indices, "indices", STAGE_HINT)
        self.check_input(x)
        intermediates = []
        x = self.forward_stem(x)
        if 0 in take:
            intermediates.append(x)
        x = self.maxpool(x)
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        for i, stage in enumerate(stages[:max_index] if stop_early else stages, 1):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    @torch.jit.unused
    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (as timm's ResNet), and the head.

        Stages past the last level kept become empty ``nn.Sequential`` (the max pool too when only the
        stem is kept); when the last level is not layer4, ``num_features`` becomes its channels and the
        head goes, else the head goes with ``prune_head``. ``prune_norm`` is accepted for timm's signature.

        Returns:
            The kept indices, within 0..4.
        """
        take, max_index = feature_take_indices(5, indices, "indices", STAGE_HINT)
        for i in range(max_index + 1, 5):
            setattr(self, f"layer{i}", nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        if max_index < 4:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < 4:
            self.reset_classifier(0, "")
        return take


__all__ = ["GLOBAL_POOLS", "STAGE_HINT", "DefaultCfgMixin", "StemChannelsMixin", "TimmModelMixin",
           "device_dtype", "feature_take_indices", "make_pool", "stem_in_chans"]
