"""The GPU checks of the speed work: run where CUDA is present (``pytest tests/test_cuda.py``).

Without a GPU every test here is skipped, and reported as skipped: these checks are not claimed by a
CPU-only run. They cover what the CPU suite cannot: optimize_for_inference, channels_last, AMP,
torch.compile and Split-Attention recompute on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

import splitattn
from conftest import randomize_stats
from splitattn.deploy.fold import optimize_for_inference
from splitattn.layers.split_attn import SplitAttn, radix_weighted_sum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact fp32 comparisons: TF32 convolutions (cuDNN's default) round to 10 mantissa bits."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(name: str = "resnest50") -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_stats(splitattn.create_model(name)).eval().cuda()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("channels_last", [False, True])
def test_optimized_fp32_matches_eager(channels_last: bool) -> None:
    model = _model()
    fast = optimize_for_inference(model, channels_last=channels_last)
    x = torch.randn(4, 3, 128, 128, device="cuda")
    with torch.no_grad():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert fast.training is False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_optimized_under_autocast(dtype: torch.dtype) -> None:
    model = _model()
    fast = optimize_for_inference(model)
    x = torch.randn(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=dtype):
            amp_eager = model(x)
            amp_fast = fast(x)
    assert amp_fast.dtype == dtype
    # Both are within AMP rounding of fp32: folding adds no error beyond what autocast itself makes.
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    assert _rel(amp_fast, ref) <= tol and _rel(amp_eager, ref) <= tol


def test_channels_last_stays_channels_last() -> None:
    """No block writes an NCHW copy: every Split-Attention output of a channels_last input is NHWC."""
    model = _model("resnest14d").to(memory_format=torch.channels_last)
    layouts = []
    for m in model.modules():
        if isinstance(m, SplitAttn):
            m.register_forward_hook(
                lambda mod, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x)
    assert layouts and all(layouts)


@pytest.mark.parametrize("channels_last", [False, True])
def test_weighted_sum_backward_on_cuda(channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 2 * 32, 9, 7, device="cuda").contiguous(memory_format=fmt).requires_grad_()
    a = torch.rand(4, 2 * 32, device="cuda", requires_grad=True)
    g = torch.randn(4, 32, 9, 7, device="cuda")
    radix_weighted_sum(x, a, 2).backward(g)
    x2, a2 = x.detach().clone().requires_grad_(), a.detach().clone().requires_grad_()
    (x2.view(4, 2, 32, 9, 7) * a2.view(4, 2, 32, 1, 1)).sum(1).backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(a.grad, a2.grad)
    assert x.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("mode", ["attn", "block"])
def test_amp_training_step_with_recompute(mode: str) -> None:
    torch.manual_seed(0)
    base = splitattn.create_model("resnest14d", num_classes=10, zero_init_last=False).cuda().train()
    base = base.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 96, 96, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device="cuda")
    results = []
    for recompute in (False, True):
        m = copy.deepcopy(base)
        m.set_grad_checkpointing(mode if recompute else False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in m.parameters()])
        bufs = torch.cat([b.flatten().float() for b in m.buffers()])
        results.append((grads, bufs))
    (g0, b0), (g1, b1) = results
    assert _rel(g1, g0) <= 1e-2  # bf16 autocast; the recomputation replays the same kernels
    torch.testing.assert_close(b1, b0)  # running statistics updated once, as without recompute


def test_compile_matches_eager() -> None:
    model = _model("resnest14d").to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
        fast = torch.compile(optimize_for_inference(model), fullgraph=True)(x)
    assert _rel(out, ref) <= 1e-4 and _rel(fast, ref) <= 1e-4
