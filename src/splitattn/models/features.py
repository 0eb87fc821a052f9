"""The one feature extractor: a ResNeSt's stem and stages returning named stage outputs.

:class:`FeatureDictNet` returns ``{name: map}``; :class:`FeatureListNet`
(``create_model(features_only=True)``) returns the same maps as a list; the detection / segmentation backbone
(:class:`~splitattn.models.backbone.ResNeStBackbone`) is a FeatureDictNet with detectron2's stage names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .resnest import check_input, set_grad_checkpointing, stem_dtype

DEFAULT_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
_MODEL_PARTS = ("in_chans", "feature_info", "conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3",
                "layer4")


def uses_batch_stats(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm that normalises with batch statistics in training mode."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def check_out_indices(out_indices: Sequence[int]) -> tuple[int, ...]:
    """``out_indices`` sorted and deduplicated; ConfigError unless a non-empty subset of 0..4."""
    indices = tuple(sorted({int(i) for i in out_indices}))
    if not indices or any(i < 0 or i > 4 for i in indices):
        raise ConfigError(f"out_indices must be within 0..4 (0 = stem, 4 = layer4), got {tuple(out_indices)}")
    return indices


def _stage_names(out_indices: Sequence[int], feature_names: Sequence[str] | None) -> list[str]:
    """Names of the 5 stages: 5 ``feature_names`` name stages 0..4, fewer name the ``out_indices`` entries
    in the order given."""
    if feature_names is None:
        return list(DEFAULT_NAMES)
    names = [str(n) for n in feature_names]
    if len(names) != 5:
        if len(names) != len(out_indices) or len(set(out_indices)) != len(out_indices):
            raise ConfigError(
                f"feature_names must name the 5 stages (stem, layer1..layer4) or each of out_indices "
                f"{tuple(out_indices)}, got {len(names)} names: {names}"
            )
        full = list(DEFAULT_NAMES)
        for i, n in zip(out_indices, names):
            full[i] = n
        names = full
    stages = sorted(set(out_indices))
    chosen = [names[i] for i in stages]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"feature_names must be distinct, got {chosen} for stages {stages}")
    return names


class FeatureDictNet(nn.Module):
    """The stem and stages of a ResNeSt, returning the outputs selected by ``out_indices`` by name.

    Index 0 is the stem (stride 2, before the max pool), 1-4 are layer1-layer4. Submodule names are the
    classifier's (``conv1``, ``bn1``, ``layer1``...), so a classification state dict without ``fc`` loads;
    stages past the last requested one are not kept (no compute, no weights).

    Args:
        model: a :class:`~splitattn.models.ResNeSt` (any zoo model, any ``output_stride``); its modules
            are reused, not copied.
        out_indices: stage indices within 0..4, returned in stage order.
        feature_names: the output names: 5 names for stages 0..4 (e.g. detectron2's
            ``("stem", "res2", "res3", "res4", "res5")``) or one per ``out_indices`` entry, in the order
            given; default ``"stem"``, ``"layer1"``..``"layer4"``.

    Shape:
        ``(B, C, H, W) -> OrderedDict {name_i: (B, feature_info[i]["num_chs"], H / r_i, W / r_i)}``, with
        ``r_i = feature_info[i]["reduction"]`` (rounded up for sizes not divisible by it).
    """

    __jit_ignored_attributes__ = ["feature_info", "pretrained_cfg"]

    def __init__(
        self,
        model: nn.Module,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        feature_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        missing = [a for a in _MODEL_PARTS if not hasattr(model, a)]
        if missing:
            raise InputError(
                f"model must be a ResNeSt (splitattn.create_model(name)), got a {type(model).__name__} "
                f"without {', '.join(missing)}"
            )
        indices = check_out_indices(out_indices)
        self.out_indices = indices
        self.stage_names = _stage_names([int(i) for i in out_indices], feature_names)
        self.in_chans: int = model.in_chans
        self.conv1 = model.conv1
        self.bn1 = model.bn1
        self.act1 = model.act1
        self.maxpool = model.maxpool
        last = max(indices)
        for i in range(1, 5):
            self.add_module(f"layer{i}", getattr(model, f"layer{i}") if i <= last else nn.Identity())
        self.feature_info = [dict(model.feature_info[i]) for i in indices]
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)
        self._bn_needs_batch: bool = uses_batch_stats(self)

    @property
    def feature_names(self) -> list[str]:
        """The output names, in output order."""
        return [self.stage_names[i] for i in self.out_indices]

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """Recompute activations in backward to save training memory; see
        :func:`splitattn.models.set_grad_checkpointing`."""
        set_grad_checkpointing(self, enable)

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise an InputError naming the problem and the fix (see :func:`.resnest.check_input`)."""
        check_input(x, self.in_chans, self.training and self._bn_needs_batch, stem_dtype(self.conv1))

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The one forward of both views: ``{name: map}`` in stage order (see the class docstring)."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.act1(self.bn1(self.conv1(x)))
        stages = [x]
        # Unrolled (not a loop over a list of stages) so that torch.jit.script accepts it; the stages
        # past the last requested one are Identity.
        x = self.layer1(self.maxpool(x))
        stages.append(x)
        x = self.layer2(x)
        stages.append(x)
        x = self.layer3(x)
        stages.append(x)
        stages.append(self.layer4(x))
        outs: dict[str, torch.Tensor] = OrderedDict()
        for i in self.out_indices:
            outs[self.stage_names[i]] = stages[i]
        return outs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_dict(x)


class FeatureListNet(FeatureDictNet):
    """:class:`FeatureDictNet` returning a list: what ``create_model(features_only=True)`` gives.

    Shape:
        ``(B, C, H, W) -> [(B, feature_info[i]["num_chs"], H / r_i, W / r_i) for i in out_indices]``.
    """

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return list(self.forward_dict(x).values())


__all__ = ["DEFAULT_NAMES", "FeatureDictNet", "FeatureListNet", "check_out_indices", "uses_batch_stats"]
