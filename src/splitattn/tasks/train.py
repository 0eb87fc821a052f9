"""Iteration-based training for detection and segmentation on the classification engine.

Shares :mod:`splitattn.engine`: ``torchrun`` DDP set-up, AMP, atomic checkpoints with resume (exactly
where the run stopped: the batch order is a function of (seed, iteration)), progress and metrics.jsonl.
Detection uses the detectron2 schedule (linear warmup, steps at 2/3 and 8/9 of a 1x run); segmentation
the DeepLab poly schedule.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..amp import autocast, make_grad_scaler
from ..checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from ..distributed import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed
from ..engine.config import save_config
from ..engine.optim import param_groups_weight_decay
from ..engine.progress import EpochProgress, MetricsLogger
from ..engine.rng import seed_everything
from ..engine.sampler import GlobalBatchSampler
from .datasets import ADE20KSegmentation, CityscapesSegmentation, CocoDetection
from .detection import create_detection_model
from .evaluate import evaluate_detection, evaluate_segmentation
from .segmentation import create_segmentation_model, segmentation_loss
from .transforms import DetectionTransform, SegmentationTransform, detection_collate, segmentation_collate

log = logging.getLogger("splitattn")


def lr_factor(cfg: dict[str, Any], it: int) -> float:
    """LR multiplier at iteration ``it``: linear warmup, then steps (detection) or poly (segmentation)."""
    if it < cfg["warmup_iters"]:
        a = it / max(cfg["warmup_iters"], 1)
        warm = cfg["warmup_factor"] * (1 - a) + a
    else:
        warm = 1.0
    if cfg["task"] == "detection":
        return warm * cfg["lr_gamma"] ** sum(it >= s for s in cfg["lr_steps"])
    return warm * (1 - it / cfg["max_iter"]) ** cfg["poly_power"]


# ---------------------------------------------------------------- builders
def _need(cfg: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if not cfg.get(k)]
    if missing:
        raise ValueError(f"config needs {', '.join(missing)} (set them in the YAML or as KEY=VALUE)")


def build_datasets(cfg: dict[str, Any], train: bool = True) -> tuple[Dataset | None, Dataset | None]:
    """(train dataset or None, val dataset or None) from the config."""
    if cfg["task"] == "detection":
        masks = "mask" in cfg["model"]
        tr = va = None
        if train:
            _need(cfg, "train_images", "train_ann")
            tr = CocoDetection(
                cfg["train_images"],
                cfg["train_ann"],
                DetectionTransform(True, hflip=cfg["hflip"]),
                masks=masks,
                remove_empty=True,
            )
        if cfg.get("val_ann") or not train:
            _need(cfg, "val_images", "val_ann")
            va = CocoDetection(cfg["val_images"], cfg["val_ann"], DetectionTransform(False), masks=False)
        return tr, va
    _need(cfg, "data_root")
    kind = cfg["dataset"]
    if kind not in ("ade20k", "cityscapes"):
        raise ValueError(f"dataset must be 'ade20k' or 'cityscapes', got {kind!r}")
    splits = ("training", "validation") if kind == "ade20k" else ("train", "val")
    t_tr = SegmentationTransform(
        True, cfg["crop_size"], cfg["base_size"], tuple(cfg["scale_range"]), cfg["hflip"]
    )
    t_va = SegmentationTransform(False, eval_size=cfg["eval_size"])

    def make(split: str, t: SegmentationTransform) -> Dataset:
        if kind == "ade20k":
            return ADE20KSegmentation(cfg["data_root"], split, t, num_classes=cfg["num_classes"] or 150)
        return CityscapesSegmentation(cfg["data_root"], split, t)

    tr = make(cfg["train_split"] or splits[0], t_tr) if train else None
    return tr, make(cfg["val_split"] or splits[1], t_va)


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    if cfg["task"] == "detection":
        return create_detection_model(
            cfg["model"],
            cfg["backbone"],
            num_classes=num_classes,
            pretrained_backbone=cfg["pretrained_backbone"],
            backbone_norm=cfg["backbone_norm"],
            freeze_at=cfg["freeze_at"],
            fpn_norm=cfg["fpn_norm"],
            box_head=cfg["box_head"],
            head_norm=cfg["head_norm"],
            min_size=tuple(cfg["min_size"]),
            max_size=cfg["max_size"],
            fpn_channels=cfg["fpn_channels"],
            representation_size=cfg["representation_size"],
            backbone_kwargs=cfg["backbone_kwargs"],
            **cfg["model_kwargs"],
        )
    return create_segmentation_model(
        cfg["model"],
        cfg["backbone"],
        num_classes=num_classes,
        output_stride=cfg["output_stride"],
        aux_loss=cfg["aux_loss"],
        pretrained_backbone=cfg["pretrained_backbone"],
        norm=cfg["norm"],
        freeze_at=cfg["freeze_at"],
        backbone_kwargs=cfg["backbone_kwargs"],
    )


def _num_classes(cfg: dict[str, Any], ds: Dataset) -> int:
    return int(cfg["num_classes"] or ds.num_classes)  # type: ignore[attr-defined]


def _batches(loader: DataLoader, sampler: GlobalBatchSampler, start_iter: int) -> Iterator[Any]:
    per_epoch = sampler.batches_per_epoch
    epoch, skip = divmod(start_iter, per_epoch)
    while True:
        sampler.set_epoch(epoch, skip)
        yield from loader
        epoch, skip = epoch + 1, 0


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def evaluate(cfg: dict[str, Any], model: nn.Module, dataset: Dataset, info: DistInfo) -> dict[str, Any]:
    """The task's metrics: ``{"bbox_AP": ..., "segm_AP50": ...}`` or ``{"mIoU", "pixel_acc"}``."""
    if cfg["task"] == "detection":
        res = evaluate_detection(model, dataset, info.device, batch_size=2, amp=cfg["amp"])  # type: ignore[arg-type]
        return {f"{t}_{k}": v for t, d in res.items() for k, v in d.items()}
    res = evaluate_segmentation(model, dataset, _num_classes(cfg, dataset), info.device, amp=cfg["amp"])
    return {"mIoU": res["mIoU"], "pixel_acc": res["pixel_acc"]}


