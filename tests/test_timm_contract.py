"""timm's model contract, checked with timm itself.

Adapted from timm's tests/test_models.py (test_model_default_cfgs, test_model_forward_intermediates,
test_model_forward_features, test_model_forward_intermediates_features) and run over every registered
model (on the meta device where only shapes and names matter), plus the timm tools that read a model:
``timm.data.resolve_data_config`` / ``create_transform``, ``timm.optim.create_optimizer_v2`` with layer
decay, ``timm.models.save_for_hf``; each compared with what timm's own resnest models give.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import splitattn
from splitattn.data.preprocessing import apply_data_config, resolve_data_config
from splitattn.errors import ConfigError, InputError
from splitattn.models import _registry as registry
from splitattn.models._features import FeatureGetterNet, FeatureInfo, features_only_model

timm = pytest.importorskip("timm")
pytest.importorskip("timm.data")
pytest.importorskip("timm.optim")

ALL_NAMES = splitattn.list_models(include_aliases=True)
TIMM_NAMES = [n for n in ALL_NAMES if n in timm.list_models("resnest*")]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _timm_cfg(name: str) -> dict:
    return timm.models.get_pretrained_cfg(name).to_dict()


def test_registry_pretrained_cfgs_are_timms_for_timms_names() -> None:
    timm_keys = tuple(f.name for f in dataclasses.fields(timm.models.PretrainedCfg))
    assert timm_keys == registry.PRETRAINED_CFG_KEYS
    assert set(TIMM_NAMES) == set(timm.list_models("resnest*"))  # every timm resnest has a name here
    for name in ALL_NAMES:
        cfg = registry.get_pretrained_cfg(name)
        assert timm.models.PretrainedCfg(**cfg).input_size == cfg["input_size"]
        assert cfg["architecture"] == name and cfg["url"] == splitattn.get_model_cfg(name).url
        if name in TIMM_NAMES:  # timm's values for timm's name; url: where splitattn downloads them
            assert {k: v for k, v in cfg.items() if k in _timm_cfg(name) and k != "url"} == {
                k: v for k, v in _timm_cfg(name).items() if k != "url"}, name
    official = registry.get_pretrained_cfg("resnest101")
    assert official["interpolation"] == "bicubic" and official["input_size"] == (3, 256, 256)
    assert official["crop_pct"] == pytest.approx(256 / 288) and official["pool_size"] == (8, 8)
    assert official["hf_hub_id"] == "timm/resnest101e.in1k"  # the same weights, hosted by timm
    assert registry.get_pretrained_cfg("resnest50d")["interpolation"] == "bilinear"
    assert registry.get_pretrained_cfg("resnest50d.in1k") == registry.get_pretrained_cfg("resnest50d")
    assert "hf_hub_id" not in registry.get_pretrained_cfg("resnest50_fast_2s1x64d")  # timm has no copy
    fresh = registry.get_pretrained_cfg("resnest14d")
    fresh["crop_pct"] = 0.5
    assert registry.get_pretrained_cfg("resnest14d")["crop_pct"] == 0.875
    with pytest.raises(InputError, match="did you mean resnest50"):
        registry.get_pretrained_cfg("resnest5O")
    with pytest.raises(ConfigError, match=r"\['top1'\] are not fields of timm's PretrainedCfg"):
        registry.default_pretrained_cfg(top1=80.0)


@pytest.mark.parametrize("name", splitattn.list_models())
def test_model_default_cfgs_on_meta(name: str) -> None:
    """test_model_default_cfgs's names and sizes; timm's feature_info for the models timm has."""
    with torch.device("meta"):
        model = splitattn.create_model(name)
        feats = splitattn.create_model(name, features_only=True)
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and cfg == registry.get_pretrained_cfg(name)
    assert model.model_cfg == splitattn.get_model_cfg(name)
    assert model.num_classes == 1000 and model.num_features == model.head_hidden_size == 2048
    state = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    assert cfg["pool_size"] == tuple(math.ceil(s / 32) for s in cfg["input_size"][1:])
    assert isinstance(feats.feature_info, FeatureInfo) and len(feats.feature_info.channels()) == 5
    assert "num_classes" not in feats.pretrained_cfg and "classifier" not in feats.pretrained_cfg
    timm_name = {splitattn.get_model_cfg(n).name: n for n in TIMM_NAMES}.get(name)
    if timm_name:
        with torch.device("meta"):
            ref = timm.create_model(timm_name, pretrained=False, features_only=True)
        assert [{k: f[k] for k in ("num_chs", "reduction", "module")} for f in model.feature_info] == [
            {k: f[k] for k in ("num_chs", "reduction", "module")} for f in ref.feature_info.info]
        for key in ("channels", "reduction", "module_name"):
            assert getattr(feats.feature_info, key)() == getattr(ref.feature_info, key)(), key
        assert feats.feature_info.out_indices == ref.feature_info.out_indices == (0, 1, 2, 3, 4)


def test_model_forward_features_head_and_reset_classifier() -> None:
    """test_model_default_cfgs's forward checks: at the configured input size, then at 64 px."""
    model = splitattn.create_model("resnest14d").eval()
    with torch.no_grad():
        cfg = model.default_cfg
        assert model.forward_features(torch.randn(1, *cfg["input_size"])).shape[2:] == cfg["pool_size"]
        cfg = apply_data_config(model, resolve_data_config(model, img_size=64)).default_cfg
        x = torch.randn(1, *cfg["input_size"])
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape[1:] == (model.num_features, *cfg["pool_size"]) and cfg["pool_size"] == (2, 2)
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre.shape
        model.reset_classifier(0, "")
        assert model(x).shape[1:] == (model.num_features, *cfg["pool_size"])
        bare = splitattn.create_model("resnest14d", num_classes=0, global_pool="").eval()
        assert bare(x).shape[1:] == (bare.num_features, *cfg["pool_size"])
    model.reset_classifier(3, "avgmax")  # avg and max concatenated: the head sees twice the channels
    assert model.head_hidden_size == 2 * model.num_features == model.fc.in_features
    assert model.get_classifier(name_only=True) == "fc" and model.get_classifier() is model.fc


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_reset_classifier_keeps_dtype_and_mode(dtype: torch.dtype) -> None:
    model = splitattn.ResNeSt(layers=(1, 1, 1, 1), stem_width=8, base_width=16, num_classes=4).to(dtype)
    model.eval().reset_classifier(5)
    assert model.fc.weight.dtype == dtype and not model.fc.training
    out = model(X[..., :32, :32].to(dtype))
    assert out.dtype == dtype and out.shape == (2, 5)
    before = model.fc
    with pytest.raises(InputError, match="global_pool"):
        model.reset_classifier(7, "mean")
    with pytest.raises(InputError, match="num_classes"):
        model.reset_classifier(-1)
    assert model.fc is before and model.num_classes == 5  # a refused call changes nothing


