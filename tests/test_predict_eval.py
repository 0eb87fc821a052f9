"""Evaluation, prediction, weight export and metrics of the library (:mod:`splitattn.evaluation`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import splitattn
from splitattn.cli import main
from splitattn.data.preprocessing import DataConfig
from splitattn.data.transforms import create_eval_transform
from splitattn.engine.plot import plot_run
from splitattn.errors import BadImageError, CheckpointError, InputError, WeightsError
from splitattn.evaluation.evaluate import evaluate_folder, shard_dataset, unwrap_model
from splitattn.evaluation.metrics import SegmentationMetric, topk_hits
from splitattn.evaluation.predict import export_weights, load_for_inference, predict_images
from splitattn.models._spec import ModelSpec
from splitattn.utils.train_checkpoint import load_checkpoint, save_checkpoint

CLASSES = ["ant", "bee", "cow"]
KWARGS = {"stem_width": 8, "base_width": 8}
EVAL_CFG = DataConfig(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).to_dict()


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return splitattn.create_model("resnest14d", num_classes=len(CLASSES), **KWARGS).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A val folder of two of the three classes (so labels are matched by name), a checkpoint, weights."""
    root = tmp_path_factory.mktemp("pe")
    rng = np.random.default_rng(0)
    for name in ("bee", "cow"):
        (root / "val" / name).mkdir(parents=True)
        for i in range(5):
            px = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / "val" / name / f"{i}.png")
    model = _tiny_model()
    ckpt = root / "run" / "last.ckpt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_ema": None, "classes": CLASSES,
                           "model_name": "resnest14d", "model_kwargs": KWARGS, "eval_cfg": EVAL_CFG,
                           "epoch": 3, "step": 30, "task": "classification"})
    weights = root / "w.safetensors"
    splitattn.save_weights(model, weights, spec=ModelSpec.from_model(model, CLASSES, EVAL_CFG))
    return {"root": root, "ckpt": ckpt, "weights": weights}


def _manual_eval(model: torch.nn.Module, val: Path) -> tuple[float, float, int]:
    """(top-1 %, mean cross-entropy, images) by a plain loop; label = the model's index of the folder name."""
    tf = create_eval_transform(EVAL_CFG)
    hits, loss, n = 0, 0.0, 0
    for path in sorted(val.glob("*/*.png")):
        target = CLASSES.index(path.parent.name)
        with torch.no_grad():
            logits = model(tf(Image.open(path).convert("RGB")).unsqueeze(0))
        hits += int(logits.argmax(1).item() == target)
        loss += F.cross_entropy(logits, torch.tensor([target])).item()
        n += 1
    return 100.0 * hits / n, loss / n, n


@pytest.mark.parametrize("which", ["ckpt", "weights"])
def test_evaluate_folder_matches_a_manual_loop(files: dict[str, Path], which: str) -> None:
    res = evaluate_folder(str(files[which]), str(files["root"]), batch_size=4, workers=0, device="cpu")
    top1, loss, n = _manual_eval(_tiny_model(), files["root"] / "val")
    assert res["images"] == n == 10 and res["skipped"] == 0
    assert res["top1"] == pytest.approx(top1) and res["loss"] == pytest.approx(loss, rel=1e-4)
    assert res["top5"] == 100.0  # three classes: every target is within the top 5
    assert (res["crop_size"], res["resize_size"], res["interpolation"]) == (32, 32, "bilinear")
    assert res["model"] == "resnest14d" and res["data"] == str(files["root"] / "val")


