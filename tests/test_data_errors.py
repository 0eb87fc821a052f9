"""Every bad input of `splitattn train` is one clear error line naming the file/folder and the fix."""

from __future__ import annotations

import shutil

import pytest

from conftest import TINY_TRAIN_ARGS
from splitattn.cli import main
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.engine.config import load_config, parse_override

FAST = [
    *TINY_TRAIN_ARGS,
    "--batch-size",
    "2",
    "--epochs",
    "1",
    "--set",
    "mixup_alpha=0",
    "--set",
    "auto_augment=null",
]


@pytest.fixture
def data(tmp_path):
    return make_synthetic_imagefolder(tmp_path / "data", num_classes=2, train_per_class=3, val_per_class=2)


def _train(capsys, data, out, *extra):
    rc = main(["train", "--data", str(data), "--output", str(out), *FAST, *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_missing_data_dir(tmp_path, capsys):
    rc, err = _train(capsys, tmp_path / "nope", tmp_path / "run")
    assert rc == 2 and str(tmp_path / "nope") in err and "does not exist" in err
    assert len(err.splitlines()) == 1


def test_no_train_folder(tmp_path, data, capsys):
    shutil.rmtree(data / "train")
    rc, err = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and "no train/ sub-folder" in err and str(data) in err


def test_class_folder_without_images(tmp_path, data, capsys):
    for f in (data / "train" / "class_1").iterdir():
        f.unlink()
    (data / "train" / "class_1" / "notes.txt").write_text("not an image")
    rc, err = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and "class folder" in err and "class_1" in err and "has no images" in err


def test_val_classes_differ(tmp_path, data, capsys):
    (data / "val" / "class_1").rename(data / "val" / "class_9")
    rc, err = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and "differ" in err and "class_1" in err and "class_9" in err


@pytest.mark.parametrize("kind", ["corrupt", "truncated"])
def test_bad_image_errors_then_skips_with_count(tmp_path, data, capsys, kind):
    bad = data / "train" / "class_0" / "000.png"
    if kind == "corrupt":
        bad.write_bytes(b"definitely not a png")
    else:
        bad.write_bytes(bad.read_bytes()[:60])
    rc, err = _train(capsys, data, tmp_path / "run")
    assert rc == 2 and str(bad) in err and "--skip-bad-images" in err
    assert len(err.splitlines()) == 1
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "run2"),
            *FAST,
            "--batch-size",
            "3",
            "--skip-bad-images",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "skipped_images 1," in out


def test_unknown_config_key_suggests_closest(tmp_path, data, capsys):
    rc, err = _train(capsys, data, tmp_path / "run", "--set", "mixup_alpah=0.3")
    assert rc == 2 and "unknown config key 'mixup_alpah'" in err and "did you mean 'mixup_alpha'" in err
    cfg_file = tmp_path / "recipe.yaml"
    cfg_file.write_text("_base_: base.yaml\nlabel_smoothing: 0.2\n")
    (tmp_path / "base.yaml").write_text("epochs: 3\nwarmup_epoch: 1\n")
    with pytest.raises(ValueError, match=r"'warmup_epoch' in config file .*base.yaml.*'warmup_epochs'"):
        load_config(None, cfg_file)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_override("epochs")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(None, tmp_path / "missing.yaml")


def test_config_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("config_version: 2\nepochs: 3\nlabel_smoothing: 0.2\namp: off\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nepochs: 5\n")
    cfg = load_config(None, tmp_path / "child.yaml", {"batch_size": 7, "lr": None})
    assert (cfg.epochs, cfg.label_smoothing, cfg.batch_size, cfg.amp) == (5, 0.2, 7, "off")
    assert cfg.lr is None and cfg.nesterov is True
