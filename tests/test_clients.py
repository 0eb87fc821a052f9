"""What client libraries do with a model, tried as timm's models are: TorchScript of FX GraphModules
(symbolic_trace, torchvision's feature extraction, FX quantization), TorchScript of the dense models, a stem
conv swapped for another channel count, and the README's export-weights example."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import splitattn
from conftest import randomize_stats
from splitattn.errors import InputError
from splitattn.layers.drop import drop_block_2d
from splitattn.models import FeatureListNet, create_detection_model, create_segmentation_model

ROOT = Path(__file__).resolve().parents[1]
DETECTION = dict(min_size=64, max_size=96, fpn_channels=32, representation_size=64, box_score_thresh=0.0,
                 rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30, box_detections_per_img=20,
                 rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=30, box_batch_size_per_image=32)


def _model(**kwargs: object) -> splitattn.ResNeSt:
    """resnest14d's layout at a fraction of its width, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = splitattn.ResNeSt(layers=(1, 1, 1, 1), stem_width=8, base_width=16, num_classes=10,
                              zero_init_last=False, **kwargs)
    return randomize_stats(model).eval()


def _input(batch: int = 2, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, 64, 64, generator=torch.Generator().manual_seed(batch))


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit and FX quantization are deprecated
        return torch.jit.script(module)


def _graph_module(route: str, model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    if route == "create_feature_extractor":
        return create_feature_extractor(model, {"layer2": "c3", "layer4": "c5"})
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
        prepared(x)
        return convert_fx(prepared)


def _flat(out: object) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, list) else [out]


@pytest.mark.parametrize("route", ["create_feature_extractor", "convert_fx"])
def test_fx_graph_modules_script_and_match_eager(route: str) -> None:
    """In a fresh interpreter: TorchScript's compilation caches are process-wide, and in one of six full
    runs of the suite the tests before this one had left them unable to compile torch's own
    ``Conv2d._conv_forward`` ("builtin cannot be used as a value"); alone, or after any test file run
    alone before it, it passes."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_clients; "
            f"test_clients.check_fx_graph_module_scripts({route!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]


def check_fx_graph_module_scripts(route: str) -> None:
    """The FX GraphModule of ``route`` scripts, and the script computes what the module and the model do."""
    model = _model()
    x = _input()
    gm = _graph_module(route, model, x)
    # The annotations of the generated forward are types, not strings that TorchScript cannot name.
    assert "_torch_Tensor_" not in gm.code and "x : torch.Tensor" in gm.code
    scripted = _script(gm)
    with torch.no_grad():
        got, want = _flat(scripted(x)), _flat(gm(x))
        assert len(got) == len(want) >= 1
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        if route == "create_feature_extractor":
            torch.testing.assert_close(got[1], model.forward_features(x), rtol=0, atol=0)
        else:  # INT8 against float32
            want = model(x)
            assert (got[0] - want).abs().max() < 0.2 * want.abs().max()


def test_symbolic_trace_scripts_with_its_leaves_in_training() -> None:
    """symbolic_trace of a training model: its FX leaves (the weighted sum, DropBlock) compile, and the
    scripted graph drops the same blocks as the eager model with the same seed."""
    model = _model(drop_block_rate=0.2).train()
    splitattn.set_drop_block_prob(model, 0.2)
    gm = torch.fx.symbolic_trace(model)
    assert "_torch_Tensor_" not in gm.code and "x : torch.Tensor" in gm.code
    assert sum(n.target is drop_block_2d for n in gm.graph.nodes) >= 2
    scripted = _script(gm)
    x = _input()
    outs = []
    for fn in (scripted, gm, model):
        torch.manual_seed(3)
        outs.append(fn(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=0)
    outs[0].square().sum().backward()
    assert model.layer4[0].conv2.fc2.weight.grad is not None


def _dense(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "deeplabv3":
        model = create_segmentation_model(backbone="resnest14d", num_classes=3,
                                          backbone_kwargs=dict(stem_width=8, base_width=16))
    else:
        model = create_detection_model(name, backbone="resnest14d", num_classes=3, backbone_norm="batchnorm",
                                       backbone_kwargs=dict(stem_width=8, base_width=16), **DETECTION)
    return model.eval()


@pytest.mark.parametrize("name", ["cascade_rcnn_fpn", "cascade_mask_rcnn_fpn", "deeplabv3"])
def test_dense_models_script_with_eager_outputs(name: str) -> None:
    model = _dense(name)
    scripted = _script(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if name == "deeplabv3":
            x = torch.randn(2, 3, 64, 64, generator=g)
            got, want = scripted(x), model(x)
            assert list(got) == list(want) == ["out", "aux"] and want["out"].shape == (2, 3, 64, 64)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
            return
        images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 70, 64, generator=g)]
        _, got = scripted(images)  # a scripted GeneralizedRCNN returns (losses, detections)
        want = model(images)
    keys = ["boxes", "labels", "scores"] + (["masks"] if "mask" in name else [])
    assert len(got) == len(want) == 2
    for a, b in zip(got, want, strict=True):
        assert sorted(a) == sorted(b) == sorted(keys) and len(b["boxes"]) > 0
        for k in keys:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    if name == "cascade_mask_rcnn_fpn":
        _assert_trains_like_eager(model, scripted)


def _assert_trains_like_eager(model: nn.Module, scripted: torch.jit.ScriptModule) -> None:
    """The scripted cascade's losses and RoI-head gradients (the stages' gradients into the shared RoI
    features are scaled) are the eager model's."""
    images = [torch.rand(3, 64, 80), torch.rand(3, 70, 64)]
    masks = [torch.zeros(1, 64, 80, dtype=torch.uint8), torch.zeros(1, 70, 64, dtype=torch.uint8)]
    masks[0][0, 10:40, 10:50] = 1
    masks[1][0, 5:30, 20:60] = 1
    boxes = [torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.tensor([[20.0, 5.0, 60.0, 30.0]])]
    targets = [{"boxes": b, "labels": torch.tensor([i + 1]), "masks": m}
               for i, (b, m) in enumerate(zip(boxes, masks, strict=True))]

    def step(fn: nn.Module) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        fn.train()
        model.zero_grad()
        torch.manual_seed(1)  # the same proposal sampling
        out = fn(images, copy.deepcopy(targets))
        losses = out[0] if isinstance(out, tuple) else out
        sum(losses.values()).backward()
        return losses, [p.grad.clone() for p in model.roi_heads.parameters()]

    want, want_grads = step(model)
    got, got_grads = step(scripted)
    assert {"loss_classifier_stage3", "loss_box_reg_stage3", "loss_mask"} <= set(want)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("how", ["adapt_input_conv", "weight_only", "plain_stem"])
