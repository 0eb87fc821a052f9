"""optimize_for_inference gives ordinary modules: deepcopy, torch.save/load, state dict loading, eval-only."""

from __future__ import annotations

import copy
import importlib
import io
import re

import pytest
import torch
from torch import nn

import splitattn
from conftest import randomize_stats
from splitattn.deploy.fold import EVAL_ONLY_MESSAGE, EvalOnlyError, FoldedBatchNorm, optimize_for_inference
from splitattn.layers import FusedConv2d
from splitattn.layers.fused_conv import onednn_fast_path_available

_FAST = onednn_fast_path_available()

# resnest14d; the radix-0 ResNet-D baseline; a radix-1 "fast" variant (avd before conv2), one block per stage;
# a features_only backbone (its forward returns the list of stage outputs).
CASES = {
    "resnest14d": dict(name="resnest14d", num_classes=10),
    "radix0": dict(name="resnest14d", num_classes=10, radix=0),
    "fast_1s1x64d": dict(name="resnest50_fast_1s1x64d", num_classes=10, layers=(1, 1, 1, 1)),
    "features_only": dict(name="resnest14d", features_only=True),
}


def _build(case: str, seed: int = 0, **opt_kwargs: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = randomize_stats(splitattn.create_model(**CASES[case]), seed=seed + 1).eval()
    return model, optimize_for_inference(model, **opt_kwargs)


def _input() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 3, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    return out if isinstance(out, list) else [out]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s, t)


def _packed_caches(model: nn.Module) -> list[dict]:
    # The attention MLP's fc1 / fc2 run on the pooled vector as a GEMM and pack nothing.
    return [m._packed for name, m in model.named_modules()
            if isinstance(m, FusedConv2d) and not name.endswith((".fc1", ".fc2"))]


@pytest.mark.parametrize("case", CASES)
def test_result_is_built_from_module_level_classes(case: str) -> None:
    model, opt = _build(case)
    assert type(opt) is type(model)
    for name, m in opt.named_modules():
        cls = type(m)
        found = getattr(importlib.import_module(cls.__module__), cls.__qualname__, None)
        assert found is cls, f"{name}: {cls.__module__}.{cls.__qualname__} is not an importable class"
    assert any(isinstance(m, FoldedBatchNorm) for m in opt.modules())


@pytest.mark.parametrize("case", CASES)
def test_torch_save_load_gives_identical_outputs(case: str) -> None:
    _, opt = _build(case)
    x = _input()
    want = _run(opt, x)  # fills the prepacked-weight caches first: saving must drop, not pickle them
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is type(opt)
    assert list(loaded.state_dict()) == list(opt.state_dict())
    assert all(c == {} for c in _packed_caches(loaded))
    if _FAST:
        assert all(_packed_caches(opt)), "saving must not clear the original's caches"
    _assert_same(_run(loaded, x), want)
    with pytest.raises(EvalOnlyError, match=re.escape(EVAL_ONLY_MESSAGE)):
        loaded.train()


@pytest.mark.parametrize("case", CASES)
def test_deepcopy_gives_identical_independent_outputs(case: str) -> None:
    _, opt = _build(case)
    x = _input()
    want = _run(opt, x)
    clone = copy.deepcopy(opt)
    assert all(c == {} for c in _packed_caches(clone))
    pairs = zip(clone.parameters(), opt.parameters(), strict=True)
    assert all(a.data_ptr() != b.data_ptr() for a, b in pairs)
    _assert_same(_run(clone, x), want)
    with torch.no_grad():
        next(clone.parameters()).mul_(2)  # the stem's first conv
    assert not torch.equal(_run(clone, x)[0], want[0])
    _assert_same(_run(opt, x), want)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_loads_into_a_fresh_optimized_model(case: str) -> None:
    _, opt = _build(case)
    _, fresh = _build(case, seed=5)
    x = _input()
    want = _run(opt, x)
    stale = _run(fresh, x)  # the fresh model's caches now hold prepacked copies of its own weights
    assert not torch.equal(stale[0], want[0])
    result = fresh.load_state_dict(opt.state_dict())  # strict
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same(_run(fresh, x), want)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_train_raises_the_eval_only_error(case: str, fuse: bool) -> None:
    _, opt = _build(case, fuse=fuse)
    x = _input()
    want = _run(opt, x)
    for module in (opt, opt.layer1, opt.layer1[0]):
        with pytest.raises(EvalOnlyError, match=re.escape(EVAL_ONLY_MESSAGE)) as err:
            module.train()
        assert isinstance(err.value, RuntimeError)
    opt.eval()
    assert not any(m.training for m in opt.modules())
    _assert_same(_run(opt, x), want)
