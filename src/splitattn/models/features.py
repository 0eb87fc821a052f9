"""``features_only`` wrapper: a backbone that returns the list of stage outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .resnest import check_input, set_grad_checkpointing


class FeatureListNet(nn.Module):
    """The stem and stages of a ResNeSt, returning the outputs selected by ``out_indices``.

    Index 0 is the stem (stride 2, before the max pool), 1-4 are layer1-layer4. Submodule names are the
    classifier's (``conv1``, ``bn1``, ``layer1``...), so a classification state dict without ``fc`` loads.

    Shape:
        ``(B, C, H, W) -> [(B, feature_info[i]["num_chs"], H / r_i, W / r_i) for i in out_indices]``.
    """

    __jit_ignored_attributes__ = ["feature_info", "pretrained_cfg"]

    def __init__(self, model: nn.Module, out_indices: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i > 4 for i in out_indices):
            raise ValueError(f"out_indices must be within 0..4 (0 = stem, 4 = layer4), got {out_indices}")
        self.out_indices = out_indices
        self.in_chans: int = model.in_chans
        self._bn_needs_batch: bool = model._bn_needs_batch
        self.conv1 = model.conv1
        self.bn1 = model.bn1
        self.act1 = model.act1
        self.maxpool = model.maxpool
        self.last = max(out_indices)
        # Stages past the last requested one are not kept (no compute, no weights to load).
        for i in range(1, 5):
            self.add_module(f"layer{i}", getattr(model, f"layer{i}") if i <= self.last else nn.Identity())
        self.feature_info = [model.feature_info[i] for i in out_indices]
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """Recompute activations in backward to save training memory; see
        :func:`splitattn.models.set_grad_checkpointing`."""
        set_grad_checkpointing(self, enable)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.jit.is_scripting():
            check_input(x, self.in_chans, self.training and self._bn_needs_batch)
        outs: list[torch.Tensor] = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in self.out_indices:
            outs.append(x)
        x = self.maxpool(x)
        # Unrolled (not a loop over a list of stages) so that torch.jit.script accepts it.
        x = self.layer1(x)
        if 1 in self.out_indices:
            outs.append(x)
        if self.last >= 2:
            x = self.layer2(x)
            if 2 in self.out_indices:
                outs.append(x)
        if self.last >= 3:
            x = self.layer3(x)
            if 3 in self.out_indices:
                outs.append(x)
        if self.last >= 4:
            x = self.layer4(x)
            outs.append(x)
        return outs
