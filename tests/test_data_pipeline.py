"""Eval preprocessing config (crop arithmetic against PAPER.md), the train transform, per-sample seeding,
the digits ImageFolder, the samplers."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import splitattn
from splitattn.data import (
    DataConfig,
    ImageFolderDataset,
    SeededDataset,
    apply_data_config,
    create_eval_transform,
    create_train_transform,
    resolve_data_config,
    sample_seed,
)
from splitattn.data.augment import PCALighting
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.engine.sampler import GlobalBatchSampler
from splitattn.errors import ConfigError, InputError
from splitattn.evaluation.evaluate import shard_dataset
from splitattn.models import get_model_cfg, get_pretrained_cfg

# PAPER.md: crop 224/256/320/416; eval resizes the short side to crop + 32 (ratio crop / (crop + 32)).
PAPER_CROPS = {"resnest50": (224, 0.875), "resnest101": (256, 0.889), "resnest200": (320, 0.909),
               "resnest269": (416, 0.929)}

R50 = get_pretrained_cfg("resnest50")  # the registry's timm-style pretrained_cfg dict


@pytest.mark.parametrize("name", sorted(PAPER_CROPS))
def test_eval_crop_matches_paper(name):
    crop, ratio = PAPER_CROPS[name]
    e = resolve_data_config(get_pretrained_cfg(name))
    assert e.crop_size == crop
    assert e.resize_size == crop + 32
    assert crop / e.resize_size == pytest.approx(ratio, abs=5e-4)
    assert e.interpolation == "bicubic"
    img = Image.fromarray(np.zeros((crop + 100, 2 * crop, 3), dtype=np.uint8))
    assert create_eval_transform(get_pretrained_cfg(name))(img).shape == (3, crop, crop)


def test_eval_crop_overrides():
    e = resolve_data_config(R50, img_size=256, crop_pct=1.0)
    assert (e.crop_size, e.resize_size) == (256, 256)
    with pytest.raises(ValueError, match="crop_pct"):
        resolve_data_config(R50, crop_pct=1.5)
    # 256 / 0.889 = 287.96: rounded to the paper's 288, not floored to 287
    assert resolve_data_config(R50, img_size=256, crop_pct=0.889).resize_size == 288
    tf = create_eval_transform(R50, img_size=64, crop_pct=0.5)
    assert tf(Image.fromarray(np.zeros((300, 200, 3), dtype=np.uint8))).shape == (3, 64, 64)


def test_resolve_data_config_sources_and_round_trip():
    cfg101 = get_model_cfg("resnest101")
    by_name = resolve_data_config(get_pretrained_cfg("resnest101"))
    assert by_name == resolve_data_config(cfg101) == DataConfig(256, cfg101.crop_pct, "bicubic", cfg101.mean,
                                                                 cfg101.std)
    assert resolve_data_config() == resolve_data_config(R50)
    # The data layer does not import the model registry: a name is refused, saying what to pass.
    with pytest.raises(InputError, match=r"not the name 'resnest101'.*get_pretrained_cfg\('resnest101'\)"):
        resolve_data_config("resnest101")
    model = torch.nn.Linear(2, 2)
    assert resolve_data_config(model) == resolve_data_config(R50)  # no pretrained_cfg: defaults
    model.pretrained_cfg = cfg101
    assert resolve_data_config(model) == by_name
    # to_dict has the keys of the eval_cfg dicts stored in checkpoints; from_dict / resolve invert it
    d = by_name.to_dict()
    assert d == {"img_size": 256, "crop_pct": cfg101.crop_pct, "interpolation": "bicubic",
                 "mean": list(cfg101.mean), "std": list(cfg101.std)}
    assert DataConfig.from_dict(d) == resolve_data_config(d) == by_name
    assert resolve_data_config(by_name) == by_name
    over = resolve_data_config(d, img_size=128, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=[1, 1, 1])
    assert (over.crop_size, over.crop_pct, over.interpolation) == (128, cfg101.crop_pct, "bilinear")
    assert over.mean == (0.5, 0.5, 0.5) and over.std == (1.0, 1.0, 1.0)
    assert resolve_data_config({"input_size": (3, 96, 96), "crop_pct": 0.9, "interpolation": "bilinear",
                                "mean": d["mean"], "std": d["std"]}).crop_size == 96  # timm's key


@pytest.mark.parametrize("key,value", [("img_size", 0), ("img_size", 12.5), ("crop_pct", 0.0),
                                       ("crop_pct", 1.01), ("interpolation", "lanczos"),
                                       ("mean", (0.5, 0.5)), ("std", (0.2, 0.0, 0.2)), ("std", "abc")])
def test_resolve_data_config_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve_data_config(R50, **{key: value})
    d = resolve_data_config(R50).to_dict()
    with pytest.raises(ConfigError, match=key):
        resolve_data_config({**d, key: value})
    del d[key]
    with pytest.raises(ConfigError, match=key):
        DataConfig.from_dict(d)


def test_apply_data_config_records_run_preprocessing():
    model = splitattn.create_model("resnest14d", num_classes=2)
    registered = model.pretrained_cfg
    dc = resolve_data_config(R50, img_size=160, crop_pct=0.95, interpolation="bilinear")
    assert apply_data_config(model, dc.to_dict()) is model
    cfg = model.pretrained_cfg  # a new dict of timm's keys: the run's preprocessing over the registry's
    assert cfg["input_size"] == (3, 160, 160) and cfg["pool_size"] == (5, 5) and cfg["crop_pct"] == 0.95
    assert cfg["interpolation"] == "bilinear" and cfg["architecture"] == "resnest14d"
    assert cfg["url"] == get_model_cfg("resnest14d").url and registered["crop_pct"] == 0.875
    assert resolve_data_config(model) == dc
    legacy = torch.nn.Linear(2, 2)  # a ModelCfg set by hand (the old contract) is still read and replaced
    legacy.pretrained_cfg = get_model_cfg("resnest50")
    assert resolve_data_config(apply_data_config(legacy, dc)) == dc
    assert legacy.pretrained_cfg.name == "resnest50"
    with pytest.raises(ValueError, match="has no pretrained_cfg"):
        apply_data_config(torch.nn.Linear(2, 2), dc)


def test_train_transform_shape_and_seeded_determinism(tmp_path):
    root = make_synthetic_imagefolder(tmp_path, num_classes=2, train_per_class=2, val_per_class=1, size=40)
    tf = create_train_transform(32, auto_augment="imagenet")
    ds = SeededDataset(ImageFolderDataset(root / "train", tf), seed=7)
    a, b = ds[1][0], ds[1][0]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)  # the sample's augmentation depends on (seed, epoch, index) only
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a)
    assert ds.classes == ["class_0", "class_1"] and len(ds) == 4  # attributes of the wrapped dataset
    assert sample_seed(0, 0, 1) != sample_seed(0, 1, 0)
    with pytest.raises(ValueError, match="auto_augment"):
        create_train_transform(32, auto_augment="bogus")


class _Draws(torch.utils.data.Dataset):
    """Each item: one draw from torch, Python's random and NumPy's global RNG."""

    classes = ["a", "b"]

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([torch.rand(()).item(), random.random(), np.random.rand(), float(i)])


def _rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def test_seeded_dataset_item_depends_only_on_seed_epoch_index():
    ds = SeededDataset(_Draws(), seed=3)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    before = _rng_states()
    again = [ds[i] for i in reversed(range(len(ds)))][::-1]
    after = _rng_states()
    assert all(torch.equal(x, y) for x, y in zip(first, again))  # whatever the global state and order
    assert torch.equal(before[0], after[0]) and before[1] == after[1]  # global RNGs untouched
    assert all(np.array_equal(x, y) for x, y in zip(before[2][1:3], after[2][1:3]))
    assert len({tuple(x[:3].tolist()) for x in first}) == len(first)  # indices differ
    ds.set_epoch(1)
    assert all(not torch.equal(ds[i][:3], first[i][:3]) for i in range(len(ds)))  # epochs differ
    assert len(set(first[0][:3].tolist())) == 3  # the three RNGs are seeded, each draws its own number
    # attribute forwarding, and in DataLoader workers (pickled): the same items as in the main process
    assert ds.classes == ["a", "b"]
    assert not hasattr(ds, "missing_attribute")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.classes == ["a", "b"] and torch.equal(clone[4], ds[4])
    ds.set_epoch(0)
    workers = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=2)))
    assert torch.equal(workers, torch.stack(first))


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
    shards = [list(shard_dataset(list(range(7)), r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


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
