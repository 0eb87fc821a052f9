"""Metrics: top-k classification hits; COCO bbox / segm mAP through pycocotools' COCOeval; pixel accuracy
and mIoU."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError, require

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """How many samples have their target among the ``k`` highest logits, for each ``k``.

    Args:
        logits: ``(B, K)`` class scores.
        target: ``(B,)`` class ids.
        ks: the ``k`` values; a ``k`` above ``K`` counts like ``K`` (every sample is a hit).

    Returns:
        One count per ``k``, in the order of ``ks``.
    """
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise InputError(f"logits must be (B, K) and target (B,), got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    kmax = min(max(ks), logits.shape[1])
    hit = logits.topk(kmax, dim=1).indices.eq(target[:, None])
    return [int(hit[:, :min(k, kmax)].any(dim=1).sum()) for k in ks]


def to_coco_results(
    outputs: Iterable[dict[str, torch.Tensor]],
    image_ids: Iterable[int],
    label_to_cat_id: Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Convert torchvision detection outputs to COCO result entries.

    Args:
        outputs: per image ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)
            [, "masks": (N, 1, H, W)]}``,
            in the original image's coordinates.
        image_ids: the COCO image id of each output.
        label_to_cat_id: contiguous label -> COCO category id (``CocoDetection.label_to_cat_id``).
        mask_threshold: probability above which a mask pixel is on.

    Returns:
        ``[{"image_id", "category_id", "bbox" (xywh), "score"[, "segmentation" (compressed RLE)]}, ...]``.
    """
    mask_utils: Any = require("pycocotools.mask", "tasks", "COCO evaluation")

    results: list[dict[str, Any]] = []
    for out, img_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        rles = None
        if "masks" in out:
            m = (out["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m) else []
        for i, (b, s, lab) in enumerate(zip(boxes.tolist(), scores, labels)):
            r = {
                "image_id": int(img_id),
                "category_id": int(label_to_cat_id[lab]),
                "bbox": b,
                "score": float(s),
            }
            if rles is not None:
                rle = rles[i]
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            results.append(r)
    return results


def coco_evaluate(
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox",),
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, float]]:
    """COCO mAP with pycocotools.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` ground truth (crowd regions are handled by COCOeval).
        results: entries from :func:`to_coco_results`.
        iou_types: ``"bbox"`` and/or ``"segm"``.
        image_ids: restrict to these images (default: all of the ground truth).
        verbose: print pycocotools' summary table.

    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}`` in [0, 1]; -1 where undefined
        (e.g. no ground truth of that size), 0.0 when there are no detections.
    """
    cocoeval: Any = require("pycocotools.cocoeval", "tasks", "COCO evaluation")

    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise InputError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            raise InputError("segm evaluation needs masks in the predictions (a Mask R-CNN model)")
        if not results:
            out[iou_type] = dict.fromkeys(COCO_STATS, 0.0)
            continue
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink:
            dt = coco_gt.loadRes([dict(r) for r in results])
            ev = cocoeval.COCOeval(coco_gt, dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {k: float(v) for k, v in zip(COCO_STATS, ev.stats[:6])}
    return out


class SegmentationMetric:
    """Confusion-matrix pixel accuracy and mIoU over ``num_classes``, ignoring ``ignore_index`` pixels.

    ``mIoU`` averages the IoU of the classes present in the ground truth or the predictions (union > 0),
    as the ADE20K / Cityscapes toolkits do.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: ``(B, H, W)`` class ids, or ``(B, K, H, W)`` logits (argmax taken).
            target: ``(B, H, W)`` class ids, ``ignore_index`` for unlabelled pixels.
        """
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise InputError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).cpu().long(), target.reshape(-1).cpu().long()
        valid = target != self.ignore_index
        if bool(((target[valid] < 0) | (target[valid] >= self.num_classes)).any()):
            raise InputError(
                f"target holds ids outside 0..{self.num_classes - 1} other than "
                f"ignore_index={self.ignore_index}"
            )
        idx = target[valid] * self.num_classes + pred[valid].clamp(0, self.num_classes - 1)
        self.matrix += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the matrix over processes with a given all-reduce (for distributed evaluation)."""
        self.matrix = all_reduce_sum(self.matrix)

    def compute(self) -> dict[str, Any]:
        """``{"pixel_acc", "mIoU", "iou": per-class list (nan where a class never occurs)}``."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        total = m.sum()
        return {
            "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
            "mIoU": float(np.nanmean(iou.numpy())) if bool((union > 0).any()) else 0.0,
            "iou": iou.tolist(),
        }


__all__ = ["COCO_STATS", "SegmentationMetric", "coco_evaluate", "to_coco_results", "topk_hits"]
