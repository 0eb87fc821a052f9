"""splitattn.attention_maps: the radix attention of every Split-Attention conv, captured by hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import splitattn
from conftest import randomize_stats
from splitattn.deploy.fold import optimize_for_inference
from splitattn.errors import InputError
from splitattn.explain.attention import attention_entropy, attention_summary, capture_attention
from splitattn.layers.split_attn import SplitAttn
from splitattn.models import ResNeSt, create_detection_model, create_segmentation_model

BLOCKS = ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]


def _small(radix: int, cardinality: int = 1) -> torch.nn.Module:
    """A 4-block ResNeSt with non-trivial BN statistics (so the attention is not near uniform)."""
    model = ResNeSt(layers=(1, 1, 1, 1), radix=radix, cardinality=cardinality, base_width=16, stem_width=8,
                    num_classes=5)
    return randomize_stats(model).eval()


def _fc2_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m.fc2._forward_hooks)
               for m in model.modules() if isinstance(m, SplitAttn))


@pytest.mark.parametrize("radix", [1, 2, 4])
def test_shapes_normalisation_and_unchanged_output(radix: int) -> None:
    model = _small(radix)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    maps = splitattn.attention_maps(model, x)
    assert list(maps) == BLOCKS
    for name, w in maps.items():
        conv = model.get_submodule(name)
        assert w.shape == (2, radix, conv.out_channels) and w.dtype == torch.float32
        assert w.device.type == "cpu" and not w.requires_grad
        if radix > 1:
            torch.testing.assert_close(w.sum(1), torch.ones(2, conv.out_channels))
        else:
            assert w.min() > 0 and w.max() < 1
        assert w.std() > 1e-3  # varies over channels: not a constant
    with torch.no_grad():
        after = model(x)
        with capture_attention(model) as captured:
            during = model(x)
    assert torch.equal(before, after) and torch.equal(before, during)
    assert all(torch.equal(captured[n], maps[n]) for n in BLOCKS)
    assert _fc2_hooks(model) == 0


@pytest.mark.parametrize(("radix", "cardinality"), [(1, 1), (2, 1), (4, 2)])
def test_maps_equal_a_hand_computation_from_the_blocks_modules(radix: int, cardinality: int) -> None:
    model = _small(radix, cardinality)
    x = torch.randn(3, 3, 48, 48)
    name = "layer2.0.conv2"
    block: SplitAttn = model.get_submodule(name)
    inputs = []
    handle = block.register_forward_hook(lambda _m, args, _out: inputs.append(args[0].clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    maps = splitattn.attention_maps(model, x)

    with torch.no_grad():
        u = F.relu(block.bn0(block.conv(inputs[0])))  # (B, R*C, H, W), radix-major
        b, c = u.shape[0], block.out_channels
        s = u.view(b, radix, c, *u.shape[2:]).sum(1).mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        logits = block.fc2(F.relu(block.bn1(block.fc1(s)))).view(b, cardinality, radix, c // cardinality)
        # fc2 is grouped by cardinality: its channels are (K, R, C/K); the weights are returned (R, K*C/K).
        expected = (logits.softmax(2) if radix > 1 else logits.sigmoid()).transpose(1, 2).reshape(b, radix, c)
    torch.testing.assert_close(maps[name], expected, rtol=1e-5, atol=1e-6)


def test_zoo_model_features_only_and_folded_model() -> None:
    torch.manual_seed(0)
    zoo = splitattn.create_model("resnest50_fast_4s2x40d", num_classes=10).eval()
    maps = splitattn.attention_maps(zoo, torch.randn(1, 3, 64, 64))
    assert len(maps) == 16 and list(maps)[-1] == "layer4.2.conv2"
    assert all(w.shape[:2] == (1, 4) for w in maps.values())
    torch.testing.assert_close(maps["layer3.5.conv2"].sum(1), torch.ones(1, 320))

    model = randomize_stats(splitattn.create_model("resnest14d", num_classes=0)).eval()
    x = torch.randn(2, 3, 32, 32)
    full = splitattn.attention_maps(model, x)
    feats = splitattn.create_model("resnest14d", features_only=True, out_indices=(1, 2))
    kept = ("conv1", "bn1", "layer1", "layer2")
    feats.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(kept)})
    part = splitattn.attention_maps(feats.eval(), x)
    assert list(part) == BLOCKS[:2]
    assert all(torch.equal(part[n], full[n]) for n in part)
    folded = splitattn.attention_maps(optimize_for_inference(model), x)
    for n in BLOCKS:
        torch.testing.assert_close(folded[n], full[n], rtol=1e-4, atol=1e-5)


def test_detection_and_segmentation_backbones() -> None:
    torch.manual_seed(0)
    det = create_detection_model("faster_rcnn_fpn", backbone="resnest14d", num_classes=3, min_size=64,
                                 max_size=64, backbone_norm="batchnorm").eval()
    maps = splitattn.attention_maps(det, [torch.rand(3, 64, 80)])
    assert list(maps) == [f"backbone.body.{n}" for n in BLOCKS]
    assert maps["backbone.body.layer1.0.conv2"].shape == (1, 2, 64)
    seg = create_segmentation_model(backbone="resnest14d", num_classes=3).eval()
    maps = splitattn.attention_maps(seg, torch.randn(2, 3, 32, 32))
    assert list(maps) == [f"backbone.body.{n}" for n in BLOCKS]
    assert all(w.shape[0] == 2 for w in maps.values())


def test_radix_zero_and_errors_leave_no_hooks() -> None:
    plain = splitattn.create_model("resnest14d", radix=0)
    with pytest.raises(InputError, match=r"ResNeSt has no Split-Attention conv .*no attention to show"):
        splitattn.attention_maps(plain, torch.randn(1, 3, 64, 64))
    with pytest.raises(InputError, match="expects an nn.Module"):
        splitattn.attention_maps(torch.randn(3), torch.randn(1))

    model = _small(2)

    def fail(*_: object) -> None:
        raise RuntimeError("stop in layer3")

    handle = model.layer3.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="stop in layer3"):
        splitattn.attention_maps(model, torch.randn(2, 3, 32, 32))
    handle.remove()
    assert _fc2_hooks(model) == 0


def test_entropy_and_summary() -> None:
    uniform = torch.full((1, 4, 3), 0.25)
    one_hot = torch.zeros(1, 4, 3)
    one_hot[:, 2] = 1
    assert torch.allclose(attention_entropy(uniform), torch.full((1, 3), 2.0))
    assert torch.allclose(attention_entropy(one_hot), torch.zeros(1, 3))
    gate = torch.tensor([[[0.5, 0.5]]])
    assert torch.allclose(attention_entropy(gate), torch.ones(1, 2))

    w = torch.tensor([[[0.2, 0.6], [0.8, 0.4]]])  # (B=1, R=2, C=2)
    s = attention_summary({"layer1.0.conv2": w})["layer1.0.conv2"]
    assert s["radix"] == 2 and s["channels"] == 2 and s["max_entropy_bits"] == 1.0
    assert s["mean"] == pytest.approx([0.4, 0.6]) and s["std"] == pytest.approx([0.2, 0.2])
    h = [-(p * math.log2(p) + (1 - p) * math.log2(1 - p)) for p in (0.2, 0.6)]
    assert s["entropy_bits"] == pytest.approx(sum(h) / 2)
