"""Invalid model arguments and inputs: an InputError (a ValueError) naming the argument or the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import splitattn
from splitattn.errors import InputError
from splitattn.layers.split_attn import SplitAttn
from splitattn.models import FeatureDictNet, ResNeSt, ResNeStBottleneck

TINY = dict(stem_width=8, base_width=8)  # resnest14d narrowed: builds and runs in milliseconds


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return splitattn.create_model("resnest14d", num_classes=3, **TINY).eval()


@pytest.mark.parametrize("kwargs,message", [
    ({"in_chans": 0}, "in_chans must be an integer >= 1, got 0"),
    ({"num_classes": -1}, "num_classes must be an integer >= 0, got -1"),
    ({"num_classes": 2.5}, "num_classes must be an integer >= 0, got 2.5"),
    ({"base_width": 0}, "base_width must be an integer >= 1, got 0"),
    ({"stem_width": -8}, "stem_width must be an integer >= 1, got -8"),
    ({"cardinality": 0}, "cardinality must be an integer >= 1, got 0"),
    ({"radix": -1}, "radix must be an integer >= 0, got -1"),
    ({"radix": True}, "radix must be an integer >= 0, got True"),
    ({"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\), got 1.0"),
    ({"drop_rate": -0.1}, r"drop_rate must be a number in \[0, 1\), got -0.1"),
    ({"drop_block_rate": 1.5}, r"drop_block_rate must be a number in \[0, 1\), got 1.5"),
    ({"layers": (1, 1, 1)}, r"layers must be 4 positive integers .* got \(1, 1, 1\)"),
    ({"layers": 4}, "layers must be 4 positive integers .* got 4"),
    ({"layers": (1, 0, 1, 1)}, r"layers\[1\] must be an integer >= 1, got 0"),
    ({"output_stride": 4}, "output_stride must be 8, 16 or 32, got 4"),
    ({"global_pool": "mean"}, r"global_pool must be one of \('avg', 'max', 'avgmax', ''\), got 'mean'"),
    ({"radix": 3}, r"SplitAttn in_channels = 8 is not divisible by 3 \(cardinality 1 x radix 3\)"),
])
def test_create_model_names_the_invalid_argument(kwargs, message):
    with pytest.raises(InputError, match=message):
        splitattn.create_model("resnest14d", **{**TINY, **kwargs})


def test_unknown_create_model_argument_lists_the_valid_ones():
    with pytest.raises(InputError) as e:
        splitattn.create_model("resnest14d", bogus=1, drop_rat=0.1)
    text = str(e.value)
    assert text.startswith("unknown argument(s) ['bogus', 'drop_rat'] for model 'resnest14d'")
    assert "did you mean 'drop_rate' for 'drop_rat'?" in text
    assert "valid: layers, radix, cardinality, base_width, stem_width, deep_stem" in text
    assert "global_pool" in text and "num_classes, in_chans, output_stride, pretrained" in text
    assert isinstance(e.value, ValueError)


def test_constructors_validate_their_arguments():
    with pytest.raises(InputError, match="cardinality must be an integer >= 1, got 0"):
        ResNeSt(layers=(1, 1, 1, 1), cardinality=0)
    with pytest.raises(InputError, match="planes must be an integer >= 1, got 0"):
        ResNeStBottleneck(64, 0)
    with pytest.raises(InputError, match=r"drop_block_rate must be a number in \[0, 1\), got 2"):
        ResNeStBottleneck(64, 64, drop_block_rate=2)
    with pytest.raises(InputError, match=r"bottleneck width .* is 0 for planes=1, base_width=32"):
        ResNeStBottleneck(64, 1, base_width=32)
    with pytest.raises(InputError, match=r"SplitAttn radix must be an integer >= 1, got 0 \(radix 0 is a"):
        SplitAttn(32, 32, radix=0)
    with pytest.raises(InputError, match="SplitAttn out_channels = 30 is not divisible by 4"):
        SplitAttn(32, 30, groups=4)
    with pytest.raises(InputError, match=r"attention width .* = 32 is not divisible by 3"):
        SplitAttn(24, 24, groups=3, radix=1)
    with pytest.raises(InputError, match="SplitAttn stride must be an integer >= 1, got 0"):
        SplitAttn(32, 32, stride=0)
    model = splitattn.create_model("resnest14d", **TINY)
    with pytest.raises(InputError, match="num_classes must be an integer >= 0, got -2"):
        model.reset_classifier(-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_input_of_another_dtype_is_refused_outside_autocast(model, dtype):
    x = torch.randn(2, 3, 32, 32)
    message = (rf"input dtype {dtype} does not match the model's torch.float32 weights: convert the input "
               rf"with x.to\(torch.float32\), or the model with model.to\({dtype}\)")
    with pytest.raises(InputError, match=message):
        model(x.to(dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if dtype == torch.float64:  # the one floating dtype autocast does not cast
            with pytest.raises(InputError, match=message + "$"):
                model(x.to(dtype))
        else:
            out = model(x.to(dtype))
            assert out.shape == (2, 3) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_input_is_refused_even_under_autocast(model, dtype):
    x = torch.zeros(2, 3, 32, 32, dtype=dtype)
    message = rf"expected a floating-point input, got {dtype}: convert images to float in \[0, 1\] and"
    with pytest.raises(InputError, match=message):
        model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(InputError, match=message):
        model(x)


def test_empty_batch_is_refused_by_models_and_feature_extractors(model):
    empty = torch.zeros(0, 3, 64, 64)
    features = FeatureDictNet(model).eval()
    listed = splitattn.create_model("resnest14d", features_only=True, **TINY).eval()
    for net in (model, features, listed):
        with pytest.raises(InputError, match=r"the input batch is empty \(shape \(0, 3, 64, 64\)\)"):
            net(empty)
        with pytest.raises(InputError, match="does not match the model's torch.float32 weights"):
            net(torch.randn(1, 3, 64, 64, dtype=torch.float16))


def test_a_model_in_another_dtype_takes_inputs_of_that_dtype():
    model = splitattn.create_model("resnest14d", num_classes=3, **TINY).eval().to(torch.bfloat16)
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(InputError, match="dtype torch.float32 does not match the model's torch.bfloat16"):
        model(torch.randn(1, 3, 32, 32))


def test_scripted_and_compiled_models_still_run(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager")(x), expected)
        # Without fullgraph a bad input still raises the InputError itself under compile.
        with pytest.raises(InputError, match="does not match the model's torch.float32 weights"):
            torch.compile(model, backend="eager")(x.half())
