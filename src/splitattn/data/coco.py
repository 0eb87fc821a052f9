"""COCO detection / instance segmentation on torchvision's ``CocoDetection`` and its transforms-v2
wrapper (XYXY ``BoundingBoxes``, decoded polygon / RLE ``Mask``), with contiguous labels 1..K."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError, MissingFileError
from .imagefolder import SKIP_HINT, load_rgb, read_or_skip


class _CocoImages(datasets.CocoDetection):
    """torchvision's ``CocoDetection`` reading images with :func:`load_rgb` (errors name the file) and
    returning only the annotations to keep, each checked and with ``area``/``iscrowd`` filled in."""

    def __init__(self, image_dir: Path, ann_file: Path, keep_crowd: bool) -> None:
        try:
            super().__init__(str(image_dir), str(ann_file))
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError) as e:
            raise DataError(f"{ann_file} is not a COCO instances json ({e})") from e
        for key in ("images", "annotations", "categories"):
            if key not in self.coco.dataset:
                raise DataError(f"{ann_file} has no '{key}' list: it is not a COCO instances file")
        self.keep_crowd = keep_crowd
        self.cat_ids = set(self.coco.getCatIds())

    def _load_image(self, id: int) -> Image.Image:
        return load_rgb(os.path.join(self.root, self.coco.imgs[id]["file_name"]), SKIP_HINT)

    def _load_target(self, id: int) -> list[dict[str, Any]]:
        anns = []
        for a in super()._load_target(id):
            if a.get("iscrowd", 0) and not self.keep_crowd:
                continue
            if a["category_id"] not in self.cat_ids:
                raise DataError(
                    f"annotation {a.get('id')} of image {id} has category_id {a['category_id']} "
                    "that is not in the json's 'categories'"
                )
            x, y, w, h = a["bbox"]
            anns.append({**a, "area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0))})
        return anns


class CocoDetection(Dataset):
    """COCO-format detection / instance segmentation dataset.

    Args:
        image_dir: folder of the images named in the json's ``file_name``.
        ann_file: ``instances_*.json``.
        transforms: ``(image, target) -> (image, target)``, e.g. :class:`~.transforms.DetectionTransform`,
            called with a uint8 ``tv_tensors.Image`` and ``BoundingBoxes`` / ``Mask`` targets; without
            one images are returned as float tensors in [0, 1].
        masks: decode polygons / RLE into ``target["masks"]`` (``(N, H, W)`` uint8) for Mask R-CNN.
        keep_crowd: keep ``iscrowd=1`` objects in the targets (default: dropped, as detectron2 does for
            training; COCOeval still uses them from the json to ignore matching detections).
        remove_empty: leave out images without any (non-crowd) object, for training.
        skip_bad_images: return ``None`` for an unreadable image instead of raising
            (:func:`~.transforms.detection_collate` drops and counts them).

    Items:
        ``(image (3, H, W), {"boxes": (N, 4) xyxy float, "labels": (N,) int64 in 1..K, "masks"?,
        "image_id": int, "area": (N,), "iscrowd": (N,)})``. Boxes are clipped to the image and empty
        ones dropped. Labels are contiguous (``label_to_cat_id`` maps them back to the json's category
        ids); 0 is the background.

    Raises:
        MissingFileError: the annotation file or image folder does not exist.
        DataError: the json is not a COCO instances file, or names an unknown category.
        BadImageError: an image is missing, unreadable or too large (when the item is read), naming it.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        masks: bool = False,
        keep_crowd: bool = False,
        remove_empty: bool = False,
        skip_bad_images: bool = False,
    ) -> None:
        image_dir, ann_file = Path(image_dir), Path(ann_file)
        if not ann_file.is_file():
            raise MissingFileError(
                f"COCO annotation file {ann_file} not found "
                "(expected e.g. annotations/instances_train2017.json)"
            )
        if not image_dir.is_dir():
            raise MissingFileError(f"COCO image folder {image_dir} not found (expected e.g. train2017/)")
        base = _CocoImages(image_dir, ann_file, keep_crowd)
        self.image_dir, self.coco = image_dir, base.coco
        if remove_empty:
            base.ids = [i for i in base.ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        self.ids = base.ids
        self.label_to_cat_id = [0] + sorted(base.cat_ids)
        self.cat_id_to_label = {c: i for i, c in enumerate(self.label_to_cat_id) if i > 0}
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in self.label_to_cat_id[1:]]
        self.transforms, self.masks, self.keep_crowd = transforms, masks, keep_crowd
        self.skip_bad_images = skip_bad_images
        keys = {"image_id", "boxes", "labels", "area", "iscrowd"} | ({"masks"} if masks else set())
        self._data = datasets.wrap_dataset_for_transforms_v2(base, target_keys=keys)

    @property
    def num_classes(self) -> int:
        """Object classes + background (torchvision's ``num_classes``)."""
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.ids)

    def _target(self, raw: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Clip boxes to the image, drop empty ones, map category ids to labels."""
        n = len(raw.get("labels", ()))
        boxes = raw["boxes"].as_subclass(torch.Tensor).float() if n else torch.zeros(0, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = [self.cat_id_to_label[int(c)] for c in raw["labels"]] if n else []
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "image_id": raw["image_id"],
            "area": torch.tensor(raw.get("area", []), dtype=torch.float32)[keep],
            "iscrowd": torch.tensor(raw.get("iscrowd", []), dtype=torch.int64)[keep],
        }
        if self.masks:
            m = raw["masks"].as_subclass(torch.Tensor) if n else torch.zeros(
                0, height, width, dtype=torch.uint8)
            target["masks"] = tv_tensors.Mask(m[keep])
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        return read_or_skip(self._read, index, self.skip_bad_images)

    def _read(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        pil, raw = self._data[index]
        image = TF.to_image(pil)
        target = self._target(raw, *image.shape[-2:])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = TF.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image, target


__all__ = ["CocoDetection"]
