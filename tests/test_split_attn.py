"""Split-Attention layer: same function as the straightforward formula, layout kept, scriptable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitattn.layers.split_attn import SplitAttn, radix_softmax, radix_weighted_sum


def reference_split_attn(m: SplitAttn, x: torch.Tensor) -> torch.Tensor:
    """The paper's formula written the plain way (as timm/official do): sum the splits, pool, r-softmax,
    weighted sum of the full R-times-larger product."""
    u = m.act0(m.bn0(m.conv(x)))
    b, rc, h, w = u.shape
    r, c = m.radix, m.out_channels
    splits = u.reshape(b, r, c, h, w)
    gap = splits.sum(1).mean((2, 3), keepdim=True)
    logits = m.fc2(m.act1(m.bn1(m.fc1(gap)))).view(b, -1)
    if r > 1:
        attn = F.softmax(logits.view(b, m.cardinality, r, -1).transpose(1, 2), dim=1).reshape(b, r, c, 1, 1)
        return (splits * attn).sum(1)
    return u * torch.sigmoid(logits).view(b, c, 1, 1)


def _randomise_bn(m: torch.nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("radix,card", [(1, 1), (2, 1), (4, 1), (1, 4), (2, 2), (4, 2)])
@pytest.mark.parametrize("train", [False, True])
def test_matches_reference(radix: int, card: int, train: bool) -> None:
    torch.manual_seed(radix * 10 + card)
    m = SplitAttn(16 * card, 16 * card, groups=card, radix=radix)
    _randomise_bn(m)
    m.train(train)
    x = torch.randn(3, 16 * card, 9, 7)
    torch.testing.assert_close(m(x), reference_split_attn(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("radix", [1, 2, 4])
def test_channels_last_stays_channels_last(radix: int) -> None:
    torch.manual_seed(0)
    m = SplitAttn(32, 32, radix=radix).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 10, 10).contiguous(memory_format=torch.channels_last)
    out = m(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, m(x.contiguous()), rtol=1e-5, atol=1e-5)


def test_gradients_match_reference() -> None:
    torch.manual_seed(0)
    # Eval mode: train-mode BN over the pooled (B, inter, 1, 1) vector is so ill-conditioned at a small
    # batch that float rounding differences dominate; the forward in train mode is tested above.
    m = SplitAttn(32, 32, radix=2).eval()
    _randomise_bn(m)
    x = torch.randn(4, 32, 8, 8, requires_grad=True)
    g1 = torch.autograd.grad(m(x).square().sum(), [x, *m.parameters()])
    g2 = torch.autograd.grad(reference_split_attn(m, x).square().sum(), [x, *m.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_radix_softmax_layout() -> None:
    # cardinal-major logits (K=2, R=2, C/K=3) -> radix-major weights summing to 1 over R.
    logits = torch.arange(12.0).view(1, 12)
    a = radix_softmax(logits, radix=2, cardinality=2).view(2, 2, 3)  # (R, K, C/K)
    torch.testing.assert_close(a.sum(0), torch.ones(2, 3))
    # logit index k*R*3 + r*3 + j goes to weight (r, k, j); within a group the larger logit wins.
    assert bool((a[1] > a[0]).all())
    torch.testing.assert_close(radix_softmax(logits, 1, 1), torch.sigmoid(logits))


@pytest.mark.parametrize("radix", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_radix_weighted_sum(radix: int, channels_last: bool) -> None:
    torch.manual_seed(radix)
    x = torch.randn(2, radix * 5, 4, 3)
    a = torch.rand(2, radix * 5)
    want = (x.view(2, radix, 5, 4, 3) * a.view(2, radix, 5, 1, 1)).sum(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    got = radix_weighted_sum(x.contiguous(memory_format=fmt), a, radix)
    torch.testing.assert_close(got, want)
    assert got.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("radix", [2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_radix_weighted_sum_backward(radix: int, channels_last: bool) -> None:
    """The hand-written backward: exact (float64 gradcheck), equal to autograd's, in x's memory format."""
    torch.manual_seed(radix)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, radix * 4, 5, 3, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    a = torch.rand(2, radix * 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: radix_weighted_sum(x, a, radix), (x, a))
    out = radix_weighted_sum(x, a, radix)
    assert type(out.grad_fn).__name__ == "_RadixWeightedSumBackward"
    g = torch.randn_like(out)
    gx, ga = torch.autograd.grad(out, (x, a), g)
    want = (x.view(2, radix, 4, 5, 3) * a.view(2, radix, 4, 1, 1)).sum(1)
    wx, wa = torch.autograd.grad(want, (x, a), g)
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(ga, wa)
    assert gx.is_contiguous(memory_format=fmt)
    # Only one input needing a gradient is handled too.
    (gx_only,) = torch.autograd.grad(radix_weighted_sum(x, a.detach(), radix), x, g)
    torch.testing.assert_close(gx_only, wx)


def test_scriptable_and_compiles_without_graph_breaks() -> None:
    torch.manual_seed(0)
    m = SplitAttn(32, 32, radix=2).eval()
    x = torch.randn(2, 32, 8, 8)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x))
    explanation = torch._dynamo.explain(m)(x)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_inference_pools_the_splits_row_by_row(grad: bool, dtype: torch.dtype) -> None:
    # Under torch.compile without autograd the split pooling is a sum over W, then H (one read of each
    # row), and in bf16 the r-softmax exp(x - logsumexp(x)); with autograd they stay the one sum over
    # (H, W) and softmax, as they do in fp32. Both compute what eager mode computes.
    torch.manual_seed(0)
    m = SplitAttn(16, 16, radix=2).eval().to(dtype)
    x = torch.randn(2, 16, 8, 8, dtype=dtype).to(memory_format=torch.channels_last)
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        got = torch.compile(m, backend=backend)(x)
        want = m(x)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want, **({} if dtype == torch.float32 else dict(rtol=0, atol=2e-2)))
    dims = [n.args[1] for n in graphs[0].graph.nodes if n.op == "call_method" and n.target == "sum"]
    sums = [tuple(d) if isinstance(d, (tuple, list)) else (d,) for d in dims]
    assert sums[:2] == ([(3,), (2,)] if not grad else [(2, 3), (1,)])
    called = {getattr(n.target, "__name__", str(n.target)) for n in graphs[0].graph.nodes}
    lse = not grad and dtype == torch.bfloat16
    assert ("logsumexp" in called) is lse and ("softmax" in called) is not lse, called


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_inference_r_softmax_equals_softmax(dtype: torch.dtype) -> None:
    # The form compiled inference takes (logsumexp in bf16), at radix 4 and cardinality 2 (radix-major
    # weights summing to 1 over the radix), computed in fp32 as softmax is: eager softmax within rounding.
    torch.manual_seed(0)
    logits = (torch.randn(3, 4 * 2 * 5) * 4).to(dtype)
    want = radix_softmax(logits, 4, 2)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(radix_softmax, backend=lambda gm, _inputs: gm.forward)(logits, 4, 2)
    torch._dynamo.reset()
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3)
    torch.testing.assert_close(got.float().view(3, 4, 10).sum(1), torch.ones(3, 10), rtol=0, atol=2e-2)
