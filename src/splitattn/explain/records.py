"""What ``splitattn explain`` looks at and what it measured: the records the figures are drawn from."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

RANDOM_NOTE = "random weights: the attention shows the architecture, not learned behaviour"


@dataclass
class ExplainTarget:
    """A classifier to explain and how to describe it in captions.

    Attributes:
        model: a ResNeSt classifier in eval mode, ``(1, 3, H, W) -> (1, K)``.
        classes: its ``K`` class names.
        name: the model name.
        weights: where its weights come from (a file, "released ImageNet weights") or :data:`RANDOM_NOTE`.
        random: whether the weights are random.
    """

    model: nn.Module
    classes: list[str]
    name: str
    weights: str
    random: bool


@dataclass
class ImageExplanation:
    """What :func:`explain_image` measured: the JSON record and the arrays the figures draw."""

    record: dict[str, Any]
    views: list[torch.Tensor]  # (H, W, 3) in [0, 1], one per scale
    maps: OrderedDict[str, torch.Tensor]  # scale 1.0: name -> (R, C)
    cams: OrderedDict[str, torch.Tensor]  # stage -> (H, W)
    stage_shapes: dict[str, tuple[int, int]]  # stage -> (h, w) of its map