def train(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train a detector or a segmenter as ``cfg`` says (see :mod:`splitattn.tasks.config`).

    Returns:
        The final evaluation metrics (empty without a validation set), on every rank.
    """
    info = init_distributed(None if cfg["device"] == "auto" else cfg["device"])
    try:
        return _train(cfg, info)
    finally:
        cleanup_distributed()


def _train(cfg: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    if cfg["batch_size"] % info.world_size:
        raise ValueError(
            f"batch_size {cfg['batch_size']} (global) is not divisible by {info.world_size} processes"
        )
    seed_everything(cfg["seed"] + info.rank)
    out = Path(cfg["output"] or f"runs/{cfg['task']}-{cfg['model']}-{cfg['backbone']}")
    train_ds, val_ds = build_datasets(cfg, train=True)
    assert train_ds is not None
    num_classes = _num_classes(cfg, train_ds)
    model = build_model(cfg, num_classes).to(info.device)
    per_proc = cfg["batch_size"] // info.world_size
    sampler = GlobalBatchSampler(len(train_ds), per_proc, info.world_size, info.rank, seed=cfg["seed"])
    if sampler.batches_per_epoch < 1:
        raise ValueError(
            f"the training set has {len(train_ds)} images, fewer than one batch of {cfg['batch_size']}"
        )
    collate = detection_collate if cfg["task"] == "detection" else segmentation_collate
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        num_workers=cfg["workers"],
        collate_fn=collate,
        persistent_workers=False,
    )
    opt = torch.optim.SGD(
        param_groups_weight_decay(model, cfg["weight_decay"]), lr=cfg["lr"], momentum=cfg["momentum"]
    )
    scaler = make_grad_scaler(info.device, cfg["amp"])
    start = 0
    resume = cfg.get("resume")
    if resume:
        path = find_latest_checkpoint(out) if resume == "auto" else Path(resume)
        if path is not None:
            state = load_checkpoint(path)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start = int(state["iter"])
            log.info("resumed from %s at iteration %d", path, start)
        elif resume != "auto":
            raise FileNotFoundError(f"resume checkpoint {resume} not found")
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=cfg["find_unused_parameters"],
        )
    if info.is_main:
        save_config(cfg, out / "config.yaml")
    logger = MetricsLogger(out, enabled=info.is_main, tensorboard=False)

    def save(it: int) -> None:
        if info.is_main:
            save_checkpoint(
                out / "last.ckpt",
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iter": it,
                    "task": cfg["task"],
                    "num_classes": num_classes,
                },
            )

    net.train()
    batches = _batches(loader, sampler, start)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    with EpochProgress(
        cfg["max_iter"] - start,
        desc=f"{cfg['task']} train",
        enabled=info.is_main,
        batch_size=cfg["batch_size"],
        force_plain=not cfg["progress_bar"],
    ) as bar:
        for it in range(start, cfg["max_iter"]):
            lr = cfg["lr"] * lr_factor(cfg, it)
            for g in opt.param_groups:
                g["lr"] = lr
            images, targets = _to_device(next(batches), info.device)
            with autocast(info.device, cfg["amp"]):
                if cfg["task"] == "detection":
                    losses = net(images, targets)
                else:
                    losses = segmentation_loss(net(images), targets, cfg["aux_weight"])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at iteration {it} "
                    f"({ {k: float(v) for k, v in losses.items()} }); "
                    "lower lr, raise warmup_iters, or use SyncBN / GroupNorm with small per-GPU batches"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg["grad_clip"]:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
            scaler.step(opt)
            scaler.update()
            step = it + 1
            bar.update(1, loss=float(loss.detach()), lr=lr)
            if step % cfg["log_period"] == 0 or step == cfg["max_iter"]:
                rec = {k: float(all_reduce_mean(v.detach())) for k, v in losses.items()}
                logger.log(
                    {
                        "iter": step,
                        "lr": lr,
                        "loss": sum(rec.values()),
                        **rec,
                        "time": time.perf_counter() - t0,
                    },
                    step=step,
                )
            if step % cfg["checkpoint_period"] == 0 or step == cfg["max_iter"]:
                save(step)
            if (
                val_ds is not None
                and cfg["eval_period"]
                and step % cfg["eval_period"] == 0
                and step != cfg["max_iter"]
            ):
                metrics = evaluate(cfg, net, val_ds, info)
                logger.log({"iter": step, **metrics}, step=step)
                net.train()
    if val_ds is not None:
        metrics = evaluate(cfg, net, val_ds, info)
        logger.log({"iter": cfg["max_iter"], **metrics}, step=cfg["max_iter"])
    logger.close()
    return metrics


def evaluate_checkpoint(cfg: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """Load ``checkpoint`` (a ``last.ckpt`` of :func:`train`) and evaluate it on the config's val set."""
    info = init_distributed(None if cfg["device"] == "auto" else cfg["device"])
    try:
        _, val_ds = build_datasets(cfg, train=False)
        assert val_ds is not None
        state = load_checkpoint(checkpoint)
        if "model" not in state or state.get("task") != cfg["task"]:
            raise ValueError(
                f"{checkpoint} is not a {cfg['task']} checkpoint of 'splitattn "
                f"{'detect' if cfg['task'] == 'detection' else 'segment'} train'"
            )
        model = build_model(cfg, int(state.get("num_classes") or _num_classes(cfg, val_ds))).to(info.device)
        model.load_state_dict(state["model"])
        metrics = evaluate(cfg, model, val_ds, info)
        return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    finally:
        cleanup_distributed()


__all__ = ["train", "evaluate_checkpoint", "build_model", "build_datasets", "lr_factor", "evaluate"]