def test_eval_skips_bad_images_only_when_asked(files: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    val = tmp_path / "val"
    (val / "ant").mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(val / "ant" / "good.png")
    (val / "ant" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="bad.png"):
        evaluate_folder(str(files["weights"]), str(tmp_path), workers=0, device="cpu")
    rc = main(["eval", "--weights", str(files["weights"]), "--data", str(tmp_path), "--workers", "0",
               "--device", "cpu", "--skip-bad-images", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 1 and res["skipped"] == 1


def test_evaluate_folder_refuses_foreign_classes(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "zebra" / "z.png")
    with pytest.raises(ValueError, match=r"\['zebra'\].*not classes of"):
        evaluate_folder(str(files["weights"]), str(tmp_path), workers=0, device="cpu")


def test_predict_images_topk(files: dict[str, Path]) -> None:
    model, classes = load_for_inference(files["ckpt"])
    assert classes == CLASSES and not model.training
    images = sorted(str(p) for p in (files["root"] / "val").glob("*/*.png"))[:2]
    res = predict_images(model, classes, images, topk=2)
    assert [r["image"] for r in res] == images
    for r in res:
        probs = [p for _, _, p in r["top"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(classes[i] == name for name, i, _ in r["top"])
    full = predict_images(model, classes, images[:1], topk=10)[0]["top"]
    assert len(full) == 3 and sum(p for _, _, p in full) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="topk must be at least 1"):
        predict_images(model, classes, images, topk=0)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict_images(model, classes, ["nope.png"])


def test_export_weights_round_trip_and_refusals(files: dict[str, Path], tmp_path: Path) -> None:
    out = export_weights(files["ckpt"], tmp_path / "exported.safetensors")
    a, classes = load_for_inference(out)
    b, _ = load_for_inference(files["ckpt"])
    x = torch.randn(2, 3, 32, 32)
    assert classes == CLASSES and torch.equal(a(x), b(x))
    assert a.pretrained_cfg["input_size"] == (3, 32, 32) and a.pretrained_cfg["crop_pct"] == 1.0
    before = files["ckpt"].read_bytes()
    with pytest.raises(InputError, match="overwrite its input"):
        export_weights(files["ckpt"], files["ckpt"])
    with pytest.raises(InputError, match=r"\.ckpt name is for training checkpoints"):
        export_weights(files["ckpt"], tmp_path / "copy.ckpt")
    assert files["ckpt"].read_bytes() == before and not (tmp_path / "copy.ckpt").exists()
    with pytest.raises(CheckpointError, match="no EMA weights"):
        export_weights(files["ckpt"], tmp_path / "ema.safetensors", ema=True)


def test_load_for_inference_refuses_pretrained_kwargs_and_missing_keys(files: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    ck = load_checkpoint(files["ckpt"])
    evil = save_checkpoint(tmp_path / "evil.ckpt", {**ck, "model_kwargs": {**KWARGS, "pretrained": True}})
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: 'model_args.pretrained' must be absent"):
        load_for_inference(evil)
    model = _tiny_model()
    evil_w = tmp_path / "evil.safetensors"  # splitattn 0.1's metadata entries, read by the same validator
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(evil_w), metadata={
        "model_name": "resnest14d", "model_kwargs": json.dumps({"pretrained": "https://example.com/w.pth"}),
        "classes": json.dumps(CLASSES)})
    with pytest.raises(WeightsError, match=r"evil\.safetensors: 'model_args.pretrained' must be absent"):
        load_for_inference(evil_w)
    # A checkpoint without class names (not one of `splitattn train`): the classifier tells the count.
    no_classes = save_checkpoint(tmp_path / "nc.ckpt", {k: v for k, v in ck.items() if k != "classes"})
    assert load_for_inference(no_classes)[1] == ["class_0", "class_1", "class_2"]
    no_model = save_checkpoint(tmp_path / "nm.ckpt", {k: v for k, v in ck.items() if k != "model_name"})
    with pytest.raises(CheckpointError, match=r"nm\.ckpt does not record its model"):
        load_for_inference(no_model)
    detection = save_checkpoint(tmp_path / "det.ckpt", {**ck, "task": "detection"})
    with pytest.raises(CheckpointError, match=r"det.ckpt is a detection checkpoint, not a classification "
                                              r"one; evaluate it with `splitattn detect eval --config "):
        load_for_inference(detection)


def test_segmentation_metric_hand_computed() -> None:
    # Pixels (label, pred), the last one ignored:
    #   (0,0) (0,0) (0,1) (1,1) | (1,0) (1,1) (1,1) (255,1)
    # confusion (rows = label): [[2, 1], [1, 3]]
    # IoU0 = 2 / (3 + 3 - 2) = 0.5, IoU1 = 3 / (4 + 4 - 3) = 0.6, mIoU = 0.55, pixel acc = 5 / 7.
    pred = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1]]])
    label = torch.tensor([[[0, 0, 0, 1], [1, 1, 1, 255]]])
    m = SegmentationMetric(2)
    m.update(pred, label)
    assert m.matrix.tolist() == [[2, 1], [1, 3]]
    res = m.compute()
    assert res["iou"] == pytest.approx([0.5, 0.6])
    assert res["mIoU"] == pytest.approx(0.55) and res["pixel_acc"] == pytest.approx(5 / 7)
    # A third class that never occurs (neither label nor prediction) is left out of the mean.
    m3 = SegmentationMetric(3)
    m3.update(pred, label)
    r3 = m3.compute()
    assert r3["iou"][:2] == pytest.approx([0.5, 0.6]) and math.isnan(r3["iou"][2])
    assert r3["mIoU"] == pytest.approx(0.55)
    with pytest.raises(InputError, match="outside 0..1"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 2))


def test_topk_hits_hand_computed() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([2, 0, 0])
    # top-1: [1, 0, 2] -> one hit (sample 1); top-2 adds sample 0 (2 in {1, 2}); sample 2 is last.
    assert topk_hits(logits, target, (1, 2, 5)) == [1, 2, 3]


def test_shard_and_unwrap_single_process() -> None:
    ds = list(range(5))
    assert shard_dataset(ds) is ds  # type: ignore[arg-type]
    net = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(net)) is net
    assert unwrap_model(net) is net


def test_plot_run_writes_png(tmp_path: Path) -> None:
    recs = [{"epoch": e, "train_loss": 2.0 - e, "val_loss": 2.1 - e, "val_top1": 30.0 + e,
             "lr": 0.1 / (e + 1)} for e in range(2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"epoch": 2, "tr')
    path = plot_run(tmp_path)
    assert path == tmp_path / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "step": 5}\n')
    with pytest.raises(InputError, match="no finished epoch"):
        plot_run(tmp_path)
