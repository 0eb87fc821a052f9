"""Eval crop arithmetic against PAPER.md, the train transform, the digits ImageFolder, the samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from splitattn.data import create_eval_transform, create_train_transform, resolve_eval_cfg
from splitattn.data.augment import PCALighting
from splitattn.data.datasets import ImageFolderDataset, sample_seed
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.engine.sampler import GlobalBatchSampler, shard_indices

# PAPER.md: crop 224/256/320/416; eval resizes the short side to crop + 32 (ratio crop / (crop + 32)).
PAPER_CROPS = {"resnest50": (224, 0.875), "resnest101": (256, 0.889), "resnest200": (320, 0.909),
               "resnest269": (416, 0.929)}


@pytest.mark.parametrize("name", sorted(PAPER_CROPS))
def test_eval_crop_matches_paper(name):
    crop, ratio = PAPER_CROPS[name]
    e = resolve_eval_cfg(name)
    assert e["crop_size"] == crop
    assert e["resize_size"] == crop + 32
    assert crop / e["resize_size"] == pytest.approx(ratio, abs=5e-4)
    assert e["interpolation"] == "bicubic"
    img = Image.fromarray(np.zeros((crop + 100, 2 * crop, 3), dtype=np.uint8))
    assert create_eval_transform(name)(img).shape == (3, crop, crop)


def test_eval_crop_overrides():
    e = resolve_eval_cfg("resnest50", img_size=256, crop_pct=1.0)
    assert (e["crop_size"], e["resize_size"]) == (256, 256)
    with pytest.raises(ValueError, match="crop_pct"):
        resolve_eval_cfg("resnest50", crop_pct=1.5)


def test_train_transform_shape_and_seeded_determinism(tmp_path):
    root = make_synthetic_imagefolder(tmp_path, num_classes=2, train_per_class=2, val_per_class=1, size=40)
    tf = create_train_transform(32, auto_augment="imagenet")
    ds = ImageFolderDataset(root / "train", tf, seed=7)
    a, b = ds[1][0], ds[1][0]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)  # the sample's augmentation depends on (seed, epoch, index) only
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a)
    assert sample_seed(0, 0, 1) != sample_seed(0, 1, 0)
    with pytest.raises(ValueError, match="auto_augment"):
        create_train_transform(32, auto_augment="bogus")


def test_pca_lighting_adds_one_rgb_offset():
    torch.manual_seed(0)
    img = torch.full((3, 4, 4), 0.5)
    out = PCALighting(0.1)(img)
    delta = out - img
    assert delta.abs().max() > 0
    torch.testing.assert_close(delta, delta[:, :1, :1].expand_as(delta))
    torch.testing.assert_close(PCALighting(0.0)(img), img)


def test_global_batch_sampler_splits_one_global_batch_over_ranks():
    single = GlobalBatchSampler(22, batch_size=4, world_size=1, seed=3)
    ranks = [GlobalBatchSampler(22, batch_size=2, world_size=2, rank=r, seed=3) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(5)
    got = list(single)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(got) == len(r0) == len(r1) == 5
    assert [a + b for a, b in zip(r0, r1)] == got
    single.set_epoch(5, start_batch=3)
    assert list(single) == got[3:] and len(single) == 2
    assert sorted(sum([shard_indices(7, 3, r) for r in range(3)], [])) == list(range(7))


def test_digits_imagefolder_is_stratified(tmp_path):
    from splitattn.data.digits import build_digits_imagefolder

    root = build_digits_imagefolder(tmp_path / "digits", size=16)
    train = ImageFolderDataset(root / "train")
    val = ImageFolderDataset(root / "val")
    assert train.classes == val.classes == [str(d) for d in range(10)]
    assert len(train) + len(val) == 1797 and len(val) == 360
    counts = np.bincount(val.targets)
    assert counts.min() >= 35 and counts.max() <= 37
    img, _ = train[0]
    assert img.size == (16, 16)
