"""The one config system: typed keys, ranges, _base_ inheritance, suggestions, renamed keys; CLI errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from splitattn.cli import main
from splitattn.engine import ClassificationConfig, DetectionConfig, SegmentationConfig, load_config
from splitattn.engine.config import CONFIG_VERSION, parse_override, per_process_batch, save_config
from splitattn.errors import ConfigError, MissingFileError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("key, value, message", [
    ("epochs", [1, 2], "'epochs' must be int, got [1, 2]"),
    ("epochs", 1.7, "'epochs' must be int, got 1.7"),
    ("rrc_scale", 0.5, "'rrc_scale' must be list of float, got 0.5"),
    ("mean", [1, 2], "'mean' must have 3 values, got 2"),
    ("label_smoothing", 2, "'label_smoothing' must be within [0, 1], got 2.0"),
    ("mixup_alpha", -1, "'mixup_alpha' must be >= 0, got -1.0"),
    ("warmup_epochs", -5, "'warmup_epochs' must be >= 0, got -5"),
    ("lr", "abc", "'lr' must be float or null, got 'abc'"),
    ("img_size", 0, "'img_size' must be >= 1, got 0"),
    ("amp", "fp8", "'amp' must be 'auto' | 'bf16' | 'fp16' | 'off', got 'fp8'"),
    ("model_kwargs", [1], "'model_kwargs' must be dict"),
    ("crop_pct", 0, "'crop_pct' must be within"),
])
def test_values_are_typed_and_range_checked(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_config("classification", overrides={key: value})
    assert message in str(e.value)


@pytest.mark.parametrize("key, suggestion", [
    ("learning_rate", "lr"), ("warmup", "warmup_epochs"), ("lr_warmup", "warmup_epochs"), ("epoch", "epochs"),
    ("mixup", "mixup_alpha"),
])
def test_unknown_keys_suggest_the_closest(key, suggestion):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}' on the command line "
                                          rf"\(did you mean '{suggestion}'\?\)"):
        load_config("classification", overrides={key: 1})
    with pytest.raises(ConfigError, match="did you mean 'max_iter'"):
        load_config("detection", overrides={"max_iters": 3})


def test_conversions_and_yaml_off():
    cfg = load_config("classification", overrides={"amp": False, "epochs": 3.0, "lr": 1, "crop_pct": 1})
    assert isinstance(cfg, ClassificationConfig)
    assert (cfg.amp, cfg.epochs, cfg.lr, cfg.crop_pct) == ("off", 3, 1.0, 1.0)
    assert type(cfg.epochs) is int and type(cfg.lr) is float
    cfg = load_config("classification", overrides={"grad_checkpointing": "attn"})
    assert cfg.grad_checkpointing == "attn"
    assert parse_override("model_kwargs={stem_width: 8}") == ("model_kwargs", {"stem_width": 8})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("epochs")


def test_base_inheritance_and_file_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("config_version: 2\nepochs: 5\nbatch_size: 32\nmodel: resnest101\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nbatch_size: 8\n")
    cfg = load_config(None, tmp_path / "child.yaml", {"batch_size": 7, "lr": None})
    assert (cfg.epochs, cfg.batch_size, cfg.model, cfg.lr) == (5, 7, "resnest101", None)
    (tmp_path / "bad.yaml").write_text("_base_: base.yaml\nepohcs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'epohcs' in config file .*bad.yaml "
                                          r"\(did you mean 'epochs'\?\)"):
        load_config(None, tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(None, tmp_path / "loop.yaml")
    with pytest.raises(MissingFileError, match="missing.yaml does not exist"):
        load_config(None, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(None, tmp_path / "list.yaml")


def test_one_section_per_task_and_task_mismatch():
    det = load_config(None, CONFIGS / "detection" / "cascade_mask_rcnn_fpn_resnest50.yaml")
    assert isinstance(det, DetectionConfig)
    assert (det.backbone_norm, det.box_head, det.max_iter, det.lr_steps) == ("syncbn", "4conv1fc", 90000,
                                                                             [60000, 80000])
    seg = load_config(None, CONFIGS / "segmentation" / "deeplabv3_resnest101_cityscapes.yaml")
    assert isinstance(seg, SegmentationConfig)
    assert (seg.dataset, seg.num_classes, seg.output_stride) == ("cityscapes", 19, 8)
    with pytest.raises(ConfigError, match="is a detection config, not segmentation"):
        load_config("segmentation", CONFIGS / "detection" / "faster_rcnn_fpn_resnest50.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        load_config("detection", overrides={"epochs": 3})


def test_renamed_key_still_works_with_a_warning(tmp_path, caplog):
    (tmp_path / "old.yaml").write_text("task: detection\ncheckpoint_period: 7\n")
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        cfg = load_config(None, tmp_path / "old.yaml")
    assert cfg.checkpoint_interval == 7
    assert "'checkpoint_period'" in caplog.text and "deprecated: use 'checkpoint_interval'" in caplog.text


def test_batch_size_is_the_global_batch_for_every_task(tmp_path):
    for task in ("classification", "detection", "segmentation"):
        cfg = load_config(task, overrides={"batch_size": 8})
        assert (per_process_batch(cfg, 1), per_process_batch(cfg, 2), per_process_batch(cfg, 8)) == (8, 4, 1)
        with pytest.raises(ConfigError) as e:
            per_process_batch(cfg, 3)
        assert str(e.value) == ("batch_size 8 (the global batch) is not divisible by 3 processes; use a "
                                "multiple of 3, or set batch_size_per_process")
    cfg = load_config("classification", CONFIGS / "resnest50.yaml")  # the recipe: 128 per GPU
    assert (cfg.batch_size_per_process, per_process_batch(cfg, 3)) == (128, 128)
    cfg = load_config("classification", CONFIGS / "resnest50.yaml", {"batch_size": 64})  # the CLI wins
    assert (cfg.batch_size_per_process, per_process_batch(cfg, 2)) == (None, 32)
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nbatch_size_per_process: 4\n")
    (tmp_path / "base.yaml").write_text("config_version: 2\nbatch_size: 32\n")
    cfg = load_config(None, tmp_path / "child.yaml")
    assert (cfg.batch_size_per_process, per_process_batch(cfg, 2)) == (4, 4)
    (tmp_path / "both.yaml").write_text("config_version: 2\nbatch_size: 32\nbatch_size_per_process: 4\n")
    with pytest.raises(ConfigError, match=r"both.yaml: batch_size and batch_size_per_process are both given; "
                                          "keep one"):
        load_config(None, tmp_path / "both.yaml")
    with pytest.raises(ConfigError, match="on the command line: batch_size and batch_size_per_process"):
        load_config("detection", overrides={"batch_size": 4, "batch_size_per_process": 2})


def test_an_old_classification_config_keeps_its_per_process_batch_with_a_warning(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("epochs: 3\nbatch_size: 32\n")  # no config_version: written before version 2
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        cfg = load_config(None, old)
    assert (cfg.batch_size_per_process, per_process_batch(cfg, 4)) == (32, 32)
    assert cfg.config_version == CONFIG_VERSION  # read in the current version's terms (and saved so)
    assert caplog.messages == [
        f"config key 'batch_size' in config file {old} is read per process (global batch = 32 x processes), "
        "its meaning in configs without config_version (deprecated): batch_size is now the global batch of "
        f"every task; write batch_size_per_process: 32, or config_version: {CONFIG_VERSION} with the global "
        "batch_size"]
    caplog.clear()
    old.write_text("task: detection\nbatch_size: 32\n")  # detection's batch_size was global already
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        assert per_process_batch(load_config(None, old), 4) == 8
    old.write_text(f"config_version: {CONFIG_VERSION + 1}\n")
    with pytest.raises(ConfigError, match=f"config_version {CONFIG_VERSION + 1} in config file .*old.yaml is "
                                          f"newer than this splitattn reads \\({CONFIG_VERSION}\\); upgrade"):
        load_config(None, old)
    assert not caplog.messages
    with pytest.raises(ConfigError, match="config key 'task' on the command line cannot change the task"):
        load_config("classification", overrides={"task": "detection"})


@pytest.mark.parametrize("text", ["config_version: 2\nbatch_size_per_process: 32\n",
                                  "config_version: 2\nbatch_size: 24\n", "batch_size: 8\n"])
def test_a_saved_run_config_loads_back_as_the_same_config(tmp_path, text):
    """A run folder's config.yaml (save_config) holds one batch key, so --config on it gives the same run."""
    (tmp_path / "r.yaml").write_text(text)
    cfg = load_config(None, tmp_path / "r.yaml")
    save_config(cfg, tmp_path / "saved.yaml")
    saved = (tmp_path / "saved.yaml").read_text()
    assert ("batch_size_per_process:" in saved) != ("\nbatch_size:" in saved)
    assert load_config(None, tmp_path / "saved.yaml") == cfg


def test_cli_prints_project_errors_as_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "r"), "--set", "epochs=x"]) == 2
    err = capsys.readouterr().err
    assert err == "splitattn train: error: config key 'epochs' must be int, got 'x'\n"
    # -v: the same error with its traceback
    assert main(["-v", "train", "--data", str(tmp_path), "--set", "learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("error: unknown config key 'learning_rate' on the command line "
                                 "(did you mean 'lr'?)")


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    import splitattn.engine

    def broken(cfg):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(splitattn.engine, "train", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["train", "--data", "x", "--output", "y"])
