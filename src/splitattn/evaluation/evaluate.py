"""Evaluation loops: classification (top-1/top-5/loss), COCO mAP, pixel accuracy / mIoU; DDP-aware.

Under ``torchrun`` each process evaluates its shard (:func:`shard_dataset`: every sample once, no
padding) and the sums are all-reduced, so every process returns the metrics of the whole dataset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.coco import CocoDetection
from ..data.imagefolder import ImageFolderDataset, collate_skip_bad
from ..data.preprocessing import resolve_data_config
from ..data.transforms import create_eval_transform, detection_collate, segmentation_collate
from ..deploy.fold import optimize_for_inference
from ..deploy.quantization import calibration_batches, int8_support_problem, quantize
from ..errors import DataError, InputError, MissingFileError, SplitAttnError, worker_error
from ..utils.amp import autocast
from ..utils.distributed import all_reduce_sum, is_dist
from .metrics import SegmentationMetric, coco_evaluate, to_coco_results, topk_hits
from .predict import imagenet_classes, load_for_inference

log = logging.getLogger("splitattn")


def shard_dataset(dataset: Dataset, rank: int | None = None, world_size: int | None = None) -> Dataset:
    """This process's evaluation shard: samples ``rank, rank + W, ...`` (the dataset itself when single).

    Every sample lands on exactly one rank and none is repeated, so summed metrics are exact.

    Args:
        dataset: the whole evaluation set.
        rank, world_size: the layout (default: the process group's, or a single process).
    """
    if rank is None or world_size is None:
        if not is_dist():
            return dataset
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Subset(dataset, list(range(rank, len(dataset), world_size)))  # type: ignore[arg-type]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` and ``DistributedDataParallel`` wrappers (any nesting)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


@torch.inference_mode()
def evaluate_classifier(model: nn.Module, loader: Iterable[Any], device: torch.device, amp: str = "off",
                        channels_last: bool = False, progress: Any | None = None,
                        input_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    Args:
        model: classifier, ``(B, 3, H, W) -> (B, K)``; in eval mode during the loop, its mode restored.
        loader: yields ``(images (B, 3, H, W), targets (B,))`` or ``(images, targets, n_skipped)``.
        device: where to compute.
        amp: autocast mode, ``"bf16"``, ``"fp16"`` or ``"off"`` (see :func:`splitattn.utils.amp.autocast`).
        channels_last: feed NHWC tensors.
        progress: anything with ``update(n)`` (e.g. the engine's ``EpochProgress``), called per batch.
        input_dtype: cast the images to this dtype (``torch.bfloat16`` for a model converted by
            ``optimize_for_inference(model, dtype=torch.bfloat16)``).

    Returns:
        ``{"loss", "top1", "top5", "images", "skipped", "images_per_sec", "seconds"}``, summed over ranks.
    """
    device = torch.device(device)
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
        x = x.to(device, dtype=input_dtype, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1:3] += torch.tensor(topk_hits(logits, y, (1, 5)), dtype=torch.float64)
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


@torch.inference_mode()
def evaluate_detection(model: nn.Module, dataset: CocoDetection, device: torch.device | str = "cpu",
                       batch_size: int = 2, workers: int = 0, amp: str = "off",
                       ) -> dict[str, dict[str, float]]:
    """COCO bbox (and segm for mask models) mAP of a torchvision-style detector on ``dataset``.

    Each process runs its shard; results are gathered and every process gets the same metrics. Images
    that a ``skip_bad_images`` dataset could not read are left out of the evaluation (with a warning).

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}[, "segm": {...}]}`` in [0, 1].
    """
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    loader = DataLoader(shard_dataset(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=detection_collate)
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    has_mask = False
    for images, targets, _ in loader:
        if not images:
            continue
        with autocast(device, amp):
            outputs = net([im.to(device) for im in images])
        outputs = [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
        has_mask = has_mask or any("masks" in o for o in outputs)
        ids = [t["image_id"] for t in targets]
        image_ids += ids
        results += to_coco_results(outputs, ids, dataset.label_to_cat_id)
    if is_dist():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (results, image_ids))
        results = [r for part, _ in gathered for r in part]
        image_ids = [i for _, part in gathered for i in part]
        has_mask = bool(all_reduce_sum(torch.tensor(int(has_mask))).item())
    net.train(was_training)
    _warn_skipped(len(dataset) - len(image_ids), "detection")
    return coco_evaluate(dataset.coco, results, ("bbox", "segm") if has_mask else ("bbox",),
                         image_ids=image_ids)


@torch.inference_mode()
def evaluate_segmentation(model: nn.Module, dataset: Dataset, num_classes: int,
                          device: torch.device | str = "cpu", workers: int = 0, amp: str = "off",
                          ignore_index: int = 255) -> dict[str, Any]:
    """Pixel accuracy and mIoU, one image at a time, logits upsampled to the label's full resolution.

    Args:
        model: ``(1, 3, H, W) -> {"out": (1, K, h, w)}`` (torchvision segmentation models).
        dataset: yields ``(image (3, H, W), label (H, W))``, or ``None`` for an unreadable image (skipped).

    Returns:
        ``{"pixel_acc", "mIoU", "iou": per-class list, "skipped": unreadable images left out}``.
    """
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    metric = SegmentationMetric(num_classes, ignore_index)
    skipped = 0
    for image, label, n_bad in DataLoader(shard_dataset(dataset), batch_size=1, shuffle=False,
                                          num_workers=workers, collate_fn=segmentation_collate):
        skipped += n_bad
        if not len(image):
            continue
        with autocast(device, amp):
            logits = net(image.to(device))["out"].float()
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1).cpu(), label)
    metric.reduce(all_reduce_sum)
    net.train(was_training)
    n_skipped = int(all_reduce_sum(torch.tensor(skipped)).item())
    _warn_skipped(n_skipped, "segmentation")
    return {**metric.compute(), "skipped": n_skipped}


