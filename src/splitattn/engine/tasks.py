"""What the :class:`~splitattn.engine.trainer.Trainer` needs from each kind of run: one small interface.

A task builds the datasets and the model from its config section, turns a batch into a dict of losses,
and evaluates a model into named metrics, one of which (``primary_metric``, higher is better) chooses
``best.ckpt``. The loop, checkpoints, resume, schedules, AMP, EMA and DDP are the trainer's, shared by all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.augment import create_mixup, create_train_transform
from ..data.coco import CocoDetection
from ..data.imagefolder import ImageFolderDataset, check_same_classes, collate_skip_bad, resolve_split_dirs
from ..data.preprocessing import apply_data_config, resolve_data_config
from ..data.semantic import ADE20KSegmentation, CityscapesSegmentation
from ..data.transforms import (
    DetectionTransform,
    SegmentationTransform,
    create_eval_transform,
    detection_collate,
    segmentation_collate,
)
from ..errors import CheckpointError, ConfigError, DataError
from ..evaluation.evaluate import (
    evaluate_classifier,
    evaluate_detection,
    evaluate_segmentation,
    shard_dataset,
)
from ..models import (
    create_detection_model,
    create_model,
    create_segmentation_model,
    get_pretrained_cfg,
    segmentation_loss,
    set_drop_block_prob,
)
from ..models._spec import RECORD_KEY, ModelSpec, read_spec
from ..utils.distributed import is_dist
from ..utils.validation import Invalid
from .cadence import Cadence, EpochCadence, IterationCadence
from .config import (
    ClassificationConfig,
    DetectionConfig,
    RunConfig,
    SegmentationConfig,
    per_process_batch,
)
from .schedule import WarmupSchedule, drop_block_prob_at

Batch = tuple[Any, Any, int]  # inputs, targets, number of unreadable images skipped


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (inside lists, tuples and dicts too) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


class Task:
    """The interface: subclasses set the class attributes and implement the methods.

    The trainer reads only the keys every run shares (:class:`~splitattn.engine.config.RunConfig`); what a
    task's own section says reaches it through these methods: the datasets, model and losses, the LR and its
    schedule, the length of the run and its :meth:`cadence`, how the model is wrapped for DDP.

    Attributes:
        config_class: the task's config section; its ``task`` default is the task's name.
        primary_metric: the key of :meth:`evaluate`'s result that chooses ``best.ckpt`` (higher is better).
    """

    config_class: ClassVar[type[RunConfig]]
    primary_metric: ClassVar[str]
    collate: Callable[[list[Any]], Any]

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        """The config's ``task`` value."""
        return self.config_class.task

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """``(train dataset, val dataset or None)``; items go through :attr:`collate`."""
        raise NotImplementedError

    def build_val_dataset(self, ck: dict[str, Any]) -> Dataset:
        """The validation set alone, for evaluating checkpoint ``ck`` (which gives the classes)."""
        raise NotImplementedError

    def build_model(self, train_ds: Dataset) -> nn.Module:
        raise NotImplementedError

    def for_ddp(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """``(model, DistributedDataParallel keyword arguments)`` for a run of several processes; the
        model is converted here (e.g. to SyncBatchNorm) before it moves to the device."""
        return model, {}

    def peak_lr(self, global_batch: int) -> float:
        raise NotImplementedError

    def total_steps(self, steps_per_epoch: int) -> int:
        """The length of the run, in iterations."""
        raise NotImplementedError

    def cadence(self, steps_per_epoch: int) -> Cadence:
        """When the run logs, evaluates and saves."""
        raise NotImplementedError

    def schedule(self, steps_per_epoch: int, peak_lr: float) -> WarmupSchedule:
        raise NotImplementedError

    def prepare(self, batch: Any, device: torch.device, channels_last: bool) -> Batch:
        """A loader batch ``(images, targets, n_skipped)`` -> the same on ``device``.

        Raises:
            DataError: every image of the batch was unreadable (and skipped).
        """
        images, targets, n_bad = batch
        if len(images) == 0:
            raise DataError(f"all {n_bad} images of a training batch were unreadable; remove them from the "
                            "training data")
        images, targets = to_device((images, targets), device)
        return images, targets, n_bad

    def losses(self, model: nn.Module, inputs: Any, targets: Any, step: int, total: int,
               ) -> dict[str, torch.Tensor]:
        """The named losses of one batch (their sum is minimised), computed under autocast."""
        raise NotImplementedError

    def log_extras(self, step: int, total: int) -> dict[str, float]:
        """Extra values for the metrics record written after iteration ``step``."""
        return {}

    def evaluate(self, model: nn.Module, val_ds: Dataset, device: torch.device, amp: str,
                 channels_last: bool) -> dict[str, float]:
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint records so the model can be rebuilt and used without the config."""
        return {}

    def check_resume(self, ck: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another run (other classes, other architecture) with one clear line."""
        meta = self.checkpoint_meta()
        for key in ("model_name", "backbone", "model_kwargs", "num_classes", "classes"):
            if key in meta and key in ck and ck[key] != meta[key]:
                theirs, ours = ck[key], meta[key]
                if isinstance(ours, list):
                    theirs, ours = f"{len(theirs)} classes {theirs[:5]}", f"{len(ours)} classes {ours[:5]}"
                raise CheckpointError(f"checkpoint {path} was trained with {key} {theirs}, this run has "
                                      f"{ours}; use another --output, or --resume with a matching checkpoint")


class ClassificationTask(Task):
    """The paper's ImageNet recipe on an ImageFolder (``data/train``, ``data/val``)."""

    config_class = ClassificationConfig
    primary_metric = "val_top1"
    collate = staticmethod(collate_skip_bad)

    cfg: ClassificationConfig

    def __init__(self, cfg: ClassificationConfig) -> None:
        super().__init__(cfg)
        self.data_cfg = resolve_data_config(
            get_pretrained_cfg(cfg.model), img_size=cfg.eval_img_size or cfg.img_size, crop_pct=cfg.crop_pct,
            interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
        self.classes: list[str] = []
        self.mixup: Callable | None = None

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        c, d = self.cfg, self.data_cfg
        train_dir, val_dir = resolve_split_dirs(c.data)
        train_tf = create_train_transform(c.img_size, c.rrc_scale, c.rrc_ratio, c.hflip, c.auto_augment,
                                          c.color_jitter, c.pca_lighting, c.interpolation, d.mean, d.std)
        train = ImageFolderDataset(train_dir, train_tf, skip_bad_images=c.skip_bad_images, what="train")
        val = ImageFolderDataset(val_dir, create_eval_transform(d), skip_bad_images=c.skip_bad_images,
                                 what="val")
        check_same_classes(train.classes, val.classes, train_dir, val_dir)
        self.classes = list(train.classes)
        self.mixup = create_mixup(c.mixup_alpha, len(self.classes))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        return train, val

    def build_val_dataset(self, ck: dict[str, Any]) -> Dataset:
        _, val_dir = resolve_split_dirs(self.cfg.data)
        self.classes = list(self._record(ck, "checkpoint").label_names or ())
        return ImageFolderDataset(val_dir, create_eval_transform(self.data_cfg), classes=self.classes,
                                  skip_bad_images=self.cfg.skip_bad_images, what="val")

    def build_model(self, train_ds: Dataset) -> nn.Module:
        c = self.cfg
        model = create_model(c.model, pretrained=c.pretrained or False, num_classes=len(self.classes),
                             drop_rate=c.drop_rate, drop_block_rate=c.drop_block_rate,
                             zero_init_last=c.zero_init_last, norm_layer=c.norm_layer,
                             **{"in_chans": 3, **c.model_kwargs})  # RGB loader, whatever the weights had
        self.spec = ModelSpec.from_model(model, self.classes, self.data_cfg.to_dict())
        return apply_data_config(model, self.data_cfg)

    def for_ddp(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        return (nn.SyncBatchNorm.convert_sync_batchnorm(model) if self.cfg.sync_bn else model), {}

    def peak_lr(self, global_batch: int) -> float:
        return float(self.cfg.lr or self.cfg.base_lr * global_batch / self.cfg.lr_base_batch)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.cfg.epochs * steps_per_epoch

    def cadence(self, steps_per_epoch: int) -> Cadence:
        return EpochCadence(steps_per_epoch, self.cfg.eval_interval)

    def schedule(self, steps_per_epoch: int, peak_lr: float) -> WarmupSchedule:
        return WarmupSchedule("cosine", self.total_steps(steps_per_epoch),
                              self.cfg.warmup_epochs * steps_per_epoch,
                              min_factor=self.cfg.min_lr / peak_lr if peak_lr else 0.0)

    def prepare(self, batch: Any, device: torch.device, channels_last: bool) -> Batch:
        x, y, n_bad = batch
        if x.shape[0] < 2:
            raise DataError("a training batch has fewer than 2 readable images; remove the unreadable "
                            "images from the train folder")
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True), n_bad

    def losses(self, model: nn.Module, inputs: Any, targets: Any, step: int, total: int,
               ) -> dict[str, torch.Tensor]:
        if self.cfg.drop_block_rate > 0:
            set_drop_block_prob(model, drop_block_prob_at(step, total, self.cfg.drop_block_rate))
        if self.mixup is not None:
            inputs, targets = self.mixup(inputs, targets)
        return {"loss": self.criterion(model(inputs).float(), targets)}

    def log_extras(self, step: int, total: int) -> dict[str, float]:
        return {"drop_block": drop_block_prob_at(step, total, self.cfg.drop_block_rate)}

    def evaluate(self, model: nn.Module, val_ds: Dataset, device: torch.device, amp: str,
                 channels_last: bool) -> dict[str, float]:
        batch = per_process_batch(self.cfg, torch.distributed.get_world_size() if is_dist() else 1)
        loader = DataLoader(shard_dataset(val_ds), batch_size=batch, shuffle=False,
                            num_workers=self.cfg.workers, pin_memory=device.type == "cuda",
                            collate_fn=collate_skip_bad, generator=torch.Generator())
        v = evaluate_classifier(model, loader, device, amp, channels_last)
        out = {"val_loss": v["loss"], "val_top1": v["top1"], "val_top5": v["top5"]}
        if v["skipped"]:
            out["skipped_val_images"] = v["skipped"]
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        return {RECORD_KEY: self.spec.to_json()}

    @staticmethod
    def _record(ck: dict[str, Any], path: Any) -> ModelSpec:
        """The model record of checkpoint ``ck`` (read from ``path``), validated."""
        try:
            spec = read_spec(ck, encoded=False)
        except Invalid as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        if spec is None:
            raise CheckpointError(f"checkpoint {path} does not record its model; is it a checkpoint of "
                                  "`splitattn train`?")
        return spec

    def check_resume(self, ck: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another model: architecture (a new dropout rate or eval preprocessing may
        change on resume), classes, input channels."""
        record = self._record(ck, path)
        theirs, ours = ({"model_name": s.model_name, "architecture": s.function, "num_classes": s.num_classes,
                         "in_chans": s.in_chans, "label_names": list(s.label_names or ())}
                        for s in (record, self.spec))
        for key in ours:
            if theirs.get(key) != ours[key]:
                a, b = theirs.get(key), ours[key]
                if key == "label_names":
                    a, b = f"{len(a or ())} classes {list(a or ())[:5]}", f"{len(b)} classes {list(b)[:5]}"
                elif key == "architecture":
                    diff = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
                    a, b = ({k: d.get(k) for k in diff} for d in (a, b))
                raise CheckpointError(f"checkpoint {path} was trained with {key} {a}, this run has {b}; use "
                                      "another --output, or --resume with a matching checkpoint")


class IterationTask(Task):
    """A task whose section gives ``lr``, ``max_iter``, ``log_period``, ``eval_period`` and
    ``find_unused_parameters`` (detection, segmentation): detectron2's rhythm in iterations."""

    cfg: DetectionConfig | SegmentationConfig

    def build_val_dataset(self, ck: dict[str, Any]) -> Dataset:
        self.num_classes = int(ck["num_classes"])
        return self._val()

    def _val(self) -> Dataset:
        raise NotImplementedError

    def peak_lr(self, global_batch: int) -> float:
        return float(self.cfg.lr)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.cfg.max_iter

    def cadence(self, steps_per_epoch: int) -> Cadence:
        return IterationCadence(self.cfg.log_period, self.cfg.eval_period)

    def for_ddp(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        return model, {"find_unused_parameters": self.cfg.find_unused_parameters}


class DetectionTask(IterationTask):
    """Faster / Cascade / Mask R-CNN + FPN on COCO-format data (detectron2's 1x schedule)."""

    config_class = DetectionConfig
    primary_metric = "bbox_AP"
    collate = staticmethod(detection_collate)

    cfg: DetectionConfig

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        c = self.cfg
        _need(c, "train_images", "train_ann")
        train = CocoDetection(c.train_images, c.train_ann, DetectionTransform(True, hflip=c.hflip),
                              masks="mask" in c.model, remove_empty=True, skip_bad_images=c.skip_bad_images)
        self.num_classes = int(c.num_classes or train.num_classes)
        return train, (self._val() if c.val_ann else None)

    def _val(self) -> Dataset:
        _need(self.cfg, "val_images", "val_ann")
        return CocoDetection(self.cfg.val_images, self.cfg.val_ann, DetectionTransform(False), masks=False,
                             skip_bad_images=self.cfg.skip_bad_images)

    def build_model(self, train_ds: Dataset | None) -> nn.Module:
        c = self.cfg
        return create_detection_model(
            c.model, c.backbone, num_classes=self.num_classes, pretrained_backbone=c.pretrained_backbone,
            backbone_norm=c.backbone_norm, freeze_at=c.freeze_at, fpn_norm=c.fpn_norm, box_head=c.box_head,
            head_norm=c.head_norm, min_size=tuple(c.min_size), max_size=c.max_size,
            fpn_channels=c.fpn_channels, representation_size=c.representation_size,
            backbone_kwargs=c.backbone_kwargs, **c.model_kwargs)

    def schedule(self, steps_per_epoch: int, peak_lr: float) -> WarmupSchedule:
        c = self.cfg
        return WarmupSchedule("multistep", c.max_iter, c.warmup_iters, c.warmup_factor,
                              milestones=list(c.lr_steps), gamma=c.lr_gamma)

    def losses(self, model: nn.Module, inputs: Any, targets: Any, step: int, total: int,
               ) -> dict[str, torch.Tensor]:
        return model(inputs, targets)

    def evaluate(self, model: nn.Module, val_ds: Dataset, device: torch.device, amp: str,
                 channels_last: bool) -> dict[str, float]:
        res = evaluate_detection(model, val_ds, device, batch_size=2, amp=amp)  # type: ignore[arg-type]
        return {f"{t}_{k}": v for t, d in res.items() for k, v in d.items()}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"model_name": self.cfg.model, "backbone": self.cfg.backbone, "num_classes": self.num_classes}


class SegmentationTask(IterationTask):
    """DeepLabV3 on ADE20K or Cityscapes layouts (poly LR schedule)."""

    config_class = SegmentationConfig
    primary_metric = "mIoU"
    collate = staticmethod(segmentation_collate)

    cfg: SegmentationConfig

    def _dataset(self, split: str | None, train: bool) -> Dataset:
        c = self.cfg
        default = {"ade20k": ("training", "validation"), "cityscapes": ("train", "val")}[c.dataset]
        split = split or default[0 if train else 1]
        tf = (SegmentationTransform(True, c.crop_size, c.base_size, tuple(c.scale_range), c.hflip) if train
              else SegmentationTransform(False, eval_size=c.eval_size))
        if c.dataset == "ade20k":
            return ADE20KSegmentation(c.data_root, split, tf, num_classes=c.num_classes or 150,
                                      skip_bad_images=c.skip_bad_images)
        return CityscapesSegmentation(c.data_root, split, tf, skip_bad_images=c.skip_bad_images)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        _need(self.cfg, "data_root")
        train = self._dataset(self.cfg.train_split, True)
        self.num_classes = int(self.cfg.num_classes or train.num_classes)  # type: ignore[attr-defined]
        return train, self._val()

    def _val(self) -> Dataset:
        _need(self.cfg, "data_root")
        return self._dataset(self.cfg.val_split, False)

    def build_model(self, train_ds: Dataset | None) -> nn.Module:
        c = self.cfg
        return create_segmentation_model(
            c.model, c.backbone, num_classes=self.num_classes, output_stride=c.output_stride,
            aux_loss=c.aux_loss, pretrained_backbone=c.pretrained_backbone, norm=c.norm,
            freeze_at=c.freeze_at, backbone_kwargs=c.backbone_kwargs)

    def schedule(self, steps_per_epoch: int, peak_lr: float) -> WarmupSchedule:
        c = self.cfg
        return WarmupSchedule("poly", c.max_iter, c.warmup_iters, c.warmup_factor, power=c.poly_power)

    def losses(self, model: nn.Module, inputs: Any, targets: Any, step: int, total: int,
               ) -> dict[str, torch.Tensor]:
        return segmentation_loss(model(inputs), targets, self.cfg.aux_weight)

    def evaluate(self, model: nn.Module, val_ds: Dataset, device: torch.device, amp: str,
                 channels_last: bool) -> dict[str, float]:
        res = evaluate_segmentation(model, val_ds, self.num_classes, device, amp=amp)
        return {"mIoU": res["mIoU"], "pixel_acc": res["pixel_acc"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"model_name": self.cfg.model, "backbone": self.cfg.backbone, "num_classes": self.num_classes}


def _need(cfg: RunConfig, *keys: str) -> None:
    missing = [k for k in keys if not getattr(cfg, k)]
    if missing:
        raise ConfigError(f"the {cfg.task} config needs {', '.join(missing)} (set them in the YAML or as "
                          "KEY=VALUE)")


TASKS: dict[str, type[Task]] = {t.config_class.task: t for t in (ClassificationTask, DetectionTask,
                                                                  SegmentationTask)}
"""The task of each config section, by name: the keys of :data:`~splitattn.engine.config.CONFIG_CLASSES`."""


def create_task(cfg: RunConfig) -> Task:
    """The task object for a config (by its ``task`` key)."""
    return TASKS[cfg.task](cfg)


__all__ = ["ClassificationTask", "DetectionTask", "IterationTask", "SegmentationTask", "TASKS", "Task",
           "create_task", "to_device"]
