"""Datasets of splitattn.data: ImageFolder, COCO, ADE20K and Cityscapes layouts, the image reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from splitattn.data import (
    ADE20KSegmentation,
    CityscapesSegmentation,
    CocoDetection,
    DetectionTransform,
    ImageFolderDataset,
    SeededDataset,
    SegmentationTransform,
    collate_skip_bad,
    load_rgb,
    make_shapes_ade,
    make_shapes_coco,
    make_synthetic_imagefolder,
    scan_image_folder,
)
from splitattn.errors import BadImageError, DataError, MissingFileError


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(root, "train", num_images=6, size=64, seed=0, crowd_every=2)
    return root


@pytest.fixture
def folder(tmp_path):
    return make_synthetic_imagefolder(tmp_path / "data", num_classes=3, train_per_class=3, val_per_class=1,
                                      size=16)


def _corrupt(path):
    path.write_bytes(path.read_bytes()[:60])  # truncated


# -- ImageFolder -------------------------------------------------------------------------------------
def test_image_folder_matches_torchvision(folder):
    (folder / "train" / "class_2" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "train" / "class_2" / "sub" / "x.PNG")
    (folder / "train" / "class_0" / "notes.txt").write_text("not an image")
    tv = ImageFolder(str(folder / "train"))
    (folder / "train" / ".cache").mkdir()  # hidden folders are not classes (torchvision's would be)
    ds = ImageFolderDataset(folder / "train", transform=lambda im: torch.tensor(im.size))
    assert ds.classes == tv.classes == ["class_0", "class_1", "class_2"]
    assert ds.class_to_idx == tv.class_to_idx
    assert ds.samples == tv.samples and ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert ds.samples[-1][0].endswith("class_2/sub/x.PNG")
    assert scan_image_folder(folder / "train") == (ds.classes, ds.samples)
    x, t = ds[9]
    assert x.tolist() == [8, 8] and t == 2
    with pytest.raises(DataError, match=r"differ.*only in train: \['class_9'\], only in val: \['class_2'\]"):
        ImageFolderDataset(folder / "val", classes=["class_0", "class_1", "class_9"])


def test_image_folder_errors_name_the_folder(tmp_path, folder):
    with pytest.raises(MissingFileError, match=f"train folder {tmp_path / 'nope'} does not exist"):
        ImageFolderDataset(tmp_path / "nope", what="train")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=f"{tmp_path / 'flat'} has no class sub-folders"):
        ImageFolderDataset(tmp_path / "flat")
    for f in (folder / "train" / "class_1").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=f"class folder {folder / 'train' / 'class_1'} has no images"):
        ImageFolderDataset(folder / "train")


def test_image_folder_bad_image_raises_or_is_skipped(folder):
    bad = folder / "train" / "class_0" / "001.png"
    _corrupt(bad)
    ds = ImageFolderDataset(folder / "train", transform=lambda im: torch.zeros(3, 2, 2))
    with pytest.raises(BadImageError, match=f"{bad}.*--skip-bad-images"):
        ds[1]
    skip = ImageFolderDataset(folder / "train", transform=lambda im: torch.zeros(3, 2, 2),
                              skip_bad_images=True)
    assert skip[1] is None
    x, y, n_bad = collate_skip_bad([skip[i] for i in range(4)])
    assert x.shape == (3, 3, 2, 2) and y.tolist() == [0, 0, 1] and n_bad == 1


# -- the image reader ----------------------------------------------------------------------------------
def test_load_rgb_scales_16_bit_and_float_images(tmp_path):
    grey16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert rgb.shape == (1, 4, 3) and rgb[..., 0].tolist() == [[0, 1, 128, 255]]  # not clipped to 255
    assert (rgb[..., 0] == rgb[..., 2]).all()
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tiff")
    assert np.asarray(load_rgb(tmp_path / "f.tiff"))[..., 1].tolist() == [[0, 128, 255]]
    Image.fromarray(np.array([[3, 200]], dtype=np.uint8)).save(tmp_path / "g8.png")
    assert np.asarray(load_rgb(tmp_path / "g8.png"))[..., 0].tolist() == [[3, 200]]  # 8-bit unchanged


def test_load_rgb_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(BadImageError, match=f"{tmp_path / 'missing.jpg'} does not exist"):
        load_rgb(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(BadImageError, match=f"cannot read image {tmp_path / 'bad.jpg'}"):
        load_rgb(tmp_path / "bad.jpg")
    Image.new("RGB", (32, 32)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImageError, match=f"{tmp_path / 'big.png'} is too large"):
        load_rgb(tmp_path / "big.png")


# -- COCO -------------------------------------------------------------------------------------------
def test_coco_dataset_boxes_masks_crowd(coco_root):
    ann = coco_root / "annotations" / "instances_train2017.json"
    raw = json.loads(ann.read_text())
    ds = CocoDetection(coco_root / "train2017", ann, masks=True)
    assert len(ds) == 6 and ds.num_classes == 4 and ds.label_to_cat_id == [0, 1, 2, 3]
    img, t = ds[0]
    assert (
        img.dtype == torch.float32 and img.shape[0] == 3 and float(img.min()) >= 0 and float(img.max()) <= 1
    )
    non_crowd = [a for a in raw["annotations"] if a["image_id"] == 1 and not a["iscrowd"]]
    assert t["boxes"].shape == (len(non_crowd), 4) and int(t["iscrowd"].sum()) == 0
    a = non_crowd[0]
    x, y, w, h = a["bbox"]
    torch.testing.assert_close(t["boxes"][0], torch.tensor([x, y, x + w, y + h]))
    assert t["masks"].shape == (len(non_crowd), *img.shape[-2:]) and t["masks"].dtype == torch.uint8
    # the polygon's mask lies inside its box and has the annotated area (+- rasterisation)
    m = t["masks"][0].bool()
    ys, xs = torch.nonzero(m, as_tuple=True)
    assert xs.min() >= int(x) and xs.max() <= x + w and int(m.sum()) == a["area"]
    crowd = CocoDetection(coco_root / "train2017", ann, masks=True, keep_crowd=True)
    rle = next(a for a in raw["annotations"] if a["iscrowd"])
    idx = ds.ids.index(rle["image_id"])
    n_plain = len(ds[idx][1]["labels"])
    _, tc = crowd[idx]
    assert isinstance(rle["segmentation"]["counts"], list)  # uncompressed RLE, as COCO stores crowds
    assert int(tc["iscrowd"].sum()) == 1 and tc["masks"].shape[0] == n_plain + 1
    assert int(tc["masks"][tc["iscrowd"].bool()][0].sum()) == rle["area"]  # RLE decoded
    flip = CocoDetection(coco_root / "train2017", ann, DetectionTransform(True, hflip=1.0), masks=True)
    fimg, ft = flip[0]
    wimg = img.shape[-1]
    torch.testing.assert_close(ft["boxes"][:, 0], wimg - t["boxes"][:, 2])
    torch.testing.assert_close(fimg, img.flip(-1))
    assert torch.equal(ft["masks"], t["masks"].flip(-1))
    scaled = CocoDetection(coco_root / "train2017", ann, DetectionTransform(False, scales=[96], max_size=200))
    simg, st = scaled[0]
    assert min(simg.shape[-2:]) == 96
    torch.testing.assert_close(st["boxes"], t["boxes"] * 96 / min(img.shape[-2:]), atol=0.6, rtol=0)

    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(coco_root / "train2017", coco_root / "missing.json")


@pytest.mark.parametrize("keep_crowd", [False, True])
def test_coco_matches_pycocotools(coco_root, keep_crowd):
    """The torchvision-wrapper items equal boxes / labels / masks computed from pycocotools directly."""
    ann = coco_root / "annotations" / "instances_train2017.json"
    ds = CocoDetection(coco_root / "train2017", ann, masks=True, keep_crowd=keep_crowd)
    coco = ds.coco
    for i, img_id in enumerate(ds.ids):
        anns = [a for a in coco.imgToAnns[img_id] if keep_crowd or not a["iscrowd"]]
        _, t = ds[i]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns])
        assert t["image_id"] == img_id
        torch.testing.assert_close(t["boxes"], boxes)
        assert t["labels"].tolist() == [ds.cat_id_to_label[a["category_id"]] for a in anns]
        assert torch.equal(t["masks"], torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])))
        assert t["area"].tolist() == pytest.approx([a["area"] for a in anns])
        assert t["iscrowd"].tolist() == [a["iscrowd"] for a in anns]


def _tiny_coco(tmp_path, annotations, categories=({"id": 5, "name": "a"}, {"id": 7, "name": "b"})):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "img" / "x.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 3, "file_name": "x.png", "height": 10, "width": 20}],
                               "annotations": annotations, "categories": list(categories)}))
    return CocoDetection(tmp_path / "img", ann)


def test_coco_clips_drops_and_maps_labels(tmp_path):
    ds = _tiny_coco(tmp_path, [
        {"id": 1, "image_id": 3, "category_id": 7, "bbox": [-5, 2, 10, 4]},  # clipped to x >= 0
        {"id": 2, "image_id": 3, "category_id": 5, "bbox": [3, 3, 0, 4]},  # empty: dropped
        {"id": 3, "image_id": 3, "category_id": 5, "bbox": [15, 8, 10, 10], "area": 4.0},  # clipped
    ])
    assert ds.class_names == ["__background__", "a", "b"] and ds.cat_id_to_label == {5: 1, 7: 2}
    img, t = ds[0]
    assert img.shape == (3, 10, 20) and float(img[0].min()) == 1.0 and float(img[1].max()) == 0.0
    assert t["boxes"].tolist() == [[0, 2, 5, 6], [15, 8, 20, 10]] and t["labels"].tolist() == [2, 1]
    assert t["area"].tolist() == [40.0, 4.0] and t["iscrowd"].tolist() == [0, 0] and t["image_id"] == 3
    empty = _tiny_coco(tmp_path, [])
    _, t = empty[0]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_coco_errors(tmp_path):
    with pytest.raises(DataError, match="category_id 9"):
        _tiny_coco(tmp_path, [{"id": 1, "image_id": 3, "category_id": 9, "bbox": [0, 0, 4, 4]}])[0]
    (tmp_path / "ann.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="no 'annotations' list"):
        CocoDetection(tmp_path / "img", tmp_path / "ann.json")
    (tmp_path / "ann.json").write_text("{not json")
    with pytest.raises(DataError, match="ann.json is not a COCO instances json"):
        CocoDetection(tmp_path / "img", tmp_path / "ann.json")
    with pytest.raises(MissingFileError, match="image folder"):
        CocoDetection(tmp_path / "nope", tmp_path / "ann.json")


def test_coco_bad_or_missing_image_names_the_file(tmp_path):
    root = tmp_path / "coco"
    ann = make_shapes_coco(root, "val", num_images=2, size=32, seed=1)
    ds = CocoDetection(root / "val2017", ann)
    _corrupt(root / "val2017" / "000000.jpg")
    (root / "val2017" / "000001.jpg").unlink()
    with pytest.raises(BadImageError, match=f"cannot read image {root / 'val2017' / '000000.jpg'}"):
        ds[0]
    with pytest.raises(BadImageError, match=f"{root / 'val2017' / '000001.jpg'} does not exist"):
        ds[1]


def test_seeded_coco_forwards_attributes_and_repeats(coco_root):
    ann = coco_root / "annotations" / "instances_train2017.json"
    ds = SeededDataset(CocoDetection(coco_root / "train2017", ann, DetectionTransform(True, [40, 64, 80]),
                                     masks=True), seed=0)
    assert ds.num_classes == 4 and ds.coco is ds.dataset.coco and ds.label_to_cat_id == [0, 1, 2, 3]
    sizes = set()
    for i in range(len(ds)):
        (a, ta), (b, tb) = ds[i], ds[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
        assert torch.equal(ta["masks"], tb["masks"])
        sizes.add(min(a.shape[-2:]))
    assert len(sizes) > 1  # the scale still varies between samples


# -- segmentation ----------------------------------------------------------------------------------
def test_ade20k_layout(tmp_path):
    make_shapes_ade(tmp_path, "training", num_images=3, size=64)
    raw = np.array(Image.open(tmp_path / "annotations" / "training" / "ADE_training_00000000.png"))
    ds = ADE20KSegmentation(tmp_path, "training", num_classes=4)
    assert len(ds) == 3
    img, lab = ds[0]
    assert img.shape == (3, 64, 64) and lab.shape == (64, 64) and lab.dtype == torch.int64
    exp = raw.astype(np.int64) - 1
    exp[raw == 0] = 255
    assert torch.equal(lab, torch.from_numpy(exp))
    t = SegmentationTransform(True, crop_size=48, base_size=40, scale_range=(1.0, 1.0))
    img, lab = ADE20KSegmentation(tmp_path, "training", t, num_classes=4)[1]
    assert img.shape == (3, 48, 48) and lab.shape == (48, 48)
    assert set(lab.unique().tolist()) <= {0, 1, 2, 3, 255} and bool((lab == 255).any())  # padding ignored
    with pytest.raises(FileNotFoundError, match="ADE20K layout"):
        ADE20KSegmentation(tmp_path, "validation")


def test_segmentation_bad_files_name_the_file(tmp_path):
    make_shapes_ade(tmp_path, "training", num_images=3, size=32)
    ds = ADE20KSegmentation(tmp_path, "training", num_classes=4)
    img0 = tmp_path / "images" / "training" / "ADE_training_00000000.jpg"
    lab1 = tmp_path / "annotations" / "training" / "ADE_training_00000001.png"
    lab2 = tmp_path / "annotations" / "training" / "ADE_training_00000002.png"
    _corrupt(img0)
    _corrupt(lab1)
    Image.new("L", (16, 32)).save(lab2)
    with pytest.raises(BadImageError, match=f"cannot read image {img0}"):
        ds[0]
    with pytest.raises(BadImageError, match=f"cannot read label map {lab1}"):
        ds[1]
    with pytest.raises(DataError, match=f"label map {lab2} is \\(32, 16\\)"):
        ds[2]
    lab2.unlink()
    with pytest.raises(MissingFileError, match=f"label map {lab2} for image"):
        ADE20KSegmentation(tmp_path, "training")


def test_cityscapes_layout(tmp_path):
    city = "aachen"
    (tmp_path / "leftImg8bit" / "val" / city).mkdir(parents=True)
    (tmp_path / "gtFine" / "val" / city).mkdir(parents=True)
    ids = np.array([[0, 7, 8, 11], [26, 33, 34, 255], [1, 24, 19, 21]], dtype=np.uint8)
    stem = f"{city}_000000_000019"
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(
        tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
    )
    Image.fromarray(ids).save(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")
    ds = CityscapesSegmentation(tmp_path, "val")
    assert len(ds) == 1 and ds.num_classes == 19
    _, lab = ds[0]
    assert lab.tolist() == [[255, 0, 1, 2], [13, 18, 255, 255], [255, 11, 6, 8]]