def _warn_skipped(n: int, what: str) -> None:
    if n:
        log.warning("%s evaluation left out %d unreadable image(s) (skip_bad_images)", what, n)


def _class_remap(folder_classes: Sequence[str], classes: Sequence[str], folder: Path,
                 weights: str) -> list[int] | None:
    """Folder class index -> model class index, or ``None`` when they are the same."""
    if set(folder_classes) <= set(classes):
        return [list(classes).index(c) for c in folder_classes]  # match by name
    if list(classes) == imagenet_classes() and len(folder_classes) == len(classes):
        return None  # ImageNet weights carry readable names; the sorted synset folders are in the same order
    unknown = sorted(set(folder_classes) - set(classes))
    raise DataError(f"class folders {unknown[:10]} of {folder} are not classes of {weights} ({len(classes)} "
                    f"classes: {list(classes)[:5]}...); evaluate on a folder of the same classes")


def evaluate_folder(weights: str, data: str, model_name: str | None = None, img_size: int | None = None,
                    crop_ratio: float | None = None, batch_size: int = 64, workers: int = 4,
                    device: str = "auto", amp: str = "off", ema: bool = False,
                    skip_bad_images: bool = False, precision: str = "fp32", calibration: str | None = None,
                    calibration_images: int = 512) -> dict[str, Any]:
    """Evaluate ``weights`` on ``data`` (a folder with ``val/``, or the val folder itself).

    The class folders must be classes stored with the weights (matched by name); for ImageNet weights
    without names, the 1000 sorted synset folders are used in order.

    Args:
        weights: a ``.ckpt`` of ``splitattn train`` or a weights file (see
            :func:`~splitattn.evaluation.predict.load_for_inference`).
        data: the ImageFolder.
        model_name: the registered model (default: the one recorded in ``weights``).
        img_size: eval crop side (default: the model's).
        crop_ratio: crop side / resized short side (default: the model's).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        ema: the EMA weights of a training checkpoint.
        skip_bad_images: skip (and count) undecodable images instead of stopping.
        precision: ``"fp32"``; ``"bf16"``: the model of ``optimize_for_inference(model,
            dtype=torch.bfloat16)`` on bf16 inputs; ``"int8"``: :func:`splitattn.quantize` (CPU only),
            calibrated on ``calibration_images`` images of ``calibration``; on a CPU without INT8 kernels
            (see :func:`~splitattn.deploy.quantization.int8_support_problem`) its reference graph, with a
            warning.
            For bf16 and int8 the fp32 model is evaluated first, on the same images.
        calibration: the folder of calibration images (default: the ``train`` folder next to the val
            folder).
        calibration_images: how many (chosen at random with a fixed seed).

    Returns:
        :func:`evaluate_classifier`'s metrics (of ``precision``) plus ``crop_size``, ``resize_size``,
        ``crop_pct``, ``interpolation``, ``mean``, ``std``, ``weights``, ``data``, ``model`` and
        ``precision``; for bf16/int8 also ``fp32`` (the fp32 metrics) and, for int8, ``calibration``
        (folder), ``calibration_images`` (count) and ``int8_kernels`` (whether the INT8 kernels ran).
    """
    if precision not in ("fp32", "bf16", "int8"):
        raise InputError(f"precision must be 'fp32', 'bf16' or 'int8', got {precision!r}")
    root = Path(data)
    if not root.is_dir():
        raise MissingFileError(f"data folder {root} does not exist")
    val_dir = root / "val" if (root / "val").is_dir() else root
    model, classes = load_for_inference(weights, model_name, ema)
    data_cfg = resolve_data_config(model, img_size=img_size, crop_pct=crop_ratio)
    ds = ImageFolderDataset(val_dir, create_eval_transform(data_cfg), skip_bad_images=skip_bad_images,
                            what="val")
    remap = _class_remap(ds.classes, classes, val_dir, weights)
    if remap is not None:
        ds.samples = [(p, remap[t]) for p, t in ds.samples]
        ds.targets = [t for _, t in ds.samples]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_bad,
                        pin_memory=dev.type == "cuda")
    extra: dict[str, Any] = {}
    if precision == "int8" and dev.type != "cpu":
        raise InputError(f"INT8 evaluation runs on the CPU; drop --device {device} or use --device cpu")
    try:
        res: dict[str, Any] = evaluate_classifier(model.to(dev), loader, dev, amp)
        if precision != "fp32":
            extra["fp32"] = {k: res[k] for k in ("top1", "top5", "loss", "images_per_sec")}
            low, input_dtype, info = _low_precision(model, precision, data_cfg, val_dir, calibration,
                                                    calibration_images)
            extra.update(info)
            res = evaluate_classifier(low, loader, dev, "off", input_dtype=input_dtype)
    except SplitAttnError as e:  # re-raised by a DataLoader worker with its traceback in the message
        raise worker_error(e) from None
    res.update(precision=precision, **extra)
    res.update(crop_size=data_cfg.crop_size, resize_size=data_cfg.resize_size, crop_pct=data_cfg.crop_pct,
               interpolation=data_cfg.interpolation, mean=list(data_cfg.mean), std=list(data_cfg.std),
               weights=str(weights), data=str(val_dir), model=_model_name(model))
    return res


