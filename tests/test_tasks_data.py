"""COCO mAP, mIoU, task configs and the detect / segment CLI (the datasets: tests/test_data_datasets.py)."""

from __future__ import annotations

import json

import pytest
import torch
from pycocotools.coco import COCO

from splitattn.cli import main
from splitattn.data import CocoDetection, make_shapes_ade, make_shapes_coco
from splitattn.engine import load_config
from splitattn.evaluation.metrics import SegmentationMetric, coco_evaluate, to_coco_results


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(root, "train", num_images=6, size=64, seed=0, crowd_every=2)
    make_shapes_coco(root, "val", num_images=4, size=64, seed=1, crowd_every=2)
    return root


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


def test_config_inheritance_and_errors(tmp_path):
    cfg = load_config("detection", "configs/detection/cascade_mask_rcnn_fpn_resnest50.yaml")
    assert cfg.model == "cascade_mask_rcnn_fpn" and cfg.lr == 0.02 and cfg.batch_size == 16
    assert cfg.min_size == [640, 672, 704, 736, 768, 800] and cfg.max_size == 1333
    assert cfg.backbone_norm == "syncbn" and cfg.box_head == "4conv1fc" and cfg.max_iter == 90000
    seg = load_config("segmentation", "configs/segmentation/deeplabv3_resnest101_cityscapes.yaml")
    assert seg.dataset == "cityscapes" and seg.num_classes == 19 and seg.output_stride == 8
    with pytest.raises(ValueError, match="did you mean 'max_iter'"):
        load_config("detection", overrides={"max_iters": 3})


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
        "checkpoint_interval=1",
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
    assert [r["iter"] for r in recs if "train_loss" in r] == [1, 2] and "bbox_AP" in recs[-1]
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
