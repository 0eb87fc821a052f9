"""Parameter and multiply-add counts, measured from the model (not read from a table)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), batch: int = 1) -> int:
    """Multiply-adds of one eval-mode forward, counted by ``torch.utils.flop_counter``.

    The counter reports FLOPs of convolutions and matrix products with one multiply-add = 2 FLOPs;
    this returns half of that (one multiply-add = 1, the fvcore / paper convention). Element-wise ops,
    pooling and normalisation are not counted.

    Args:
        model: any module taking ``(batch, *input_size)``.
        input_size: ``(C, H, W)``.
        batch: batch size (the paper's figures are for batch 1).
    """
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(batch, *input_size, dtype=p.dtype, device=p.device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops() // 2
    finally:
        model.train(was_training)
