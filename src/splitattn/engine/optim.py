"""Optimizer, LR schedule and DropBlock ramp of the paper's recipe."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


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


def warmup_cosine_lr(step: int, peak_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0,
                     ) -> float:
    """LR at iteration ``step`` (0-based): linear from 0 over ``warmup_steps``, then cosine to ``min_lr``.

    ``lr = peak * step / warmup`` for ``step < warmup``; afterwards
    ``min + (peak - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2``.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0), span) / span
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosineSchedule:
    """Sets every param group's LR from :func:`warmup_cosine_lr` each iteration.

    Call :meth:`step` *before* each optimizer step; its state (the iteration count) is a plain dict.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, warmup_steps: int,
                 min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.last_step = 0

    def lr_at(self, step: int) -> float:
        return warmup_cosine_lr(step, self.peak_lr, self.total_steps, self.warmup_steps, self.min_lr)

    def step(self) -> float:
        """Set the LR for the current iteration, advance the counter, return the LR set."""
        lr = self.lr_at(self.last_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])


def drop_block_prob_at(step: int, total_steps: int, final_prob: float) -> float:
    """DropBlock probability ramped linearly from 0 at the first iteration to ``final_prob`` at the last."""
    if total_steps <= 1:
        return final_prob
    return final_prob * min(max(step, 0), total_steps - 1) / (total_steps - 1)


__all__ = ["WarmupCosineSchedule", "create_optimizer", "drop_block_prob_at", "param_groups_weight_decay",
           "warmup_cosine_lr"]
