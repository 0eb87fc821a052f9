"""Hostile data in every loader (ImageFolder, COCO, ADE20K, Cityscapes): 16-bit / float images, corrupt,
truncated and decompression-bomb files, symlink loops; each error names the file, each is skippable."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from splitattn.data import (
    ADE20KSegmentation,
    CityscapesSegmentation,
    CocoDetection,
    ImageFolderDataset,
    collate_skip_bad,
    detection_collate,
    make_shapes_coco,
    scan_image_folder,
    segmentation_collate,
)
from splitattn.errors import BadImageError, DataError
from splitattn.evaluation.evaluate import evaluate_detection, evaluate_segmentation

KINDS = ["imagefolder", "coco", "ade20k", "cityscapes"]
GREY16 = np.array([[0, 257, 32896, 65535]] * 2, dtype=np.uint16)  # -> 0, 1, 128, 255 when scaled
EXPECTED_8BIT = [0, 1, 128, 255]


def _build(kind: str, root: Path, write_subject: Callable[[Path], None], skip: bool = False):
    """A 2-item dataset of ``kind`` whose item 0 is the file ``write_subject`` writes (2x4 pixels) and
    item 1 a plain RGB image; returns ``(dataset, path of item 0's image)``."""
    good = Image.fromarray(np.full((2, 4, 3), 50, np.uint8))
    label = Image.fromarray(np.ones((2, 4), np.uint8))
    if kind == "imagefolder":
        (root / "a").mkdir(parents=True)
        subject = root / "a" / "0.png"
        good.save(root / "a" / "1.png")
        make = lambda: ImageFolderDataset(  # noqa: E731
            root, transform=lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1),
            skip_bad_images=skip)
    elif kind == "coco":
        (root / "img").mkdir(parents=True)
        subject = root / "img" / "0.png"
        good.save(root / "img" / "1.png")
        images = [{"id": i + 1, "file_name": f"{i}.png", "height": 2, "width": 4} for i in range(2)]
        (root / "ann.json").write_text(json.dumps({"images": images, "annotations": [],
                                                   "categories": [{"id": 1, "name": "x"}]}))
        make = lambda: CocoDetection(root / "img", root / "ann.json", skip_bad_images=skip)  # noqa: E731
    elif kind == "ade20k":
        img_dir, ann_dir = root / "images" / "training", root / "annotations" / "training"
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        subject = img_dir / "ADE_0.jpg"
        good.save(img_dir / "ADE_1.jpg")
        for i in range(2):
            label.save(ann_dir / f"ADE_{i}.png")
        make = lambda: ADE20KSegmentation(root, "training", num_classes=4, skip_bad_images=skip)  # noqa: E731
    else:
        img_dir, gt_dir = root / "leftImg8bit" / "train" / "c", root / "gtFine" / "train" / "c"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        subject = img_dir / "c_0_leftImg8bit.png"
        good.save(img_dir / "c_1_leftImg8bit.png")
        for i in range(2):
            label.save(gt_dir / f"c_{i}_gtFine_labelIds.png")
        make = lambda: CityscapesSegmentation(root, "train", skip_bad_images=skip)  # noqa: E731
    write_subject(subject)
    return make(), subject


def _pixels(kind: str, item) -> torch.Tensor:
    """Item image as 0..255 integers, ``(3, H, W)``."""
    image = item[0]
    return image.long() if kind == "imagefolder" else (image * 255).round().long()


def _collate(kind: str):
    return {"imagefolder": collate_skip_bad, "coco": detection_collate}.get(kind, segmentation_collate)


# -- 16-bit and float images are scaled, not clipped ------------------------------------------------
@pytest.mark.parametrize("source", ["uint16 png", "float32 tiff"])
@pytest.mark.parametrize("kind", KINDS)
def test_16_bit_and_float_images_are_scaled_in_every_loader(tmp_path, kind, source):
    if source == "uint16 png":
        def write(p):
            Image.fromarray(GREY16).save(p, format="PNG")
    else:
        def write(p):
            Image.fromarray((GREY16 / 65535).astype(np.float32)).save(p, format="TIFF")
    ds, subject = _build(kind, tmp_path, write)
    assert Image.open(subject).mode in ("I;16", "F")
    px = _pixels(kind, ds[0])
    assert px.shape == (3, 2, 4)
    for c in range(3):  # greyscale to RGB, scaled from the full range (clipping would give 0, 255, 255, 255)
        assert px[c, 0].tolist() == EXPECTED_8BIT
    assert _pixels(kind, ds[1])[:, 0, 0].tolist() == [50, 50, 50]  # 8-bit images unchanged


