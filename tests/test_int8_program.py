"""The graph inductor compiles for an INT8 model (splitattn.deploy.int8_program): what its rewrites change,
what they must leave alone, and that the values stay those of the converted graph up to one INT8 step.

- In a quantized ResNeSt (radix 1, 2, 4; avd and avg_down pools) every Split-Attention weighted sum and
  every average pool between two quantizes has its scales folded, and every attention MLP linear becomes a
  product and a sum; the INT8 classifier and the graph it is given are unchanged.
- Hand-built graphs that are not linear in their dequantizes, or whose values are read elsewhere, or that
  have a zero point, are left as they are; so is a linear wider than inductor's bound.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import splitattn
from conftest import randomize_stats
from splitattn.deploy.int8_program import linears_as_reductions, program_graph
from splitattn.layers.fused_conv import MAX_REDUCTION_WIDTH
from splitattn.layers.split_attn import SplitAttn

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao is not installed (pip install 'splitattn[int8]')")
aten = torch.ops.aten


def _targets(graph: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]


@needs_torchao
@pytest.mark.parametrize("radix", [1, 2, 4])
def test_folds_each_weighted_sum_and_int8_pool(radix: int) -> None:
    # deep stem, avd and avg_down (the defaults): ResNeSt-50's layout
    model = randomize_stats(splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=radix, stem_width=8, base_width=8,
                                              num_classes=10)).eval()
    gen = torch.Generator().manual_seed(0)
    qmodel = splitattn.quantize(model, [torch.randn(4, 3, 64, 64, generator=gen)], compile=False)
    graph = qmodel.graph_module
    code = graph.code
    folded, counts = program_graph(graph)
    assert graph.code == code, "the reference graph was modified"
    n = counts["scales"]

    n_split = sum(isinstance(m, SplitAttn) for m in model.modules())
    pools = [name for name, m in model.named_modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert len(pools) == 2 * 3  # the avd pool and the avg_down pool of layers 2-4
    assert n == n_split + len(pools)
    targets = _targets(folded)
    assert sum("quantize_per_tensor" in t and "dequantize" not in t for t in targets) == \
        sum("quantize_per_tensor" in t and "dequantize" not in t for t in _targets(graph)) - n
    # The attention weights carry the scales, in a buffer of their own: one per product (radix 2: x0 * a0 +
    # x1 * a1; radix 1: x * a; radix 4: (x * a).sum over R, in one product).
    assert sum("inductor_force_stride_order" in t for t in targets) == n_split * (2 if radix == 2 else 1)
    # The attention MLP (fc1, fc2 per block) as a product and a sum; the INT8 classifier stays a linear.
    assert counts["linears"] == 2 * n_split
    assert _targets(folded).count("aten.linear.default") == 1
    # No weighted sum or average pool reads a dequantize any more.
    for node in folded.graph.nodes:
        if node.op == "call_function" and node.target in (aten.mul.Tensor, aten.addcmul_.default,
                                                          aten.avg_pool2d.default):
            read = [str(getattr(a, "target", "")) for a in node.args]
            assert not any("dequantize" in t for t in read), node.format_node()

    x = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref, got = graph(x), folded(x)
    assert torch.nn.functional.cosine_similarity(got, ref).min().item() > 0.999
    assert torch.equal(got.argmax(1), ref.argmax(1))


def _dq(q: torch.Tensor, scale: float = 0.02, zero_point: int = 0) -> torch.Tensor:
    qd = torch.ops.quantized_decomposed
    return qd.dequantize_per_tensor.default(q, scale, zero_point, 0, 255, torch.uint8)


def _q(y: torch.Tensor, scale: float = 0.05, zero_point: int = 0) -> torch.Tensor:
    qd = torch.ops.quantized_decomposed
    return qd.quantize_per_tensor.default(y, scale, zero_point, 0, 255, torch.uint8)


def _weighted_sum(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    x0, x1 = aten.unbind.int(aten.view.default(_dq(q), [2, 2, 4, 5, 5]), 1)
    a0, a1 = aten.unbind.int(aten.view.default(a, [2, 2, 4, 1, 1]), 1)
    return _q(aten.addcmul_.default(aten.mul.Tensor(x0, a0), x1, a1))


def _with_zero_point(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return _q(aten.mul.Tensor(_dq(q, zero_point=3), a))


def _square(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    x = _dq(q)
    return _q(aten.mul.Tensor(x, x))


def _read_elsewhere(q: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = aten.mul.Tensor(_dq(q), a)
    return _q(y), aten.sum.dim_IntList(y, [2, 3])


def _plain_plus_product(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    x = _dq(q)  # x + x * a: one term has the weight, the other not
    return _q(aten.addcmul.default(x, x, a))


def _twice_weighted(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return _q(aten.mul.Tensor(aten.mul.Tensor(_dq(q), a), a))


def _inputs(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 120, (2, channels, 5, 5), dtype=torch.uint8, generator=gen)
    return q, torch.rand(2, channels, 1, 1, generator=gen)


@needs_torchao
def test_folded_weighted_sum_is_within_one_step() -> None:
    import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed)

    graph = torch.fx.symbolic_trace(_weighted_sum)
    folded, counts = program_graph(graph)
    assert counts == {"scales": 1, "linears": 0}
    q, a = _inputs(8)
    ref, got = graph(q, a.view(2, 8)), folded(q, a.view(2, 8))
    assert got.dtype == torch.uint8 and got.shape == ref.shape == (2, 4, 5, 5)
    assert (got.int() - ref.int()).abs().max().item() <= 1
    assert (got != ref).float().mean().item() < 0.02


@needs_torchao
@pytest.mark.parametrize("fn", [_with_zero_point, _square, _read_elsewhere, _plain_plus_product,
                                _twice_weighted])
def test_leaves_what_is_not_a_linear_tail(fn) -> None:
    import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed)

    graph = torch.fx.symbolic_trace(fn)
    folded, counts = program_graph(graph)
    assert counts["scales"] == 0
    assert _targets(folded) == _targets(graph)


@pytest.mark.parametrize("width", [300, MAX_REDUCTION_WIDTH + 1])
def test_linear_as_a_reduction_within_the_bound(width: int) -> None:
    g = torch.fx.Graph()
    x, w, b = g.placeholder("x"), g.placeholder("w"), g.placeholder("b")
    g.output(g.call_function(aten.linear.default, (x, w, b)))
    gen = torch.Generator().manual_seed(0)
    values = (torch.randn(3, width, generator=gen), torch.randn(5, width, generator=gen),
              torch.randn(5, generator=gen))
    for node, val in zip((x, w, b), values):
        node.meta["val"] = val
    graph = torch.fx.GraphModule(torch.nn.Module(), g)
    assert linears_as_reductions(graph) == (1 if width <= MAX_REDUCTION_WIDTH else 0)
    torch.testing.assert_close(graph(*values), torch.nn.functional.linear(*values), rtol=1e-5, atol=1e-4)
