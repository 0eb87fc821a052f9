"""Small generated datasets for tests and examples (no download).

* :func:`make_synthetic_imagefolder`: an ImageFolder of coloured squares, one place / colour per class.
* :func:`make_shapes_coco`, :func:`make_shapes_ade`: a "shapes" dataset in the real COCO and ADE20K
  layouts: rectangles, ellipses and triangles (categories 1, 2, 3) in random colours on a noise
  background, with polygon masks; every ``crowd_every``-th COCO image also has a crowd region (a cluster
  of small blobs stored as an uncompressed RLE with ``iscrowd=1``, as COCO does).
* :func:`make_digits_coco`, :func:`make_digits_ade`: real handwritten digits (scikit-learn's 8x8 scans,
  10 classes) pasted on noise canvases, in the same two layouts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..utils.fileio import atomic_write_text


def make_synthetic_imagefolder(root: str | os.PathLike, num_classes: int = 3, train_per_class: int = 8,
                               val_per_class: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/{train,val}/class_<k>/*.png``: class ``k`` is a bright square at a class-specific
    place and colour on a noisy background, so a network can learn it in a few steps.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    half = size // 2
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(num_classes):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            colour = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 151 + 40) % 256], dtype=np.float32)
            for i in range(n):
                img = rng.normal(60, 25, (size, size, 3)).clip(0, 255)
                y0, x0 = (k % 2) * half + rng.integers(0, half // 4 + 1), (k // 2 % 2) * half + rng.integers(
                    0, half // 4 + 1)
                img[y0:y0 + half * 3 // 4, x0:x0 + half * 3 // 4] = colour
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:03d}.png")
    return root



CATEGORIES = [
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 2, "name": "ellipse", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]


def _polygon(kind: int, box: tuple[float, float, float, float], rng: np.random.Generator) -> list[float]:
    x0, y0, x1, y1 = box
    if kind == 1:
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif kind == 2:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        pts = [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, False)]
    else:
        apex = x0 + rng.uniform(0.2, 0.8) * (x1 - x0)
        pts = [(apex, y0), (x1, y1), (x0, y1)]
    return [round(float(v), 2) for p in pts for v in p]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with a run of zeros."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def render_sample(
    rng: np.random.Generator, height: int, width: int, max_objects: int = 4, crowd: bool = False
) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Draw one image.

    Returns:
        ``(image (H, W, 3) uint8, objects, label_map (H, W) uint8)`` where each object is
        ``{"category_id", "polygon" (flat xy list), "mask" (H, W) bool, "iscrowd"}`` and ``label_map``
        holds the category id of each pixel (0 = background).
    """
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = (img // 2 + 64).astype(np.uint8)  # mid-grey noise, so any shape colour contrasts a little
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    label = np.zeros((height, width), np.uint8)
    objects: list[dict] = []
    boxes: list[tuple[float, float, float, float]] = []
    lo = max(8, min(height, width) // 6)
    hi = max(lo + 1, min(height, width) // 2)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            w, h = rng.integers(lo, hi, 2)
            x0, y0 = rng.uniform(0, width - w - 1), rng.uniform(0, height - h - 1)
            box = (x0, y0, x0 + w, y0 + h)
            if all(
                box[2] + 2 < b[0] or b[2] + 2 < box[0] or box[3] + 2 < b[1] or b[3] + 2 < box[1]
                for b in boxes
            ):
                break
        else:
            continue
        boxes.append(box)
        kind = int(rng.integers(1, 4))
        poly = _polygon(kind, box, rng)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(poly, fill=colour)
        m = Image.new("L", (width, height))
        ImageDraw.Draw(m).polygon(poly, fill=1)
        mask = np.asarray(m, dtype=bool)
        label[mask] = kind
        objects.append({"category_id": kind, "polygon": poly, "mask": mask, "iscrowd": 0})
    if crowd:
        # A crowd of small blobs of one class in a free corner area.
        m = Image.new("L", (width, height))
        md = ImageDraw.Draw(m)
        kind = int(rng.integers(1, 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        for _ in range(6):
            bx, by = cx + rng.normal(0, width / 16), cy + rng.normal(0, height / 16)
            r = max(1.5, min(height, width) / 40)
            md.ellipse([bx - r, by - r, bx + r, by + r], fill=1)
            draw.ellipse([bx - r, by - r, bx + r, by + r], fill=colour)
        mask = np.asarray(m, dtype=bool) & (label == 0)
        if mask.any():
            label[mask] = kind
            objects.append({"category_id": kind, "polygon": None, "mask": mask, "iscrowd": 1})
    return np.asarray(canvas), objects, label


def _area(obj: dict, height: int, width: int) -> float:
    """Area as pycocotools computes it (polygon rasterisation), as in real COCO files."""
    if obj["polygon"] is None:
        return float(obj["mask"].sum())
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(mask_utils.frPyObjects([obj["polygon"]], height, width)).sum())


def _bbox(mask: np.ndarray, poly: list[float] | None) -> list[float]:
    if poly is not None:
        xs, ys = poly[0::2], poly[1::2]
        return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def make_shapes_coco(
    root: str | Path,
    split: str = "train",
    num_images: int = 16,
    size: int | tuple[int, int] = 96,
    seed: int = 0,
    crowd_every: int = 4,
    max_objects: int = 4,
) -> Path:
    """Write ``root/{split}2017/*.jpg`` and ``root/annotations/instances_{split}2017.json`` (COCO layout).

    Args:
        size: image side, or ``(height, width)``; heights and widths vary by up to -25% per image.
        crowd_every: every n-th image gets a crowd annotation (0 = none).

    Returns:
        The annotation file path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h0, w0 = (size, size) if isinstance(size, int) else size
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        h, w = int(h0 * rng.uniform(0.75, 1.0)), int(w0 * rng.uniform(0.75, 1.0))
        img, objects, _ = render_sample(
            rng, h, w, max_objects, crowd=crowd_every > 0 and i % crowd_every == 0
        )
        name = f"{i:06d}.jpg"
        Image.fromarray(img).save(img_dir / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for o in objects:
            ann = {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": o["category_id"],
                "iscrowd": o["iscrowd"],
                "area": _area(o, h, w),
                "bbox": _bbox(o["mask"], o["polygon"]),
            }
            ann["segmentation"] = [o["polygon"]] if o["polygon"] is not None else _uncompressed_rle(o["mask"])
            anns.append(ann)
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    atomic_write_text(ann_file, json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return ann_file


def make_shapes_ade(
    root: str | Path, split: str = "training", num_images: int = 16, size: int = 96, seed: int = 0
) -> Path:
    """Write shapes in the ADE20K layout: ``images/{split}/*.jpg`` + ``annotations/{split}/*.png``.

    Label values follow ADE20K: 0 = "other" (ignored; here a 1-pixel ring around each shape),
    1 = background, 2-4 = rectangle, ellipse, triangle; so the dataset sees 4 classes.

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        img, _, label = render_sample(rng, size, size)
        out = (label + 1).astype(np.uint8)
        inner = np.zeros_like(label, dtype=bool)
        inner[1:-1, 1:-1] = label[1:-1, 1:-1] != 0
        edge = (label != 0) & ~(
            inner
            & (np.roll(label, 1, 0) == label)
            & (np.roll(label, -1, 0) == label)
            & (np.roll(label, 1, 1) == label)
            & (np.roll(label, -1, 1) == label)
        )
        out[edge] = 0
        stem = f"ADE_{split}_{i:08d}"
        Image.fromarray(img).save(root / "images" / split / f"{stem}.jpg", quality=95)
        Image.fromarray(out).save(root / "annotations" / split / f"{stem}.png")
    return root



DIGIT_CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]


def _digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digit scans as ``(N, 8, 8)`` floats in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(np.int64)


def render_digits_sample(
    rng: np.random.Generator, scans: tuple[np.ndarray, np.ndarray], height: int, width: int,
    max_objects: int = 4,
) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Paste 1..``max_objects`` real digit scans, upscaled to random sizes and inked in random colours,
    on a noise canvas, without overlap.

    Returns:
        ``(image (H, W, 3) uint8, objects, label_map (H, W) uint8)`` as :func:`render_sample`; an
        object's ``mask`` is the digit's ink (upscaled intensity above one third), its ``category_id``
        the digit + 1, its ``polygon`` None.
    """
    images, labels = scans
    img = (rng.integers(0, 256, (height, width, 3)) // 2 + 64).astype(np.float32)
    label = np.zeros((height, width), np.uint8)
    objects: list[dict] = []
    taken = np.zeros((height, width), bool)
    lo, hi = max(12, min(height, width) // 5), max(13, min(height, width) // 2)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        side = int(rng.integers(lo, hi))
        y0, x0 = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        if taken[max(y0 - 2, 0):y0 + side + 2, max(x0 - 2, 0):x0 + side + 2].any():
            continue
        k = int(rng.integers(0, len(images)))
        scan = Image.fromarray((images[k] * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
        alpha = np.asarray(scan, np.float32)[..., None] / 255.0
        colour = rng.integers(0, 256, 3).astype(np.float32)
        patch = img[y0:y0 + side, x0:x0 + side]
        img[y0:y0 + side, x0:x0 + side] = patch * (1 - alpha) + colour * alpha
        mask = np.zeros((height, width), bool)
        mask[y0:y0 + side, x0:x0 + side] = alpha[..., 0] > 1 / 3
        if not mask.any():
            continue
        taken[y0:y0 + side, x0:x0 + side] = True
        label[mask] = int(labels[k]) + 1
        objects.append({"category_id": int(labels[k]) + 1, "polygon": None, "mask": mask, "iscrowd": 0})
    return img.round().clip(0, 255).astype(np.uint8), objects, label


def make_digits_coco(root: str | Path, split: str = "train", num_images: int = 200, size: int = 96,
                     seed: int = 0, max_objects: int = 4) -> Path:
    """Write real handwritten digits pasted on canvases in the COCO layout (10 categories, ids 1-10 for
    digits 0-9): ``root/{split}2017/*.jpg`` and ``root/annotations/instances_{split}2017.json``, each
    object with its tight ink box and an uncompressed RLE mask.

    Returns:
        The annotation file path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    scans = _digit_scans()
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        h, w = int(size * rng.uniform(0.75, 1.0)), int(size * rng.uniform(0.75, 1.0))
        img, objects, _ = render_digits_sample(rng, scans, h, w, max_objects)
        name = f"{i:06d}.jpg"
        Image.fromarray(img).save(img_dir / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for o in objects:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": o["category_id"],
                         "iscrowd": 0, "area": float(o["mask"].sum()), "bbox": _bbox(o["mask"], None),
                         "segmentation": _uncompressed_rle(o["mask"])})
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    atomic_write_text(ann_file, json.dumps({"images": images, "annotations": anns,
                                            "categories": DIGIT_CATEGORIES}))
    return ann_file


def make_digits_ade(root: str | Path, split: str = "training", num_images: int = 200, size: int = 96,
                    seed: int = 0) -> Path:
    """Write digits on canvases in the ADE20K layout: label 1 = background, 2-11 = digits 0-9 (so the
    dataset sees 11 classes; nothing is 0, "other").

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    scans = _digit_scans()
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        img, _, label = render_digits_sample(rng, scans, size, size)
        stem = f"ADE_{split}_{i:08d}"
        Image.fromarray(img).save(root / "images" / split / f"{stem}.jpg", quality=95)
        Image.fromarray((label + 1).astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")
    return root


__all__ = ["CATEGORIES", "DIGIT_CATEGORIES", "make_digits_ade", "make_digits_coco", "make_shapes_ade",
           "make_shapes_coco", "make_synthetic_imagefolder", "render_digits_sample", "render_sample"]
