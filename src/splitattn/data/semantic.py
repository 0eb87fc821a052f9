"""Semantic segmentation datasets: ADE20K (SceneParsing) and Cityscapes label maps.

torchvision's ``Cityscapes`` lists files in ``os.listdir`` order (not reproducible across file systems)
and does not check that every image has its label map, so both layouts are listed here, sorted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError, DataError, MissingFileError
from .imagefolder import (
    DEFAULT_SHORT_SIDE,
    SKIP_HINT,
    decode_image_file,
    load_rgb,
    read_or_skip,
    transform_short_side,
)

# Cityscapes labelIds -> the 19 train ids (road ... bicycle); every other id is ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
# 8-bit label maps with 255 as the ignore index hold classes 0..254.
MAX_ADE20K_CLASSES = 255
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)


def _find_pairs(
    img_dir: Path, lab_dir: Path, pattern: str, label_of: Callable[[Path], Path], layout: str
) -> list[tuple[Path, Path]]:
    """(image, label map) pairs: images matching ``pattern`` under ``img_dir``, each with the label map
    ``label_of(image)``; a missing folder, label map or image set raises, naming the path and ``layout``."""
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise MissingFileError(f"{d} not found: {layout}")
    pairs = []
    for img in sorted(img_dir.glob(pattern)):
        lab = label_of(img)
        if not lab.is_file():
            raise MissingFileError(f"label map {lab} for image {img} is missing")
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f"no {pattern} images under {img_dir}: {layout}")
    return pairs


def load_label_map(path: str | os.PathLike, hint: str = "delete or replace it") -> np.ndarray:
    """A single-channel label map as stored (``(H, W)`` ids, palette indices for ``P`` images).

    Raises:
        BadImageError: the file is missing, unreadable or too large (the message ends with ``hint``);
            DataError: it has several channels.
    """
    raw = decode_image_file(path, np.asarray, "label map", hint)
    if raw.ndim != 2:
        raise DataError(f"label map {path} has shape {raw.shape}; expected a single-channel PNG of ids")
    return raw


class _SegFolder(Dataset):
    """(image, label map) pairs with a label lookup table; subclasses find the pairs.

    Items: ``(image (3, H, W) float in [0, 1], label (H, W) int64)`` without ``transforms``; with one,
    whatever ``transforms(image uint8 tv_tensors.Image, label (1, H, W) tv_tensors.Mask)`` returns;
    ``None`` for an unreadable image or label map when ``skip_bad_images``.
    """

    ignore_index = 255

    def __init__(self, pairs: list[tuple[Path, Path]], lut: np.ndarray, num_classes: int,
                 transforms: Callable | None, skip_bad_images: bool) -> None:
        self.pairs, self.lut, self.num_classes, self.transforms = pairs, lut, num_classes, transforms
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return read_or_skip(self._read, index, self.skip_bad_images)

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lab_path = self.pairs[index]
        short_side = transform_short_side(self.transforms) or DEFAULT_SHORT_SIDE
        image = TF.to_image(load_rgb(img_path, SKIP_HINT, short_side))
        raw = load_label_map(lab_path, SKIP_HINT)
        if raw.shape != tuple(image.shape[-2:]):
            raise DataError(
                f"label map {lab_path} is {raw.shape} but its image {img_path} is {tuple(image.shape[-2:])}"
            )
        if raw.max(initial=0) >= len(self.lut):
            raise DataError(f"label map {lab_path} has id {int(raw.max())}, above {len(self.lut) - 1}; "
                            "expected 8-bit label ids")
        label = tv_tensors.Mask(torch.from_numpy(self.lut[raw.astype(np.int64)]).unsqueeze(0))
        if self.transforms is not None:
            return self.transforms(image, label)
        image = TF.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor)
        return image, label.as_subclass(torch.Tensor)[0].long()


class ADE20KSegmentation(_SegFolder):
    """ADE20K (SceneParsing) layout: ``root/images/{split}/*.jpg`` + ``root/annotations/{split}/*.png``.

    Label 0 ("other") becomes ``ignore_index`` (255) and 1..num_classes become 0..num_classes-1; larger
    values are ignored too.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``"training"`` or ``"validation"``.
        transforms: ``(image, label) -> (image, label)``, e.g. :class:`~.transforms.SegmentationTransform`.
        num_classes: 150 for ADE20K; at most :data:`MAX_ADE20K_CLASSES` (255).
        skip_bad_images: return ``None`` for an unreadable image or label map instead of raising
            (:func:`~.transforms.segmentation_collate` drops and counts them).

    Raises:
        ConfigError: ``num_classes`` is not in 1..255.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transforms: Callable | None = None,
        num_classes: int = 150,
        skip_bad_images: bool = False,
    ) -> None:
        if type(num_classes) is not int or not 1 <= num_classes <= MAX_ADE20K_CLASSES:
            # The loss, metric and padding of the whole pipeline use 255 for ignored pixels, so a 256th
            # class would be ignored; and 8-bit label maps cannot name it.
            raise ConfigError(
                f"num_classes must be an integer from 1 to {MAX_ADE20K_CLASSES} for the ADE20K layout, got "
                f"{num_classes!r}: its label maps are 8-bit PNGs (ids 1..255 are the classes, 0 is 'other') "
                "and 255 marks ignored pixels; merge classes to fit"
            )
        root = Path(root)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        pairs = _find_pairs(
            img_dir, ann_dir, "*.jpg", lambda img: ann_dir / f"{img.stem}.png",
            f"ADE20K layout is root/images/{split}/*.jpg and root/annotations/{split}/*.png",
        )
        lut = np.full(256, self.ignore_index, np.uint8)
        lut[1 : num_classes + 1] = np.arange(num_classes)
        super().__init__(pairs, lut, num_classes, transforms, skip_bad_images)


class CityscapesSegmentation(_SegFolder):
    """Cityscapes layout: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
    ``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``; labelIds are mapped to the 19 train ids,
    all others to ``ignore_index`` (255). Arguments as :class:`ADE20KSegmentation`'s.
    """

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None,
                 skip_bad_images: bool = False) -> None:
        root = Path(root)
        img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split

        def label_of(img: Path) -> Path:
            stem = img.name[: -len("_leftImg8bit.png")]
            return gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"

        pairs = _find_pairs(
            img_dir, gt_dir, "*/*_leftImg8bit.png", label_of,
            f"Cityscapes layout is root/leftImg8bit/{split}/<city>/ and root/gtFine/{split}/<city>/",
        )
        lut = np.full(256, self.ignore_index, np.uint8)
        for k, v in CITYSCAPES_LABEL_TO_TRAIN.items():
            lut[k] = v
        super().__init__(pairs, lut, len(CITYSCAPES_CLASSES), transforms, skip_bad_images)


__all__ = [
    "ADE20KSegmentation",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN",
    "CityscapesSegmentation",
    "MAX_ADE20K_CLASSES",
    "load_label_map",
]