def _low_precision(model: nn.Module, precision: str, data_cfg: Any, val_dir: Path, calibration: str | None,
                   calibration_images: int) -> tuple[nn.Module, torch.dtype | None, dict[str, Any]]:
    """``(model in bf16 or INT8, its input dtype, what to report)`` for :func:`evaluate_folder`."""

    if precision == "bf16":
        return optimize_for_inference(model, dtype=torch.bfloat16), torch.bfloat16, {}

    folder = Path(calibration) if calibration else val_dir.parent / "train"
    if not calibration and not folder.is_dir():
        raise MissingFileError(f"no train/ folder next to {val_dir} to calibrate the INT8 model on; pass "
                               "--calibration DIR (a folder of a few hundred training images)")
    batches = calibration_batches(folder, data_cfg, calibration_images)
    problem = int8_support_problem()
    if problem is not None:
        # The accuracy of the INT8 model is still worth knowing (quantize here, deploy on a VNNI server).
        log.warning("%s; evaluating the INT8 model's reference graph instead: the same numbers, not the "
                    "speed", problem)
    info = {"calibration": str(folder), "calibration_images": sum(len(b) for b in batches),
            "int8_kernels": problem is None}
    return quantize(model.cpu(), batches, compile=problem is None), None, info


def _model_name(model: nn.Module) -> str:
    """The registry name of a model of create_model, else its pretrained_cfg's architecture or class."""
    cfg = getattr(model, "model_cfg", None)
    if cfg is not None:
        return cfg.name
    pcfg = getattr(model, "pretrained_cfg", None)
    name = getattr(pcfg, "name", None) or (pcfg.get("architecture") if isinstance(pcfg, dict) else None)
    return name or type(model).__name__


__all__ = ["evaluate_classifier", "evaluate_detection", "evaluate_folder", "evaluate_segmentation",
           "shard_dataset", "unwrap_model"]
