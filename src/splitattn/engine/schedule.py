"""Optimizer, LR schedule and DropBlock ramp of the recipes (classification, detection, segmentation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: conv/linear weights (``ndim > 1``) with ``weight_decay``; norm scales/shifts and
    all biases (``ndim <= 1``) without, as in the paper ("no bias decay")."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def create_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                     nesterov: bool = True) -> torch.optim.SGD:
    """SGD (Nesterov by default) with weight decay on conv/linear weights only."""
    return torch.optim.SGD(param_groups_weight_decay(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov and momentum > 0)


@dataclass
class WarmupSchedule:
    """The LR multiplier at iteration ``step`` (0-based): linear warmup, then cosine, steps or poly.

    Warmup rises linearly from ``warmup_factor`` (0 for the classification recipe, detectron2's 0.001
    for detection) to 1 over ``warmup_steps``. After it (and, for steps and poly, multiplied with it):

    - ``"cosine"``: ``m + (1 - m) * (1 + cos(pi * t)) / 2``, ``t`` the fraction of the post-warmup
      iterations done and ``m = min_factor``;
    - ``"multistep"``: ``gamma ** (number of milestones <= step)``;
    - ``"poly"``: ``(1 - step / total_steps) ** power``.

    A plain dataclass of numbers, so :class:`~torch.optim.lr_scheduler.LambdaLR` stores it in its
    ``state_dict`` and checkpoints load with ``weights_only=True``.
    """

    kind: Literal["cosine", "multistep", "poly"]
    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 0.0
    min_factor: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    power: float = 0.9

    def __call__(self, step: int) -> float:
        warm = 1.0
        if step < self.warmup_steps:
            a = step / self.warmup_steps
            warm = self.warmup_factor * (1 - a) + a
            if self.kind == "cosine":
                return warm
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            t = min(max(step - self.warmup_steps, 0), span) / span
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "multistep":
            return warm * self.gamma ** sum(step >= s for s in self.milestones)
        return warm * max(1 - step / self.total_steps, 0.0) ** self.power


def create_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupSchedule) -> LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` applying ``schedule`` to every group's initial LR.

    Call ``scheduler.step()`` after each optimizer step; the LR of iteration ``i`` is
    ``initial_lr * schedule(i)``.
    """
    return LambdaLR(optimizer, schedule)


def drop_block_prob_at(step: int, total_steps: int, final_prob: float) -> float:
    """DropBlock probability ramped linearly from 0 at the first iteration to ``final_prob`` at the last."""
    if total_steps <= 1:
        return final_prob
    return final_prob * min(max(step, 0), total_steps - 1) / (total_steps - 1)


__all__ = ["WarmupSchedule", "create_lr_scheduler", "create_optimizer", "drop_block_prob_at",
           "param_groups_weight_decay"]
