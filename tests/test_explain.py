"""``splitattn explain``: figures and JSON of the split attention, Grad-CAM and scale test of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import splitattn
from splitattn.cli import main
from splitattn.data.preprocessing import DataConfig
from splitattn.data.transforms import create_eval_transform
from splitattn.explain.explanations import RANDOM_NOTE, grad_cam, load_explain_model, scale_transform
from splitattn.utils.train_checkpoint import save_checkpoint

CLASSES = ["ant", "bee", "cow"]
KWARGS = {"stem_width": 8, "base_width": 8}
EVAL_CFG = DataConfig(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).to_dict()
FIGURES = ("attention", "channels", "gradcam", "scales")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A training checkpoint of a 32 px digits-sized model, a radix-0 weights file, and images."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    model = splitattn.create_model("resnest14d", num_classes=len(CLASSES), **KWARGS)
    ckpt = root / "run" / "best.ckpt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_ema": None, "classes": CLASSES,
                           "model_name": "resnest14d", "model_kwargs": KWARGS, "eval_cfg": EVAL_CFG,
                           "epoch": 3, "step": 30, "task": "classification"})
    plain_kwargs = {**KWARGS, "radix": 0}
    plain = root / "plain.safetensors"
    splitattn.save_weights(splitattn.create_model("resnest14d", num_classes=3, **plain_kwargs), plain,
                           metadata={"model_name": "resnest14d", "model_kwargs": plain_kwargs,
                                     "classes": CLASSES, "eval_cfg": EVAL_CFG})
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(40, 36), (90, 120)]):
        px = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        px[size[0] // 4:-size[0] // 4, size[1] // 4:-size[1] // 4] = 255  # a bright object in the centre
        (root / f"d{i}").mkdir()
        images.append(root / f"d{i}" / "img.png")  # the same stem twice: the outputs get its position
        Image.fromarray(px).save(images[-1])
    bad = root / "bad.png"
    bad.write_bytes(b"not an image")
    return {"root": root, "ckpt": ckpt, "plain": plain, "img0": images[0], "img1": images[1], "bad": bad}


def _check_outputs(out: Path, stems: list[str]) -> dict:
    for stem in stems:
        for fig in FIGURES:
            with Image.open(out / f"{stem}_{fig}.png") as im:
                assert im.format == "PNG" and min(im.size) > 200
    return json.loads((out / "explain.json").read_text())


def test_explain_a_training_checkpoint(files: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["explain", str(files["img0"]), str(files["img1"]), "--weights", str(files["ckpt"]),
               "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "random" not in printed and f"wrote {out / 'explain.json'}" in printed
    rec = _check_outputs(out, ["img_0", "img_1"])
    assert rec["model"] == "resnest14d" and rec["weights"] == str(files["ckpt"]) and not rec["random_weights"]
    assert rec["scales"] == [1.0, 1.5, 2.0] and len(rec["images"]) == 2
    for img in rec["images"]:
        assert img["prediction"]["class"] in CLASSES and 0 < img["prediction"]["confidence"] <= 1
        assert list(img["blocks"]) == [f"layer{i}.0.conv2" for i in range(1, 5)]
        for b in img["blocks"].values():
            assert b["radix"] == 2 and sum(b["mean"]) == pytest.approx(1.0)
            assert 0 <= b["entropy_bits"] <= b["max_entropy_bits"] == 1.0 and len(b["std"]) == 2
        assert [s["scale"] for s in img["scales"]] == [1.0, 1.5, 2.0]
        assert img["scales"][0]["blocks"] == img["blocks"]
        assert all(d == [0.0, 0.0] for d in img["scales"][0]["delta_mean"].values())
        s2 = img["scales"][2]
        for name, d in s2["delta_mean"].items():
            means = zip(s2["blocks"][name]["mean"], img["blocks"][name]["mean"])
            assert d == pytest.approx([a - b for a, b in means])
        assert set(img["figures"]) == set(FIGURES)


def test_explain_a_zoo_model_with_random_weights(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo"
    rc = main(["explain", str(files["img1"]), "--model", "resnest14d", "--scales", "2", "0.5",
               "--output", str(out)])
    assert rc == 0
    assert RANDOM_NOTE in capsys.readouterr().out
    rec = _check_outputs(out, ["img"])
    assert rec["random_weights"] and rec["weights"] == RANDOM_NOTE and rec["scales"] == [0.5, 1.0, 2.0]
    img = rec["images"][0]
    assert len(img["prediction"]["class"]) > 0 and 0 <= img["prediction"]["index"] < 1000
    assert img["cam_stage_sizes"] == {"layer1": [56, 56], "layer2": [28, 28], "layer3": [14, 14],
                                      "layer4": [7, 7]}


@pytest.mark.parametrize(("case", "message"), [
    ("radix0", r"model resnest14d \(.*plain.safetensors\): .*no attention to show"),
    ("missing", r"image .*nope.png does not exist"),
    ("unreadable", r"cannot read image .*bad.png"),
    ("no model", r"explain needs a model: --weights FILE .* or --model NAME"),
    ("scale", r"scales must be numbers in \[0.25, 8.0\].* got 9.0"),
])
def test_explain_fails_clearly(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               case: str, message: str) -> None:
    img, weights = str(files["img0"]), ["--weights", str(files["ckpt"])]
    args = {"radix0": [img, "--weights", str(files["plain"])],
            "missing": [str(tmp_path / "nope.png"), *weights],
            "unreadable": [str(files["bad"]), *weights],
            "no model": [img],
            "scale": [img, *weights, "--scales", "9"]}[case]
    assert main(["explain", *args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("splitattn explain: error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing written


def test_explain_refuses_an_image_too_long_to_zoom(files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny file of 300,000 x 1 pixels would be resized to gigabytes by the scale test: a bad image."""
    long = tmp_path / "long.png"
    __import__("PIL.Image").Image.new("L", (300_000, 1)).save(long)
    assert main(["explain", str(long), "--weights", str(files["ckpt"]), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "long.png is 300000 x 1 pixels" in err and not (tmp_path / "o").exists()


def test_scale_views_and_grad_cam(files: dict[str, Path]) -> None:
    target = load_explain_model(weights=files["ckpt"])
    cfg = DataConfig.from_dict(EVAL_CFG)
    image = Image.open(files["img1"]).convert("RGB")  # 120 x 90
    view = scale_transform(cfg, 1.0)(image)
    torch.testing.assert_close(view, create_eval_transform(cfg)(image))  # scale 1 = the model's eval view
    zoomed = scale_transform(cfg, 2.0)(image)
    assert zoomed.shape == (3, 32, 32) and not torch.equal(zoomed, view)
    small = scale_transform(cfg, 0.5)(image)  # zoomed out: padded with the mean (0 after normalising)
    assert torch.all(small[:, :, 0] == 0) and torch.all(small[:, 0] == 0) and small.abs().sum() > 0

    model = target.model
    logits, cls, cams = grad_cam(model, view.unsqueeze(0))
    assert cls == int(logits.argmax()) and list(cams) == ["layer1", "layer2", "layer3", "layer4"]
    assert all(c.shape == (32, 32) and c.min() >= 0 and c.max() <= 1 for c in cams.values())
    # The layer4 map by hand: forward_features / forward_head instead of hooks on the stages.
    feats = model.forward_features(view.unsqueeze(0)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.forward_head(feats)[0, cls], feats)
    ref = torch.relu((g.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True)).detach()
    ref = torch.nn.functional.interpolate(ref, size=(32, 32), mode="bilinear")[0, 0]
    torch.testing.assert_close(cams["layer4"], ref / ref.max() if ref.max() > 0 else ref)