def test_model_forward_intermediates() -> None:
    model = splitattn.create_model("resnest14d").eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))  # timm's own class
    with torch.no_grad():
        final, inter = model.forward_intermediates(X)
        assert torch.allclose(final, model.forward_features(X))
        assert [t.shape[1] for t in inter] == info.channels()
        assert [t.shape[-1] for t in inter] == [math.ceil(64 / r) for r in info.reduction()]
        some = model.forward_intermediates(X, indices=[-1, 1], intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(some, (inter[1], inter[4]), strict=True)] == [True, True]
        last2 = model.forward_intermediates(X, indices=2, stop_early=True)
        assert torch.equal(last2[0], final) and len(last2[1]) == 2
        early, stem = model.forward_intermediates(X, indices=[0], stop_early=True)
        assert torch.equal(stem[0], inter[0]) and early.shape[1] == 64  # stopped after the stem
    model.set_grad_checkpointing()
    with torch.no_grad():
        assert torch.allclose(model.forward_intermediates(X)[0], final, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match=r"indices must be within 0..4 .*index 5 is out of range"):
        model.forward_intermediates(X, indices=[5])
    with pytest.raises(InputError, match="output_fmt"):
        model.forward_intermediates(X, output_fmt="NHWC")


def test_prune_intermediate_layers_like_timm() -> None:
    model = splitattn.create_model("resnest14d").eval()
    ref = timm.create_model("resnest14d", pretrained=False)
    with torch.no_grad():
        full = model.forward_intermediates(X, intermediates_only=True)
        assert model.prune_intermediate_layers([1, -3]) == ref.prune_intermediate_layers([1, -3]) == [1, 2]
        assert (model.num_features, model.head_hidden_size, model.num_classes) == (
            ref.num_features, ref.head_hidden_size, ref.num_classes) == (512, 512, 0)
        assert len(model.layer3) == len(model.layer4) == 0
        final, kept = model.forward_intermediates(X, indices=[1, 2])
        assert torch.equal(kept[0], full[1]) and torch.equal(final, full[2])
        assert model(X).shape == (2, 512, 8, 8)  # head pruned: the layer2 map


