"""Datasets (COCO, ADE20K, Cityscapes layouts), transforms, COCO mAP, mIoU, configs and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from splitattn.cli import main
from splitattn.tasks import ADE20KSegmentation, CityscapesSegmentation, CocoDetection, SegmentationMetric
from splitattn.tasks.config import resolve_task_config
from splitattn.tasks.metrics import coco_evaluate, to_coco_results
from splitattn.tasks.synthetic import make_shapes_ade, make_shapes_coco
from splitattn.tasks.transforms import DetectionTransform, SegmentationTransform


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(root, "train", num_images=6, size=64, seed=0, crowd_every=2)
    make_shapes_coco(root, "val", num_images=4, size=64, seed=1, crowd_every=2)
    return root


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


def test_coco_map_perfect_and_perturbed(coco_root):
    gt = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    ds = CocoDetection(
        coco_root / "val2017", coco_root / "annotations" / "instances_val2017.json", masks=True
    )
    outs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        outs.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.linspace(1, 0.5, n),
                "masks": t["masks"][:, None].float(),
            }
        )
        ids.append(t["image_id"])
    res = coco_evaluate(gt, to_coco_results(outs, ids, ds.label_to_cat_id), ("bbox", "segm"))
    assert res["bbox"]["AP"] == pytest.approx(1.0) and res["segm"]["AP"] == pytest.approx(1.0)
    assert res["bbox"]["AP50"] == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    shifted = [{**o, "boxes": o["boxes"] + torch.randn(o["boxes"].shape, generator=g) * 1.5} for o in outs]
    res2 = coco_evaluate(gt, to_coco_results(shifted, ids, ds.label_to_cat_id), ("bbox",))
    assert 0 < res2["bbox"]["AP"] < 0.9
    wrong = [{**o, "labels": o["labels"] % 3 + 1} for o in outs]  # every class wrong
    assert coco_evaluate(gt, to_coco_results(wrong, ids, ds.label_to_cat_id))["bbox"]["AP"] == 0.0
    assert coco_evaluate(gt, [])["bbox"]["AP"] == 0.0


def test_miou_against_hand_computed_value():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 0, 1]]])
    m = SegmentationMetric(3)
    m.update(pred, target)
    r = m.compute()
    # class 0: tp 3, gt 4, pred 4 -> 3/5; class 1: tp 3, gt 4, pred 4 -> 3/5;
    # class 2: tp 1, gt 2, pred 2 -> 1/3
    assert r["iou"] == pytest.approx([0.6, 0.6, 1 / 3])
    assert r["mIoU"] == pytest.approx((0.6 + 0.6 + 1 / 3) / 3)
    assert r["pixel_acc"] == pytest.approx(7 / 10)
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    m2 = SegmentationMetric(3)
    m2.update(logits, target)
    assert m2.compute()["mIoU"] == pytest.approx(r["mIoU"])
    with pytest.raises(ValueError, match="outside"):
        m2.update(pred, torch.full_like(target, 7))


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


def test_config_inheritance_and_errors(tmp_path):
    cfg = resolve_task_config("detection", "configs/detection/cascade_mask_rcnn_fpn_resnest50.yaml")
    assert cfg["model"] == "cascade_mask_rcnn_fpn" and cfg["lr"] == 0.02 and cfg["batch_size"] == 16
    assert cfg["min_size"] == [640, 672, 704, 736, 768, 800] and cfg["max_size"] == 1333
    assert cfg["backbone_norm"] == "syncbn" and cfg["box_head"] == "4conv1fc" and cfg["max_iter"] == 90000
    seg = resolve_task_config("segmentation", "configs/segmentation/deeplabv3_resnest101_cityscapes.yaml")
    assert seg["dataset"] == "cityscapes" and seg["num_classes"] == 19 and seg["output_stride"] == 8
    with pytest.raises(ValueError, match="did you mean 'max_iter'"):
        resolve_task_config("detection", overrides={"max_iters": 3})


def test_cli_detect_and_segment_train_resume_eval(tmp_path, capsys):
    make_shapes_coco(tmp_path / "c", "train", num_images=4, size=64, seed=0)
    make_shapes_coco(tmp_path / "c", "val", num_images=2, size=64, seed=1)
    small = [
        "backbone=resnest14d",
        "backbone_norm=groupnorm",
        "freeze_at=0",
        "fpn_channels=32",
        "representation_size=64",
        "min_size=[64]",
        "max_size=96",
        "workers=0",
        "lr=0.005",
        "model_kwargs={rpn_post_nms_top_n_train: 50, rpn_post_nms_top_n_test: 20, "
        "box_batch_size_per_image: 16}",
        f"train_images={tmp_path}/c/train2017",
        f"train_ann={tmp_path}/c/annotations/instances_train2017.json",
        f"val_images={tmp_path}/c/val2017",
        f"val_ann={tmp_path}/c/annotations/instances_val2017.json",
        "pretrained_backbone=null",
        "warmup_iters=1",
        "checkpoint_period=1",
    ]
    run = tmp_path / "det"
    args = [
        "detect",
        "train",
        "-o",
        str(run),
        "--batch-size",
        "2",
        "--max-iter",
        "1",
        "model=faster_rcnn_fpn",
        *small,
    ]
    assert main(args) == 0
    assert (run / "last.ckpt").is_file()
    assert main([*args[:6], "--max-iter", "2", "--resume", "auto", *args[8:]]) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs if "loss" in r] == [1, 2] and "bbox_AP" in recs[-1]
    capsys.readouterr()
    assert (
        main(["detect", "eval", "--checkpoint", str(run / "last.ckpt"), "model=faster_rcnn_fpn", *small]) == 0
    )
    assert "bbox_AP50" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    make_shapes_ade(tmp_path / "a", "training", num_images=2, size=48)
    make_shapes_ade(tmp_path / "a", "validation", num_images=1, size=48)
    seg = [
        "segment",
        "train",
        "-o",
        str(tmp_path / "seg"),
        "--batch-size",
        "2",
        "--max-iter",
        "1",
        "backbone=resnest14d",
        f"data_root={tmp_path}/a",
        "num_classes=4",
        "crop_size=48",
        "base_size=48",
        "workers=0",
        "pretrained_backbone=null",
    ]
    assert main(seg) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= out["mIoU"] <= 1 and 0 <= out["pixel_acc"] <= 1
    assert main(["segment", "train", "-c", "configs/detection/faster_rcnn_fpn_resnest50.yaml"]) == 2
