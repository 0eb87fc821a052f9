"""Evaluation preprocessing of classifiers, and paired image / target transforms for detection and
semantic segmentation (torchvision transforms v2).

Detection: the multi-scale short-side resize (640-800, long side <= 1333) is either done here
(``scales=...``) or, the torchvision way, by the model's ``GeneralizedRCNNTransform`` (``min_size`` as a
tuple); configs use the model's, so evaluation boxes stay in the original image's coordinates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .imagefolder import drop_skipped
from .preprocessing import INTERPOLATIONS, resolve_data_config


def create_eval_transform(source: Any = None, img_size: int | None = None,
                          crop_pct: float | None = None) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float tensor ``(3, crop, crop)``.

    Resize the short side to ``round(crop / crop_pct)`` with the config's interpolation, centre-crop
    ``crop``, scale to [0, 1], normalise with mean/std (the paper's eval protocol). The transform's
    ``max_short_side`` attribute is that resized short side.

    Args:
        source: anything :func:`~splitattn.data.preprocessing.resolve_data_config` takes (a model name, a
            model, a ``DataConfig``, an ``eval_cfg`` dict, ``None`` for the defaults).
        img_size: crop side override.
        crop_pct: crop ratio override.
    """
    cfg = resolve_data_config(source, img_size=img_size, crop_pct=crop_pct)
    transform = v2.Compose([
        v2.ToImage(),
        v2.Resize(cfg.resize_size, interpolation=INTERPOLATIONS[cfg.interpolation], antialias=True),
        v2.CenterCrop(cfg.crop_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg.mean, cfg.std),
    ])
    # Read by the datasets, which reject images whose resize would be huge (imagefolder.check_resizable).
    transform.max_short_side = cfg.resize_size
    return transform


class DetectionTransform:
    """Train: optional multi-scale short-side resize, horizontal flip; both: uint8 -> float in [0, 1].

    Boxes (``tv_tensors.BoundingBoxes``) and masks (``tv_tensors.Mask``) follow the image; boxes that
    become smaller than ``min_box`` pixels are removed with their labels, masks, areas and crowd flags.
    Randomness comes from torch's global RNG (see :class:`~splitattn.data.seeded.SeededDataset`).

    Args:
        train: random flip (and random scale when ``scales`` has several values).
        scales: short-side sizes to pick from (train) or whose last value is used (eval); ``None`` keeps
            the image size.
        max_size: long-side cap for ``scales``.
        hflip: flip probability in training.
        min_box: smallest kept box side, in pixels.
    """

    def __init__(
        self,
        train: bool,
        scales: Sequence[int] | None = None,
        max_size: int = 1333,
        hflip: float = 0.5,
        min_box: float = 1.0,
    ) -> None:
        ops: list[Any] = []
        if scales:
            sizes = list(scales) if train else [list(scales)[-1]]
            ops.append(v2.RandomShortestSize(sizes, max_size=max_size, antialias=True))
        if train and hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
        self.ops = v2.Compose(ops)
        self.min_box = min_box

    def __call__(
        self, image: tv_tensors.Image, target: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.ops(image, target)
        boxes = target["boxes"]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box)
        if not bool(keep.all()):
            for k in ("boxes", "labels", "masks", "area", "iscrowd"):
                if k in target:
                    target[k] = target[k][keep]
        return image.as_subclass(torch.Tensor), target


class SegmentationTransform:
    """Semantic segmentation pipeline on (image, label map).

    Train: random scale of the short side to ``base_size * U(scale_range)``, pad (image 0, label
    ``ignore_index``) and random crop to ``crop_size``, horizontal flip. Eval: optional short-side resize
    of the image only (predictions are scored at the label's full resolution). Both: ImageNet normalise.
    Randomness comes from Python's ``random`` (see :class:`~splitattn.data.seeded.SeededDataset`).

    Returns:
        ``(image (3, H, W) float, label (H, W) int64)``.
    """

    def __init__(
        self,
        train: bool,
        crop_size: int = 512,
        base_size: int | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        ignore_index: int = 255,
        eval_size: int | None = None,
    ) -> None:
        self.train = train
        self.crop_size = crop_size
        self.base_size = base_size or crop_size
        self.scale_range = scale_range
        self.hflip = hflip
        self.ignore_index = ignore_index
        self.eval_size = eval_size

    @property
    def max_short_side(self) -> int | None:
        """The largest short side images are resized to (``None``: not resized), which the datasets use
        to reject images whose resize would be huge."""
        if self.train:
            return math.ceil(self.base_size * max(self.scale_range))
        return self.eval_size

    def _random_crop(
        self, image: tv_tensors.Image, label: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        short = int(self.base_size * random.uniform(*self.scale_range))
        image = TF.resize(image, [short], antialias=True)
        label = TF.resize(label, [short])
        h, w = image.shape[-2:]
        ph, pw = max(self.crop_size - h, 0), max(self.crop_size - w, 0)
        if ph or pw:
            image = TF.pad(image, [0, 0, pw, ph], fill=0)
            label = TF.pad(label, [0, 0, pw, ph], fill=self.ignore_index)
        h, w = image.shape[-2:]
        top, left = random.randint(0, h - self.crop_size), random.randint(0, w - self.crop_size)
        image = TF.crop(image, top, left, self.crop_size, self.crop_size)
        label = TF.crop(label, top, left, self.crop_size, self.crop_size)
        if random.random() < self.hflip:
            image, label = TF.horizontal_flip(image), TF.horizontal_flip(label)
        return image, label

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train:
            image, label = self._random_crop(image, label)
        elif self.eval_size:
            image = TF.resize(image, [self.eval_size], antialias=True)
        image = TF.to_dtype(image, torch.float32, scale=True)
        image = TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor).reshape(
            label.shape[-2:]
        ).long()


def detection_collate(batch: Sequence[tuple[Any, Any] | None]) -> tuple[list[Any], list[Any], int]:
    """Lists of the readable images and targets (torchvision detection models take lists of
    variable-size images), and the number of unreadable items (``None``) dropped.

    Returns:
        ``(images [(3, H_i, W_i)], targets [dict], n_skipped)``; empty lists when nothing was readable.
    """
    good, n_bad = drop_skipped(batch)
    return [g[0] for g in good], [g[1] for g in good], n_bad


def segmentation_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack same-size crops; eval batches of different sizes are padded (image 0, label 255).
    Unreadable items (``None``) are dropped and counted.

    Returns:
        ``(images (B, 3, H, W), labels (B, H, W) int64, n_skipped)``; ``B = 0`` (images ``(0, 3, 0, 0)``)
        when nothing was readable.
    """
    good, n_bad = drop_skipped(batch)
    if not good:
        return torch.zeros(0, 3, 0, 0), torch.zeros(0, 0, 0, dtype=torch.long), n_bad
    images, labels = zip(*good)
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    lh = max(lab.shape[-2] for lab in labels)
    lw = max(lab.shape[-1] for lab in labels)
    img = torch.zeros(len(images), images[0].shape[0], h, w)
    lab = torch.full((len(labels), lh, lw), 255, dtype=torch.long)
    for i, (x, y) in enumerate(zip(images, labels)):
        img[i, :, : x.shape[-2], : x.shape[-1]] = x
        lab[i, : y.shape[-2], : y.shape[-1]] = y
    return img, lab, n_bad


__all__ = [
    "DetectionTransform",
    "SegmentationTransform",
    "create_eval_transform",
    "detection_collate",
    "segmentation_collate",
]
