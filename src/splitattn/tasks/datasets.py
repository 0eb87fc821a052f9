"""Datasets: COCO detection / instance segmentation (pycocotools), ADE20K and Cityscapes semantic maps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

# Cityscapes labelIds -> the 19 train ids (road ... bicycle); every other id is ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)


def _open_rgb(path: Path) -> tv_tensors.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} is missing; check the dataset root and split")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return tv_tensors.Image(torch.from_numpy(arr.copy()).permute(2, 0, 1))


class CocoDetection(Dataset):
    """COCO-format detection / instance segmentation dataset.

    Args:
        image_dir: folder of the images named in the json's ``file_name``.
        ann_file: ``instances_*.json``.
        transforms: ``(image, target) -> (image, target)``, e.g. :class:`~.transforms.DetectionTransform`;
            without one images are returned as float tensors in [0, 1].
        masks: decode polygons / RLE into ``target["masks"]`` (``(N, H, W)`` uint8) for Mask R-CNN.
        keep_crowd: keep ``iscrowd=1`` objects in the targets (default: dropped, as detectron2 does for
            training; COCOeval still uses them from the json to ignore matching detections).
        remove_empty: skip images without any (non-crowd) object, for training.

    Items:
        ``(image (3, H, W), {"boxes": (N, 4) xyxy float, "labels": (N,) int64 in 1..K, "masks"?,
        "image_id": int, "area": (N,), "iscrowd": (N,)})``. Labels are contiguous (``label_to_cat_id``
        maps them back to the json's category ids); 0 is the background.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        masks: bool = False,
        keep_crowd: bool = False,
        remove_empty: bool = False,
    ) -> None:
        from pycocotools.coco import COCO

        self.image_dir, ann_file = Path(image_dir), Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(
                f"COCO annotation file {ann_file} not found (expected e.g. "
                "annotations/instances_train2017.json)"
            )
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"COCO image folder {self.image_dir} not found (expected e.g. train2017/)"
            )
        self.coco = COCO(str(ann_file))
        for key in ("images", "annotations", "categories"):
            if key not in self.coco.dataset:
                raise ValueError(f"{ann_file} has no '{key}' list: it is not a COCO instances file")
        self.label_to_cat_id = [0] + sorted(self.coco.getCatIds())
        self.cat_id_to_label = {c: i for i, c in enumerate(self.label_to_cat_id) if i > 0}
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in self.label_to_cat_id[1:]]
        self.transforms, self.masks, self.keep_crowd = transforms, masks, keep_crowd
        ids = sorted(self.coco.getImgIds())
        if remove_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        """Object classes + background (torchvision's ``num_classes``)."""
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        image = _open_rgb(self.image_dir / info["file_name"])
        h, w = image.shape[-2:]
        anns = [a for a in self.coco.imgToAnns[img_id] if self.keep_crowd or not a.get("iscrowd", 0)]
        boxes, labels, masks, area, crowd = [], [], [], [], []
        for a in anns:
            x, y, bw, bh = a["bbox"]
            box = [max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            if a["category_id"] not in self.cat_id_to_label:
                raise ValueError(
                    f"annotation {a.get('id')} of image {img_id} has category_id {a['category_id']} "
                    "that is not in the json's 'categories'"
                )
            boxes.append(box)
            labels.append(self.cat_id_to_label[a["category_id"]])
            area.append(float(a.get("area", bw * bh)))
            crowd.append(int(a.get("iscrowd", 0)))
            if self.masks:
                masks.append(self.coco.annToMask(a))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
            ),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": img_id,
            "area": torch.tensor(area, dtype=torch.float32),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        }
        if self.masks:
            m = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(m))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = image.as_subclass(torch.Tensor).float() / 255
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image, target


def _find_pairs(
    img_dir: Path, lab_dir: Path, pattern: str, label_of: Callable[[Path], Path], layout: str
) -> list[tuple[Path, Path]]:
    """(image, label map) pairs: images matching ``pattern`` under ``img_dir``, each with the label map
    ``label_of(image)``; a missing folder, label map or image set raises, naming the path and ``layout``."""
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: {layout}")
    pairs = []
    for img in sorted(img_dir.glob(pattern)):
        lab = label_of(img)
        if not lab.is_file():
            raise FileNotFoundError(f"label map {lab} for image {img} is missing")
        pairs.append((img, lab))
    if not pairs:
        raise FileNotFoundError(f"no {pattern} images under {img_dir}")
    return pairs


class _SegFolder(Dataset):
    """(image, label map) pairs with a label lookup table; subclasses find the pairs."""

    ignore_index = 255

    def __init__(
        self, pairs: list[tuple[Path, Path]], lut: np.ndarray, num_classes: int, transforms: Callable | None
    ) -> None:
        self.pairs, self.lut, self.num_classes, self.transforms = pairs, lut, num_classes, transforms

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lab_path = self.pairs[index]
        image = _open_rgb(img_path)
        with Image.open(lab_path) as im:
            raw = np.asarray(im)
        if raw.ndim != 2:
            raise ValueError(
                f"label map {lab_path} has shape {raw.shape}; expected a single-channel PNG of ids"
            )
        if raw.shape != tuple(image.shape[-2:]):
            raise ValueError(
                f"label map {lab_path} is {raw.shape} but its image {img_path} is {tuple(image.shape[-2:])}"
            )
        label = tv_tensors.Mask(torch.from_numpy(self.lut[raw.astype(np.int64)]).unsqueeze(0))
        if self.transforms is not None:
            return self.transforms(image, label)
        return image.as_subclass(torch.Tensor).float() / 255, label.as_subclass(torch.Tensor)[0].long()


class ADE20KSegmentation(_SegFolder):
    """ADE20K (SceneParsing) layout: ``root/images/{split}/*.jpg`` + ``root/annotations/{split}/*.png``.

    Label 0 ("other") becomes ``ignore_index`` (255) and 1..num_classes become 0..num_classes-1.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``"training"`` or ``"validation"``.
        num_classes: 150 for ADE20K; label values above it raise an error.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transforms: Callable | None = None,
        num_classes: int = 150,
    ) -> None:
        root = Path(root)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        pairs = _find_pairs(
            img_dir, ann_dir, "*.jpg", lambda img: ann_dir / f"{img.stem}.png",
            f"ADE20K layout is root/images/{split}/*.jpg and root/annotations/{split}/*.png",
        )
        lut = np.full(256, self.ignore_index, np.uint8)
        lut[1 : num_classes + 1] = np.arange(num_classes)
        super().__init__(pairs, lut, num_classes, transforms)


class CityscapesSegmentation(_SegFolder):
    """Cityscapes layout: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
    ``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``; labelIds are mapped to the 19 train ids,
    all others to ``ignore_index`` (255).
    """

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable | None = None) -> None:
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
        super().__init__(pairs, lut, len(CITYSCAPES_CLASSES), transforms)


__all__ = [
    "CocoDetection",
    "ADE20KSegmentation",
    "CityscapesSegmentation",
    "CITYSCAPES_LABEL_TO_TRAIN",
    "CITYSCAPES_CLASSES",
]