def test_swapped_stem_conv_sets_the_input_channels(how: str) -> None:
    model = _model(deep_stem=how != "plain_stem")
    assert model.in_chans == 3
    if how == "plain_stem":
        model.conv1 = nn.Conv2d(1, model.conv1.out_channels, 7, 2, 3, bias=False)
        features = FeatureListNet(model, out_indices=(1,))
    else:
        old = model.conv1[0]
        weight = timm.models.adapt_input_conv(1, old.weight.detach())
        if how == "adapt_input_conv":
            model.conv1[0] = nn.Conv2d(1, old.out_channels, 3, 2, 1, bias=False)
        model.conv1[0].weight = nn.Parameter(weight)  # "weight_only" leaves in_channels at 3
        features = FeatureListNet(model, out_indices=(1,))
    assert model.in_chans == features.in_chans == 1
    x = _input(chans=1)
    assert model(x).shape == (2, 10) and features(x)[0].shape == (2, 256, 16, 16)
    for net in (model, features):
        with pytest.raises(InputError, match=r"expected 1 input channels, got 3 \(shape \(2, 3, 64, 64\)\)"):
            net(_input())
    with pytest.raises(InputError, match=r"in_chans follows the stem conv, which takes 1 channels, not 3"):
        model.in_chans = 3


def test_readme_exports_ema_weights_only_from_a_run_trained_with_ema() -> None:
    """Every `export-weights ... --ema` in the README reads a run that a README `train ... --ema` writes:
    the recipes keep no EMA (`ema: false`), and export-weights --ema refuses a checkpoint without one."""
    assert re.search(r"^ema: false$", (ROOT / "configs" / "resnest50.yaml").read_text(), re.M)
    blocks = re.findall(r"^```(?:bash|sh)\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = [shlex.split(part, comments=True) for line in lines for part in line.split("&&")]
    ema_runs = {c[c.index("--output") + 1] for c in commands if "train" in c and "--ema" in c}
    exports = [c for c in commands if "export-weights" in c]
    assert exports, "the README shows export-weights"
    for c in exports:
        if "--ema" in c:
            checkpoint = c[c.index("export-weights") + 1]
            assert str(Path(checkpoint).parent) in ema_runs, f"{checkpoint}: not a run trained with --ema"
