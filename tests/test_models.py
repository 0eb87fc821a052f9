"""The zoo: paper parameter/MAC counts, interface, scripting, compile, features, init, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import splitattn
from conftest import ALL_MODELS
from splitattn.errors import ConfigError, InputError
from splitattn.layers import DropBlock2d
from splitattn.models import FeatureDictNet, FeatureListNet, ResNeStBottleneck, set_drop_block_prob
from splitattn.utils.flops import count_macs, count_params

# PAPER.md's zoo table: exact parameter counts and GMACs at each model's crop size (fvcore, MAC = 1).
# resnest14d/26d are timm's (params measured on timm's models, GMACs from timm's model table).
PAPER = {
    "resnest14d": (10_611_688, 2.76, 224),
    "resnest26d": (17_069_448, 3.64, 224),
    "resnest50": (27_483_240, 5.40, 224),
    "resnest101": (48_275_016, 13.38, 256),
    "resnest200": (70_201_544, 35.70, 320),
    "resnest269": (110_929_480, 77.72, 416),
    "resnest50_fast_1s1x64d": (26_217_896, 4.36, 224),
    "resnest50_fast_2s1x64d": (27_483_240, 4.36, 224),
    "resnest50_fast_4s1x64d": (31_912_712, 4.37, 224),
    "resnest50_fast_1s2x40d": (25_946_680, 4.39, 224),
    "resnest50_fast_2s2x40d": (26_943_792, 4.40, 224),
    "resnest50_fast_4s2x40d": (30_417_592, 4.41, 224),
    "resnest50_fast_1s4x24d": (25_677_000, 4.43, 224),
}


def test_registry_covers_the_zoo_and_aliases() -> None:
    assert splitattn.list_models() == list(PAPER)
    assert splitattn.list_models("resnest50_fast_*") == [n for n in PAPER if "fast" in n]
    aliases = [("resnest50d", "resnest50"), ("resnest101e", "resnest101"), ("resnest200e", "resnest200"),
               ("resnest269e", "resnest269"), ("resnest50d_4s2x40d", "resnest50_fast_4s2x40d"),
               ("resnest50d_1s4x24d", "resnest50_fast_1s4x24d"), ("resnest50d.in1k", "resnest50")]
    for alias, name in aliases:
        assert splitattn.get_model_cfg(alias).name == name
    with pytest.raises(ValueError, match="did you mean resnest50"):
        splitattn.create_model("resnest5O")


@pytest.mark.parametrize("name", list(PAPER))
def test_params_and_macs_match_paper(name: str) -> None:
    params, gmacs, crop = PAPER[name]
    cfg = splitattn.get_model_cfg(name)
    model = splitattn.create_model(name)
    assert count_params(model) == params == cfg.params
    assert cfg.crop_size == crop and cfg.gmacs == gmacs
    measured = count_macs(model, (3, crop, crop)) / 1e9
    assert abs(measured / gmacs - 1) <= 0.015, f"{name}: {measured:.3f} GMACs vs paper {gmacs}"
    # PAPER.md's eval crop ratio: crop / (crop + 32)
    if cfg.source.startswith("official"):
        assert cfg.crop_pct == pytest.approx(crop / (crop + 32), abs=1e-3)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_script(name: str) -> None:
    model = splitattn.create_model(name, num_classes=7, drop_block_rate=0.1, drop_rate=0.2).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    if name in ("resnest14d", "resnest50_fast_1s2x40d", "resnest50_fast_4s2x40d", "resnest50"):
        # The official code does not script (it sums a Python list of splits); ours must.
        model.eval()
        scripted = torch.jit.script(model)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert (scripted(x) - model(x)).abs().max().item() <= 1e-5


def test_torch_compile_fullgraph_resnest14d() -> None:
    """Dynamo captures the model as one graph (fullgraph=True raises on any graph break).

    Eval and training forward + backward through aot_eager (AOTAutograd without code generation: inductor
    adds about a minute per graph on 2 cores). Inductor's kernels for the same Split-Attention ops are
    checked by test_inference.py::test_autocast_and_compile and the INT8 kernels of test_quantize.py.
    """
    model = splitattn.create_model("resnest14d", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert (compiled(x) - model(x)).abs().max().item() <= 1e-4
    model.train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_timm_interface() -> None:
    model = splitattn.create_model("resnest14d").eval()
    x = torch.randn(2, 3, 96, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 3, 2) and model.num_features == 2048
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, 2048)
    assert torch.allclose(model.forward_head(feats), model.get_classifier()(pooled))
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [64, 256, 512, 1024, 2048]
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 2048)
    model.reset_classifier(3, global_pool="avgmax")
    assert model(x).shape == (2, 3) and model.fc.in_features == 4096
    assert splitattn.create_model("resnest14d", num_classes=0, global_pool="")(x).shape == (2, 2048, 3, 2)


@pytest.mark.parametrize("output_stride,expected", [(32, [16, 8, 4, 2]), (16, [16, 8, 4, 4]),
                                                    (8, [16, 8, 8, 8])])
def test_features_only(output_stride: int, expected: list[int]) -> None:
    net = splitattn.create_model("resnest14d", features_only=True, output_stride=output_stride,
                                 out_indices=(0, 1, 2, 3, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    outs = net(x)
    assert [o.shape[1] for o in outs] == net.channels() == [64, 256, 512, 1024, 2048]
    assert net.reductions() == [2, 4, *[min(r, output_stride) for r in (8, 16, 32)]]
    assert [o.shape[-1] for o in outs] == [32, *[64 // r for r in net.reductions()[1:]]]
    assert [o.shape[-1] for o in outs[1:]] == expected  # 64 px input
    sub = splitattn.create_model("resnest14d", features_only=True, out_indices=(2, 4)).eval()
    assert [o.shape[1] for o in sub(x)] == [512, 2048]
    assert all(torch.equal(a, b) for a, b in zip(torch.jit.script(net)(x), outs))
    with pytest.raises(ConfigError, match=r"out_indices must be within 0..4 .* got \(5,\)"):
        splitattn.create_model("resnest14d", features_only=True, out_indices=(5,))


@pytest.mark.parametrize("output_stride", [32, 8])
def test_feature_dict_net_names_shapes_and_list_view(output_stride: int) -> None:
    torch.manual_seed(0)
    model = splitattn.create_model("resnest14d", num_classes=0, output_stride=output_stride).eval()
    net = FeatureDictNet(model, out_indices=(0, 1, 2, 3, 4))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = net(x)
        assert list(outs) == net.feature_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
        reductions = [2, 4, 8, *[min(r, output_stride) for r in (16, 32)]]
        assert net.reductions() == reductions and net.channels() == [64, 256, 512, 1024, 2048]
        assert [tuple(o.shape) for o in outs.values()] == [
            (2, c, 64 // r, 96 // r) for c, r in zip(net.channels(), reductions)
        ]
        assert [f["module"] for f in net.feature_info] == ["act1", "layer1", "layer2", "layer3", "layer4"]
        # The list view is the dict's values, from the same modules; both script.
        lst = FeatureListNet(model, out_indices=(0, 1, 2, 3, 4))
        assert all(torch.equal(a, b) for a, b in zip(lst(x), outs.values(), strict=True))
        scripted = torch.jit.script(net)(x)
        assert list(scripted) == list(outs) and all(torch.equal(scripted[k], outs[k]) for k in outs)
        # detectron2 names for all 5 stages, or one per requested index; stages past the last are dropped.
        d2 = FeatureDictNet(model, (4, 2), feature_names=("stem", "res2", "res3", "res4", "res5"))
        mine = FeatureDictNet(model, (4, 2), feature_names=("c5", "c3"))  # outputs come in stage order
        assert list(d2(x)) == ["res3", "res5"] and list(mine(x)) == ["c3", "c5"]
        assert torch.equal(d2(x)["res5"], outs["layer4"]) and torch.equal(mine(x)["c3"], outs["layer2"])
        short = FeatureDictNet(model, (1,))
        assert not any(k.startswith(("layer2", "layer3", "layer4")) for k in short.state_dict())
    # A classification state dict (minus fc) loads strictly.
    clf = splitattn.create_model("resnest14d", output_stride=output_stride).state_dict()
    net.load_state_dict({k: v for k, v in clf.items() if not k.startswith("fc.")})
    with pytest.raises(ConfigError, match="feature_names must name the 5 stages"):
        FeatureDictNet(model, (1, 2), feature_names=("a", "b", "c"))
    with pytest.raises(ConfigError, match="feature_names must be distinct"):
        FeatureDictNet(model, (1, 2), feature_names=("a", "a"))
    with pytest.raises(InputError, match="model must be a ResNeSt"):
        FeatureDictNet(nn.Conv2d(3, 3, 1))


def test_zero_init_last_really_zero() -> None:
    model = splitattn.create_model("resnest26d").eval()
    blocks = [m for m in model.modules() if isinstance(m, ResNeStBottleneck)]
    assert len(blocks) == 8
    assert all(b.bn3.weight.abs().sum() == 0 for b in blocks)
    # So each block starts as relu(shortcut): check on one block of each kind (with / without downsample).
    for block in (model.layer1[0], model.layer1[1]):
        x = torch.randn(2, block.conv1.in_channels, 16, 16)
        with torch.no_grad():
            assert torch.allclose(block(x), torch.relu(block.downsample(x)), atol=1e-6)
    kept = splitattn.create_model("resnest14d", zero_init_last=False)
    assert kept.layer1[0].bn3.weight.abs().sum() > 0


@pytest.mark.parametrize("norm", ["batchnorm", "frozenbn", "groupnorm", nn.SyncBatchNorm])
def test_norm_layer_choice(norm) -> None:
    model = splitattn.create_model("resnest50_fast_2s2x40d", norm_layer=norm).eval()
    kinds = {type(m).__name__ for m in model.modules()}
    want = {"batchnorm": "BatchNorm2d", "frozenbn": "FrozenBatchNorm2d", "groupnorm": "GroupNorm"}.get(
        norm, "SyncBatchNorm") if isinstance(norm, str) else "SyncBatchNorm"
    assert want in kinds and (want == "BatchNorm2d" or "BatchNorm2d" not in kinds)
    if want != "SyncBatchNorm":  # SyncBatchNorm needs a process group to run
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_in_chans_and_radix0_baseline() -> None:
    m = splitattn.create_model("resnest14d", in_chans=1, num_classes=3).eval()
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    base = splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=0, cardinality=2, base_width=32).eval()
    assert not any(type(x).__name__ == "SplitAttn" for x in base.modules())
    assert "layer1.0.bn2.weight" in base.state_dict()
    assert base(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_bad_input_errors_name_problem_and_fix() -> None:
    model = splitattn.create_model("resnest14d").eval()
    with pytest.raises(ValueError, match=r"4D input .*shape \(3, 64, 64\).*unsqueeze"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"expected 3 input channels, got 1.*in_chans=1"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"16x40 is too small.*at least 32x32"):
        model(torch.randn(2, 3, 16, 40))
    model.train()
    with pytest.raises(ValueError, match=r"batch of 1.*more than 1 value per channel.*model.eval\(\)"):
        model(torch.randn(1, 3, 64, 64))
    # The documented fixes work: eval mode, or a norm layer without batch statistics.
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    gn = splitattn.create_model("resnest14d", norm_layer="groupnorm").train()
    assert gn(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    # The attention vector's norm is a one-group GroupNorm, so the gate depends on the input.
    assert gn.layer1[0].conv2.bn1.num_groups == 1 and gn.layer1[0].bn1.num_groups > 1
    a = gn.layer1[0].conv2.attention(torch.rand(2, 128, 8, 8))
    assert a.std(0).max() > 1e-3
    fe = splitattn.create_model("resnest14d", features_only=True)
    with pytest.raises(ValueError, match="input channels"):
        fe(torch.randn(2, 4, 64, 64))


def test_drop_block_is_real_and_rampable() -> None:
    model = splitattn.create_model("resnest14d", drop_block_rate=0.1)
    blocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    # layer3 and layer4 only: after bn1, bn0 (inside split attention) and bn3 of each block.
    names = [n for n, m in model.named_modules() if isinstance(m, DropBlock2d)]
    assert len(blocks) == 6 and all(n.startswith(("layer3", "layer4")) for n in names)
    assert set_drop_block_prob(model, 0.05) == 6 and all(b.drop_prob == 0.05 for b in blocks)

    torch.manual_seed(0)
    db = DropBlock2d(0.2, 3).train()
    x = torch.ones(64, 8, 14, 14)
    y = db(x)
    dropped = (y == 0).float()
    assert abs(dropped.mean().item() - 0.2) < 0.03  # expected drop fraction ~ p
    assert torch.allclose(y.mean(), torch.tensor(1.0), atol=0.02)  # kept units rescaled
    # Dropped units come in 3x3 blocks: every zero has a 3x3 all-zero window containing it.
    win = torch.nn.functional.avg_pool2d(dropped, 3, 1, 0)
    full = torch.nn.functional.max_pool2d(torch.nn.functional.pad((win > 0.999).float(), (2, 2, 2, 2)), 3, 1)
    assert torch.equal(full * dropped, dropped)
    assert torch.equal(db.eval()(x), x)
