"""COCO detection / instance segmentation on torchvision's ``CocoDetection`` and its transforms-v2
wrapper (XYXY ``BoundingBoxes``, decoded polygon / RLE ``Mask``), with contiguous labels 1..K."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError, MissingFileError, require
from ..utils.validation import short_repr
from .imagefolder import SKIP_HINT, load_rgb, read_or_skip

Where = tuple[Path, str]  # (json file, "annotation 12 (annotations[3])"): the place named in messages


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _bad(where: Where, field: str, value: Any, expected: str) -> DataError:
    return DataError(f"{where[0]}: {where[1]} has {field} {short_repr(value)}; {expected}")


def _missing(where: Where, field: str, expected: str) -> DataError:
    return DataError(f"{where[0]}: {where[1]} has no '{field}'; {expected}")


def _index_ids(ann_file: Path, entries: list[Any], key: str, fields: dict[str, type]) -> dict[int, int]:
    """``{id: position}`` of the ``key`` list's entries, each a dict with an int ``id`` and ``fields``
    of the given types; a duplicate id names both entries (pycocotools would keep only the last)."""
    where_of: dict[int, int] = {}
    for i, e in enumerate(entries):
        where = (ann_file, f"{key}[{i}]")
        if not isinstance(e, dict):
            raise _bad(where, "the value", e, f"each entry of '{key}' must be an object")
        if "id" not in e:
            raise _missing(where, "id", "give every entry an integer id")
        if type(e["id"]) is not int:
            raise _bad(where, "id", e["id"], "ids must be integers")
        for field, kind in fields.items():
            if field not in e:
                raise _missing(where, field, f"it must be a {kind.__name__}")
            if not isinstance(e[field], kind):
                raise _bad(where, field, e[field], f"it must be a {kind.__name__}")
        first = where_of.setdefault(e["id"], i)
        if first != i:
            names = (f" ({entries[first].get('file_name')!r}, {e.get('file_name')!r})" if key == "images"
                     else "")
            raise DataError(f"{ann_file}: {key}[{first}] and {key}[{i}] both have id {e['id']}{names}; "
                            "give every entry its own id")
    return where_of


def _check_box(where: Where, a: dict[str, Any]) -> None:
    if "bbox" not in a:
        raise _missing(where, "bbox", "give [x, y, width, height] in pixels")
    box = a["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and min(box[2:]) >= 0):
        raise _bad(where, "bbox", box, "expected [x, y, width, height]: 4 finite numbers, width and "
                                       "height >= 0")
    if "area" in a and not (_is_number(a["area"]) and a["area"] >= 0):
        raise _bad(where, "area", a["area"], "expected a finite number >= 0")
    if a.get("iscrowd", 0) not in (0, 1) or type(a.get("iscrowd", 0)) is not int:
        raise _bad(where, "iscrowd", a["iscrowd"], "expected 0 or 1")


def _check_segmentation(where: Where, seg: Any, image: dict[str, Any]) -> None:
    """Polygons (lists of >= 3 x, y points) or an RLE of the image's size."""
    if isinstance(seg, list):
        for poly in seg:
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and set(map(type, poly)) <= {int, float} and math.isfinite(sum(poly))):
                raise _bad(where, "segmentation polygon", poly, "each polygon must be a list of at least 3 "
                                                                 "x, y points (6 or more finite numbers)")
        if seg:
            return
        raise _bad(where, "segmentation", seg, "expected polygons or an RLE; remove the annotation or "
                                               "give it a mask")
    if not isinstance(seg, dict) or not {"size", "counts"} <= seg.keys():
        raise _bad(where, "segmentation", seg, "expected a list of polygons or an RLE {'size', 'counts'}")
    size, counts = seg["size"], seg["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)):
        raise _bad(where, "segmentation size", size, "expected [height, width]")
    hw = [image.get("height"), image.get("width")]
    if None not in hw and size != hw:
        raise _bad(where, "an RLE mask of size", size, f"its image {image['id']} ({image['file_name']}) is "
                                                       f"{hw} (height, width): re-encode the mask")
    if isinstance(counts, list):
        if not (all(type(v) is int and v >= 0 for v in counts) and sum(counts) == size[0] * size[1]):
            raise _bad(where, "RLE counts", counts, f"expected run lengths (integers >= 0) summing to "
                                                    f"{size[0]} x {size[1]} pixels")
    elif not isinstance(counts, str):
        raise _bad(where, "RLE counts", counts, "expected a list of run lengths or a compressed string")


def check_coco_json(ann_file: Path, data: Any, masks: bool) -> None:
    """Check a COCO instances json in one pass, before pycocotools indexes it.

    Raises:
        DataError: naming ``ann_file``, the entry (annotation id) and the field: missing lists, ids or
            fields, duplicate ids (both entries), a bbox other than 4 finite numbers, an unknown image or
            category, and (with ``masks``) a missing, empty or malformed polygon / RLE, or an RLE whose
            size is not its image's.
    """
    if not isinstance(data, dict):
        raise DataError(f"{ann_file} holds a {type(data).__name__}, not a COCO instances object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file} has no '{key}' list: it is not a COCO instances file")
    images = data["images"]
    image_at = _index_ids(ann_file, images, "images", {"file_name": str})
    for i in image_at.values():
        for field in ("height", "width"):
            v = images[i].get(field)
            if v is not None and not (type(v) is int and v > 0):
                raise _bad((ann_file, f"images[{i}] (id {images[i]['id']})"), field, v, "expected pixels > 0")
    cats = _index_ids(ann_file, data["categories"], "categories", {"name": str})
    anns = data["annotations"]
    _index_ids(ann_file, anns, "annotations", {})
    for i, a in enumerate(anns):
        where = (ann_file, f"annotation {a['id']} (annotations[{i}])")
        for field, known, key in (("image_id", image_at, "images"), ("category_id", cats, "categories")):
            if field not in a:
                raise _missing(where, field, f"give the id of an entry of the json's '{key}'")
            if type(a[field]) is not int or a[field] not in known:
                raise _bad(where, field, a[field], f"that is not in the json's '{key}'")
        _check_box(where, a)
        if masks:
            if "segmentation" not in a:
                raise _missing(where, "segmentation", "masks need polygons or an RLE")
            _check_segmentation(where, a["segmentation"], images[image_at[a["image_id"]]])


class _CocoImages(datasets.CocoDetection):
    """torchvision's ``CocoDetection`` on a checked json (:func:`check_coco_json`), reading images with
    :func:`load_rgb` (errors name the file) and returning only the annotations to keep, with
    ``area``/``iscrowd`` filled in."""

    def __init__(self, image_dir: Path, ann_file: Path, keep_crowd: bool, masks: bool) -> None:
        # CocoDetection.__init__ would index the json with pycocotools before it can be checked.
        datasets.VisionDataset.__init__(self, str(image_dir))
        try:
            with open(ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise DataError(f"{ann_file} is not a COCO instances json ({e})") from e
        check_coco_json(ann_file, data, masks)
        coco: Any = require("pycocotools.coco", "tasks", "COCO datasets")
        self.coco = coco.COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        self.ann_file, self.keep_crowd = ann_file, keep_crowd
        self.cat_ids = set(self.coco.getCatIds())

    def _load_image(self, id: int) -> Image.Image:
        return load_rgb(os.path.join(self.root, self.coco.imgs[id]["file_name"]), SKIP_HINT)

    def _load_target(self, id: int) -> list[dict[str, Any]]:
        anns = []
        for a in super()._load_target(id):
            if a.get("iscrowd", 0) and not self.keep_crowd:
                continue
            x, y, w, h = a["bbox"]
            anns.append({**a, "area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0))})
        return anns

    def __getitem__(self, index: int) -> tuple[Image.Image, list[dict[str, Any]]]:
        image, anns = super().__getitem__(index)
        size = [image.height, image.width]
        for a in anns:
            seg = a.get("segmentation")
            if isinstance(seg, dict) and seg.get("size") != size:
                name = self.coco.imgs[a["image_id"]]["file_name"]
                raise DataError(
                    f"{self.ann_file}: annotation {a['id']} has an RLE mask of size {seg.get('size')} but "
                    f"its image {name} is {size} (height, width): fix the image's height and width in the "
                    "json and re-encode the mask")
        return image, anns


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
        DataError: the json is not a COCO instances file, or an entry is malformed (the message names
            the json, the annotation id and the field; see :func:`check_coco_json`), or an RLE mask is
            not the size of its image (when the item is read).
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
        base = _CocoImages(image_dir, ann_file, keep_crowd, masks)
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


__all__ = ["CocoDetection", "check_coco_json"]