# -- unreadable files: one error naming the file, or skipped and counted -----------------------------
def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` x ``height`` pixels (no real image data)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _jpeg_cut_in_header() -> bytes:
    """A JPEG cut where PIL says only "Truncated File Read" (the message that used to name no file)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    for n in range(20, len(data)):
        try:
            Image.open(io.BytesIO(data[:n])).load()
        except OSError as e:
            if str(e) == "Truncated File Read":
                return data[:n]
    raise AssertionError("no cut gives 'Truncated File Read'")


FAULTS = {
    # name: (file bytes, expected message part)
    "bomb 20000x20000 (PIL error)": (lambda: _png_header(20000, 20000), "is too large to decode safely"),
    "bomb 10000x10000 (PIL only warns)": (lambda: _png_header(10000, 10000), "is too large to decode safely"),
    "corrupt": (lambda: b"definitely not an image", "it is corrupt or truncated"),
    "truncated jpeg": (_jpeg_cut_in_header, "(Truncated File Read); it is corrupt or truncated"),
    "empty file": (lambda: b"", "it is corrupt or truncated"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_image_names_the_file_in_every_loader(tmp_path, kind, fault):
    content, message = FAULTS[fault]
    data = content()
    ds, subject = _build(kind, tmp_path, lambda p: p.write_bytes(data))
    with pytest.raises(BadImageError) as e:
        ds[0]
    text = str(e.value)
    assert f"image {subject}" in text and message in text and "skip_bad_images" in text
    assert len(text.splitlines()) == 1
    assert _pixels(kind, ds[1]).shape == (3, 2, 4)  # the other item still reads


@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_image_is_skipped_logged_and_counted_in_every_loader(tmp_path, kind, caplog):
    ds, subject = _build(kind, tmp_path, lambda p: p.write_bytes(_png_header(20000, 20000)), skip=True)
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        items = [ds[0], ds[1]]
    assert items[0] is None and items[1] is not None
    (logged,) = [r.getMessage() for r in caplog.records]
    assert logged.startswith(f"skipped: image {subject} is too large to decode safely")
    images, targets, n_skipped = _collate(kind)(items)
    assert n_skipped == 1 and len(images) == 1 and len(targets) == 1
    # A batch of nothing readable is an empty batch, not a crash.
    images, targets, n_skipped = _collate(kind)([None, None])
    assert n_skipped == 2 and len(images) == 0 and len(targets) == 0
    if kind != "coco":
        assert images.shape[0] == 0 and images.ndim == 4


@pytest.mark.parametrize("kind", ["ade20k", "cityscapes"])
def test_unreadable_label_map_names_the_file_and_is_skippable(tmp_path, kind):
    ds, _ = _build(kind, tmp_path, lambda p: Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(p, "PNG"))
    label = next(p for p in tmp_path.rglob("*.png") if p.name.startswith(("ADE_0", "c_0_gtFine")))
    label.write_bytes(label.read_bytes()[:40])
    with pytest.raises(BadImageError, match=f"cannot read label map {label} .*skip_bad_images"):
        ds[0]
    ds.skip_bad_images = True
    assert ds[0] is None and segmentation_collate([ds[0], ds[1]])[2] == 1


def test_segmentation_collate_pads_and_counts():
    a = (torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.long))
    b = (torch.ones(3, 3, 2), torch.ones(3, 2, dtype=torch.long))
    images, labels, n = segmentation_collate([a, None, b])
    assert images.shape == (2, 3, 3, 3) and labels.shape == (2, 3, 3) and n == 1
    assert labels[0, 2].tolist() == [255, 255, 255] and images[1, :, :, 2].sum() == 0
    images, targets, n = detection_collate([None, (torch.zeros(3, 4, 4), {"image_id": 7})])
    assert n == 1 and [t["image_id"] for t in targets] == [7] and images[0].shape == (3, 4, 4)


class _Replay(nn.Module):
    """A stand-in model returning given outputs in call order (the evaluation loaders do not shuffle)."""

    def __init__(self, outputs: list) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, images):
        return [self.outputs.pop(0) for _ in images] if isinstance(images, list) else self.outputs.pop(0)


def test_evaluation_leaves_skipped_images_out(tmp_path, caplog):
    ann = make_shapes_coco(tmp_path, "val", num_images=3, size=48, seed=1, crowd_every=0)
    ds = CocoDetection(tmp_path / "val2017", ann, skip_bad_images=True)
    (tmp_path / "val2017" / "000001.jpg").write_bytes(b"corrupt")
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in (ds[0][1], ds[2][1])]
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        res = evaluate_detection(_Replay(perfect), ds, batch_size=2)
    # The unreadable image's objects are not counted as missed: perfect boxes on the others give AP 1.
    assert res["bbox"]["AP"] == pytest.approx(1.0)
    assert "detection evaluation left out 1 unreadable image(s)" in caplog.text

    seg, subject = _build("ade20k", tmp_path / "ade", lambda p: p.write_bytes(b"corrupt"), skip=True)
    logits = torch.zeros(1, 4, 2, 4)
    logits[:, 0] = 1  # class 0: the label (ADE id 1) of the readable image
    res = evaluate_segmentation(_Replay([{"out": logits}]), seg, num_classes=4)
    assert res["skipped"] == 1 and res["pixel_acc"] == 1.0 and res["mIoU"] == 1.0


# -- symbolic links: each real folder scanned once, never under another class ------------------------
@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging with growing memory) when the block runs longer than ``seconds``."""
    def fail(*_):
        # Not TimeoutError: it is an OSError, which os.walk swallows.
        raise AssertionError(f"the scan took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _classes(root: Path, per_class: dict[str, int]) -> None:
    for c, n in per_class.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4)).save(root / c / f"{i}.png")


def test_symlink_loops_and_cross_links_are_skipped_with_one_warning(tmp_path, caplog):
    train = tmp_path / "train"
    _classes(train, {"a": 2, "b": 3})
    links = {train / "a" / "loop": "../a", train / "a" / "b_link": "../b", train / "b" / "self1": ".",
             train / "b" / "self2": ".", train / "b" / "up": ".."}
    for link, target in links.items():
        os.symlink(target, link)
    with caplog.at_level(logging.WARNING, logger="splitattn"), _deadline(20):
        classes, samples = scan_image_folder(train)
        ds = ImageFolderDataset(train)
    assert classes == ["a", "b"] and ds.samples == samples
    assert samples == [(str(train / "a" / f"{i}.png"), 0) for i in range(2)] + [
        (str(train / "b" / f"{i}.png"), 1) for i in range(3)]
    warnings = [r.getMessage() for r in caplog.records if "linked folder" in r.getMessage()]
    assert len(warnings) == 2  # one per scan
    assert warnings[0].startswith(f"skipped 5 linked folder(s) under {train}")
    for link in links:
        assert f"{link} -> {link.resolve()}" in warnings[0]


def test_link_out_of_the_dataset_is_followed_once(tmp_path, caplog):
    train, extra = tmp_path / "train", tmp_path / "extra"
    _classes(train, {"a": 1, "b": 1})
    _classes(extra, {"more": 2})
    os.symlink(extra / "more", train / "a" / "more")
    os.symlink(extra / "more", train / "b" / "more_again")  # the same folder: its images are a's already
    os.symlink(extra / "more", extra / "more" / "loop")
    with caplog.at_level(logging.WARNING, logger="splitattn"), _deadline(20):
        _, samples = scan_image_folder(train)
    assert samples == [(str(train / "a" / "0.png"), 0), (str(train / "a" / "more" / "0.png"), 0),
                       (str(train / "a" / "more" / "1.png"), 0), (str(train / "b" / "0.png"), 1)]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "skipped 2 linked folder(s)" in warning and "b/more_again" in warning and "more/loop" in warning


def test_class_folder_linked_to_another_class_is_an_error(tmp_path):
    train = tmp_path / "train"
    _classes(train, {"a": 1, "b": 1})
    os.symlink("a", train / "c")
    with pytest.raises(DataError, match=f"class folders {train / 'a'} and {train / 'c'} are the same folder"):
        scan_image_folder(train)
