"""Evaluation loops: COCO mAP for detectors, pixel accuracy / mIoU for segmentation (DDP-aware)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..amp import autocast
from ..distributed import all_reduce_sum, is_dist
from .datasets import CocoDetection
from .metrics import SegmentationMetric, coco_evaluate, to_coco_results
from .transforms import detection_collate


def _shard(dataset: Dataset) -> Dataset:
    if not is_dist():
        return dataset
    r, w = dist.get_rank(), dist.get_world_size()
    return Subset(dataset, list(range(r, len(dataset), w)))  # type: ignore[arg-type]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.inference_mode()
def evaluate_detection(
    model: nn.Module,
    dataset: CocoDetection,
    device: torch.device | str = "cpu",
    batch_size: int = 2,
    workers: int = 0,
    amp: str = "off",
) -> dict[str, dict[str, float]]:
    """COCO bbox (and segm for mask models) mAP of ``model`` on ``dataset``.

    Each process runs its shard; results are gathered and every process gets the same metrics.

    Returns:
        ``{"bbox": {"AP", "AP50", ...}[, "segm": {...}]}``.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    loader = DataLoader(
        _shard(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=detection_collate,
    )
    results: list[dict[str, Any]] = []
    has_mask = False
    for images, targets in loader:
        with autocast(device, amp):
            outputs = net([im.to(device) for im in images])
        outputs = [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
        has_mask = has_mask or any("masks" in o for o in outputs)
        results += to_coco_results(outputs, [t["image_id"] for t in targets], dataset.label_to_cat_id)
    if is_dist():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
        has_mask = bool(all_reduce_sum(torch.tensor(int(has_mask))).item())
    net.train(was_training)
    return coco_evaluate(
        dataset.coco, results, ("bbox", "segm") if has_mask else ("bbox",), image_ids=dataset.ids
    )


@torch.inference_mode()
def evaluate_segmentation(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    device: torch.device | str = "cpu",
    workers: int = 0,
    amp: str = "off",
    ignore_index: int = 255,
) -> dict[str, Any]:
    """Pixel accuracy and mIoU, one image at a time, logits upsampled to the label's full resolution.

    Returns:
        ``{"pixel_acc", "mIoU", "iou": per-class list}``.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    metric = SegmentationMetric(num_classes, ignore_index)
    for image, label in DataLoader(_shard(dataset), batch_size=1, shuffle=False, num_workers=workers):
        with autocast(device, amp):
            logits = net(image.to(device))["out"].float()
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1).cpu(), label)
    metric.reduce(all_reduce_sum)
    net.train(was_training)
    return metric.compute()


__all__ = ["evaluate_detection", "evaluate_segmentation"]