def test_features_only_list_dict_getter_and_negative_indices() -> None:
    """test_model_forward_features and test_model_forward_intermediates_features, and timm's dict keys."""
    torch.manual_seed(0)
    net = splitattn.create_model("resnest14d", features_only=True).eval()
    ref = timm.create_model("resnest14d", pretrained=False, features_only=True, out_indices=(-1, -3),
                            feature_cls="dict").eval()
    with torch.no_grad():
        outs = net(X)
        assert [o.shape[1] for o in outs] == net.feature_info.channels() == [64, 256, 512, 1024, 2048]
        for o, r in zip(outs, net.feature_info.reduction(), strict=True):
            assert o.shape[-1] <= math.ceil(64 / r) + 1
        whole = splitattn.create_model("resnest14d").eval()
        whole.load_state_dict(net.state_dict(), strict=False)  # the same weights as net
        for kind, out_indices, levels in (("dict", (-1, -3), (2, 4)), ("list", 2, (3, 4)),
                                          ("getter", (-3, 1), (1, 2))):
            sub = features_only_model(whole, out_indices, kind)  # the getter (last) prunes whole
            assert sub.feature_info.out_indices == levels
            got = sub(X)
            if kind == "dict":
                assert list(got) == list(ref(X)) == ["-3", "-1"]  # timm's keys: the indices as given
                got = list(got.values())
            want = [outs[i] for i in sub.feature_info.out_indices]
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), kind
        assert isinstance(sub, FeatureGetterNet) and len(whole.layer3) == 0 and sub.model is whole
    with pytest.raises(ConfigError, match=r"out_indices must be within 0..4 .*index -6 is out of range"):
        splitattn.create_model("resnest14d", features_only=True, out_indices=(1, -6))
    with pytest.raises(ConfigError, match="feature_cls must be one of"):
        splitattn.create_model("resnest14d", features_only=True, feature_cls="hook")


def test_feature_info_interface() -> None:
    model = splitattn.create_model("resnest14d", output_stride=16)
    info = FeatureInfo(model.feature_info, (-2, 1))
    assert info.out_indices == (1, 3) and info.channels() == [256, 1024] and info.reduction() == [4, 16]
    assert info.module_name() == ["layer1", "layer3"] and info.channels(4) == 2048
    assert info.reduction([0, 4]) == [2, 16] and info.get_dicts(["num_chs"]) == [{"num_chs": 256},
                                                                                  {"num_chs": 1024}]
    assert len(info) == 5 and info[0]["module"] == "act1" and [f["index"] for f in info] == list(range(5))
    assert info.from_other(1).out_indices == (4,)
    with pytest.raises(ConfigError, match="feature_info"):
        FeatureInfo([{"num_chs": 8, "reduction": 4, "module": "a"}, {"num_chs": 8, "reduction": 2,
                                                                      "module": "b"}])


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_data_config_and_transform_match_timms(name: str) -> None:
    with torch.device("meta"):
        model = splitattn.create_model(name)
    ours = timm.data.resolve_data_config({}, model=model)
    theirs = timm.data.resolve_data_config({}, pretrained_cfg=_timm_cfg(name))
    assert ours == theirs == timm.data.resolve_model_data_config(model)
    assert str(timm.data.create_transform(**ours)) == str(timm.data.create_transform(**theirs))
    mine = resolve_data_config(model)  # splitattn's own resolver reads the same dict
    assert (mine.crop_size, mine.crop_pct, mine.interpolation) == (
        theirs["input_size"][-1], theirs["crop_pct"], theirs["interpolation"])


def test_layer_decay_groups_like_timms_resnest() -> None:
    def scales(model: torch.nn.Module) -> dict[str, float]:
        opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.7)
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: round(g["lr_scale"], 6) for g in opt.param_groups for p in g["params"]}

    ours = scales(splitattn.create_model("resnest26d"))
    theirs = scales(timm.create_model("resnest26d", pretrained=False))
    assert ours == theirs and len(set(ours.values())) == 10  # stem, 8 blocks, head
    assert splitattn.create_model("resnest14d").group_matcher(coarse=True)["blocks"] == r"^layer(\d+)"


def test_save_for_hf_and_direct_construction(tmp_path) -> None:
    model = splitattn.create_model("resnest14d", num_classes=3)
    timm.models.save_for_hf(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "resnest14d" and config["num_classes"] == 3
    assert config["global_pool"] == "avg" and config["pretrained_cfg"]["interpolation"] == "bilinear"
    timm.models.PretrainedCfg(**config["pretrained_cfg"])
    # A model built without the registry gets ResNeSt's defaults, in timm's form.
    direct = splitattn.ResNeSt(layers=(1, 1, 1, 1), in_chans=1, num_classes=5, output_stride=16,
                               deep_stem=False)
    cfg = timm.models.PretrainedCfg(**direct.pretrained_cfg)
    assert (cfg.input_size, cfg.pool_size, cfg.num_classes, cfg.first_conv) == ((1, 224, 224), (14, 14), 5,
                                                                                "conv1")
    assert direct.model_cfg is None and timm.data.resolve_data_config({}, model=direct)["crop_pct"] == 0.875
    direct.default_cfg = {**direct.default_cfg, "crop_pct": 1.0}
    assert direct.pretrained_cfg["crop_pct"] == 1.0
    apply_data_config(direct, resolve_data_config(direct, img_size=96, interpolation="bilinear"))
    assert direct.pretrained_cfg["input_size"] == (1, 96, 96) and direct.pretrained_cfg["pool_size"] == (6, 6)
    assert timm.data.resolve_data_config({}, model=direct)["interpolation"] == "bilinear"
