"""Validation loop (top-1, top-5, loss, images/s), sharded over DDP ranks without padding."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..amp import autocast
from ..distributed import all_reduce_sum


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[Any], device: torch.device, amp: str = "off",
             channels_last: bool = False, progress: Any | None = None) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    Args:
        model: classifier, ``(B, 3, H, W) -> (B, K)``; put in eval mode here.
        loader: yields ``(images, targets)`` or ``(images, targets, n_skipped)``.
        device: where to compute.
        amp: autocast mode (see :func:`splitattn.engine.amp.autocast`).
        channels_last: feed NHWC tensors.
        progress: an optional :class:`~splitattn.engine.progress.EpochProgress`.

    Returns:
        ``{"loss", "top1", "top5", "images", "skipped", "images_per_sec", "seconds"}``, summed over ranks.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # loss, top1, top5, n, skipped
    start = time.perf_counter()
    for batch in loader:
        x, y = batch[0], batch[1]
        if len(batch) > 2:
            sums[4] += batch[2]
        if x.numel() == 0:
            continue
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1] += hit[:, :1].sum().item()
        sums[2] += hit.any(dim=1).sum().item()
        sums[3] += x.shape[0]
        if progress is not None:
            progress.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    sums = all_reduce_sum(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {
        "loss": sums[0].item() / n,
        "top1": 100.0 * sums[1].item() / n,
        "top5": 100.0 * sums[2].item() / n,
        "images": int(sums[3].item()),
        "skipped": int(sums[4].item()),
        "images_per_sec": sums[3].item() / max(seconds, 1e-9),
        "seconds": seconds,
    }


__all__ = ["evaluate"]
