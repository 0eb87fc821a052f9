"""Hostile data, second round: images whose resize would be huge, malformed COCO annotations, and more
segmentation classes than 8-bit label maps hold. Each gives one error naming the file and the field."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from splitattn.data import (
    ADE20KSegmentation,
    CocoDetection,
    ImageFolderDataset,
    SegmentationTransform,
    collate_skip_bad,
    create_eval_transform,
    load_rgb,
)
from splitattn.errors import BadImageError, ConfigError, DataError

WIDE = (2_000_000, 1)  # a 6 KB PNG that an eval resize to a short side of S makes S x 2,000,000 S pixels


def _wide_png(path: Path, size: tuple[int, int] = WIDE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path, format="PNG")  # a PNG even when named .jpg
    return path


# -- images whose resized size would be huge are bad images --------------------------------------------
def test_wide_image_is_a_bad_image_in_eval_and_skippable(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    wide = _wide_png(tmp_path / "val" / "a" / "0.png")
    assert wide.stat().st_size < 20_000
    Image.new("RGB", (40, 4), (10, 20, 30)).save(tmp_path / "val" / "a" / "1.png")  # a panorama reads
    tf = create_eval_transform(None, img_size=32, crop_pct=1.0)
    assert tf.max_short_side == 32
    ds = ImageFolderDataset(tmp_path / "val", tf)
    with pytest.raises(BadImageError) as e:
        ds[0]
    text = str(e.value)
    assert text.startswith(f"image {wide} is 2000000 x 1 pixels (aspect ratio 2000000:1): resized to a short "
                           "side of 32 it would have more than 67108864 pixels")
    assert "skip_bad_images" in text and len(text.splitlines()) == 1
    assert ds[1][0].shape == (3, 32, 32)
    ds.skip_bad_images = True
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        x, y, n_skipped = collate_skip_bad([ds[0], ds[1]])
    assert n_skipped == 1 and x.shape == (1, 3, 32, 32) and y.tolist() == [0]
    assert f"skipped: image {wide} is 2000000 x 1 pixels" in caplog.text


def test_resize_bound_follows_the_transforms_short_side(tmp_path: Path):
    tall = _wide_png(tmp_path / "a" / "0.png", (1, 300))
    # Resized to 37 (32 / 0.875) it has 37 x 11100 pixels: fine for this eval transform...
    ds = ImageFolderDataset(tmp_path, create_eval_transform(None, img_size=32, crop_pct=0.875))
    assert ds[0][0].shape == (3, 32, 32)
    # ...but not for predict / explain, which resize to at most 512 (512 x 153600 pixels).
    with pytest.raises(BadImageError, match=f"image {tall} is 1 x 300 pixels .*short side of 512 .*give a"):
        load_rgb(tall, hint="give a smaller one")
    assert load_rgb(tall, short_side=None).size == (1, 300)  # the caller's own choice
    seg = SegmentationTransform(True, crop_size=8, base_size=10, scale_range=(0.5, 2.0))
    assert seg.max_short_side == 20 and SegmentationTransform(False).max_short_side is None


def test_wide_image_is_a_bad_image_in_segmentation_and_coco(tmp_path: Path):
    ade = tmp_path / "ade"
    wide = _wide_png(ade / "images" / "training" / "ADE_0.jpg", (1, 2_000_000))
    (ade / "annotations" / "training").mkdir(parents=True)
    Image.fromarray(np.ones((2, 1), np.uint8)).save(ade / "annotations" / "training" / "ADE_0.png")
    tf = SegmentationTransform(True, crop_size=8, base_size=8)
    ds = ADE20KSegmentation(ade, "training", tf, num_classes=4)
    with pytest.raises(BadImageError, match=f"image {wide} is 1 x 2000000 pixels .*short side of 16 .*skip"):
        ds[0]
    ds.skip_bad_images = True
    assert ds[0] is None
    coco = tmp_path / "coco"
    img = _wide_png(coco / "img" / "x.png")
    (coco / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "height": 1, "width": WIDE[0]}], "annotations": [],
        "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(BadImageError, match=f"image {img} is 2000000 x 1 pixels .*short side of 512"):
        CocoDetection(coco / "img", coco / "ann.json")[0]
    assert CocoDetection(coco / "img", coco / "ann.json", skip_bad_images=True)[0] is None


# -- malformed COCO annotations: DataError naming the json, the annotation id and the field ------------
RLE_20x10 = {"size": [10, 20], "counts": [200]}
GOOD = {
    "images": [{"id": 3, "file_name": "x.png", "height": 10, "width": 20}],
    "annotations": [{"id": 41, "image_id": 3, "category_id": 5, "bbox": [1, 1, 4, 4], "iscrowd": 0,
                     "segmentation": [[1, 1, 5, 1, 5, 5]]}],
    "categories": [{"id": 5, "name": "a"}],
}
ANN = "annotation 41 (annotations[0])"


def _set(**fields: Any):
    def change(d: dict[str, Any]) -> None:
        d["annotations"][0].update(fields)
    return change


def _drop(field: str):
    def change(d: dict[str, Any]) -> None:
        del d["annotations"][0][field]
    return change


def _second_image(d: dict[str, Any]) -> None:
    d["images"].append({"id": 3, "file_name": "y.png", "height": 10, "width": 20})


COCO_FAULTS = {
    # name: (change to GOOD, masks, expected message after "<json>: ")
    "3-number bbox": (_set(bbox=[1, 1, 4]), False, f"{ANN} has bbox [1, 1, 4]; expected [x, y, width, "
                                                   "height]"),
    "no bbox": (_drop("bbox"), False, f"{ANN} has no 'bbox'; give [x, y, width, height]"),
    "no category_id": (_drop("category_id"), False, f"{ANN} has no 'category_id'; give the id of an entry"),
    "unknown category_id": (_set(category_id=9), False, f"{ANN} has category_id 9; that is not in the json's "
                                                        "'categories'"),
    "string coordinates": (_set(bbox=["1", "1", "4", "4"]), False, f"{ANN} has bbox ['1', '1', '4', '4']"),
    "NaN coordinate": (_set(bbox=[1, float("nan"), 4, 4]), False, f"{ANN} has bbox [1, nan, 4, 4]"),
    "negative width": (_set(bbox=[1, 1, -4, 4]), False,
                       f"{ANN} has bbox [1, 1, -4, 4]; expected [x, y, width, height]: 4 finite numbers, "
                       "width and height >= 0"),
    "unknown image_id": (_set(image_id=4), False, f"{ANN} has image_id 4; that is not in the json's "
                                                  "'images'"),
    "no annotation id": (_drop("id"), False, "annotations[0] has no 'id'"),
    "1-point polygon": (_set(segmentation=[[1, 1]]), True,
                        f"{ANN} has segmentation polygon [1, 1]; each polygon must be a list of at least 3"),
    "2-point polygon": (_set(segmentation=[[1, 1, 5, 5]]), True,
                        f"{ANN} has segmentation polygon [1, 1, 5, 5]"),
    "empty segmentation": (_set(segmentation=[]), True, f"{ANN} has segmentation []; expected polygons or an "
                                                        "RLE"),
    "no segmentation": (_drop("segmentation"), True, f"{ANN} has no 'segmentation'; masks need polygons"),
    "RLE of another image": (_set(segmentation={"size": [5, 5], "counts": [25]}), True,
                             f"{ANN} has an RLE mask of size [5, 5]; its image 3 (x.png) is [10, 20]"),
    "RLE counts not the size": (_set(segmentation={"size": [10, 20], "counts": [10]}), True,
                                f"{ANN} has RLE counts [10]; expected run lengths (integers >= 0) summing to "
                                "10 x 20"),
    "duplicate image id": (_second_image, False, "images[0] and images[1] both have id 3 ('x.png', 'y.png'); "
                                                 "give every entry its own id"),
}


def _coco(tmp_path: Path, data: dict[str, Any], masks: bool) -> CocoDetection:
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "img" / "x.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return CocoDetection(tmp_path / "img", ann, masks=masks)


@pytest.mark.parametrize("fault", list(COCO_FAULTS))
def test_malformed_coco_annotation_names_json_annotation_and_field(tmp_path: Path, fault: str):
    change, masks, expected = COCO_FAULTS[fault]
    data = copy.deepcopy(GOOD)
    change(data)
    with pytest.raises(DataError) as e:  # when the file is read, before any item (or training step)
        _coco(tmp_path, data, masks)
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 'ann.json'}: {expected}") and len(text.splitlines()) == 1


def test_valid_coco_masks_and_rle_of_another_image_size_at_read_time(tmp_path: Path):
    compressed = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))
    compressed = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    for seg in ([[1, 1, 5, 1, 5, 5]], RLE_20x10, compressed):
        data = copy.deepcopy(GOOD)
        data["annotations"][0]["segmentation"] = seg
        _, target = _coco(tmp_path, data, masks=True)[0]
        assert target["masks"].shape == (1, 10, 20) and target["labels"].tolist() == [1]
    # Without height / width in the json, an RLE of another size is caught when the image is read.
    data = copy.deepcopy(GOOD)
    del data["images"][0]["height"], data["images"][0]["width"]
    small = mask_utils.encode(np.asfortranarray(np.ones((5, 5), np.uint8)))
    data["annotations"][0]["segmentation"] = {"size": [5, 5], "counts": small["counts"].decode()}
    ds = _coco(tmp_path, data, masks=True)
    with pytest.raises(DataError, match=r"ann.json: annotation 41 has an RLE mask of size \[5, 5\] but its "
                                        r"image x.png is \[10, 20\] \(height, width\)"):
        ds[0]


# -- segmentation classes beyond what 8-bit label maps with ignore index 255 hold ----------------------
def test_ade20k_num_classes_beyond_255_is_one_config_error(tmp_path: Path):
    img_dir, ann_dir = tmp_path / "images" / "training", tmp_path / "annotations" / "training"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(img_dir / "ADE_0.jpg")
    Image.fromarray(np.array([[1, 255, 0, 2]] * 2, np.uint8)).save(ann_dir / "ADE_0.png")
    for n in (256, 1000):
        with pytest.raises(ConfigError) as e:
            ADE20KSegmentation(tmp_path, "training", num_classes=n)
        assert str(e.value).startswith(f"num_classes must be an integer from 1 to 255 for the ADE20K layout, "
                                       f"got {n}: its label maps are 8-bit PNGs")
    _, label = ADE20KSegmentation(tmp_path, "training", num_classes=255)[0]  # the most there is room for
    assert label[0].tolist() == [0, 254, 255, 1]
