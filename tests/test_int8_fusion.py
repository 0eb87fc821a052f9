"""The structure the INT8 program's speed relies on (splitattn.deploy.int8_fusion), never its timings.

- Every Split-Attention grouped conv hands INT8 on (its output is quantized once, read by the attention
  tail through dequantize), so the only convs with a float output read in float are the attention MLP's
  ``fc2`` (its logits feed the r-softmax); each tensor is quantized at most once.
- A file of the previous layout (no ``int8_split`` setting) rebuilds as it was written.
- The fp32 attention MLP (the default) runs as linear layers, computing what its convs computed; a file
  written before (no ``attention_linear`` setting) rebuilds with the convs.
- On AVX2, inductor's kernels compiled under :func:`fast_int8_loads` load 8-bit data with one instruction,
  computing the same numbers.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

import splitattn
import splitattn.deploy.quantization as qmod
from conftest import randomize_stats
from splitattn.deploy import int8_fusion
from splitattn.deploy.compiled import capture
from splitattn.layers.split_attn import SplitAttn

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao is not installed (pip install 'splitattn[int8]')")


def _tiny(radix: int = 2) -> torch.nn.Module:
    model = splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=radix, stem_width=8, base_width=8, num_classes=10)
    return randomize_stats(model).eval()


def _quantized_tensors(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n.args[0] for n in graph.graph.nodes
            if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)]


@needs_torchao
@pytest.mark.parametrize("radix", [1, 2, 4])
def test_split_attn_convs_hand_int8_on(radix: int) -> None:
    model = _tiny(radix)
    calibration = [torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    qmodel = splitattn.quantize(model, calibration, compile=False, attention="int8")
    graph = qmodel.graph_module
    n_split = sum(isinstance(m, SplitAttn) for m in model.modules())
    assert int8_fusion.split_attn_outputs(model) == {f"layer{i}.0.conv2.act0" for i in range(1, 5)}
    # Only fc2 (one per block) leaves its conv in float: no float round trip between two convs.
    assert len(int8_fusion.float_round_trips(graph)) == n_split
    tensors = _quantized_tensors(graph)
    assert len(tensors) == len(set(tensors)), "a tensor is quantized twice"
    assert qmodel.info["int8_split"] is True
    # The previous recipe (files without "int8_split"): the grouped conv's output was read in float too,
    # with one quantize fewer per block.
    pt2e, x86 = qmod._import_torchao()
    settings = {k: v for k, v in qmodel.info.items() if k != "int8_split"}
    before, _ = qmod._convert(model, calibration, settings, pt2e, x86)
    assert len(int8_fusion.float_round_trips(before)) == 2 * n_split
    # One quantize more per block, except where the recipe already quantized U for the avd pool that reads
    # it in eval mode (SplitAttn.forward_pooled): there the tail shares that one.
    n_pooled = sum(isinstance(getattr(m, "avd_last", None), torch.nn.AvgPool2d) for m in model.modules())
    counts, counts_before = int8_fusion.count_quant_ops(graph), int8_fusion.count_quant_ops(before)
    assert counts["quantize"] == counts_before["quantize"] + n_split - n_pooled
    # The extra quantization costs little accuracy: both stay close to fp32.
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, old = model(x), before(x)
    assert torch.nn.functional.cosine_similarity(qmodel(x), ref).min().item() > 0.99
    assert torch.nn.functional.cosine_similarity(old, ref).min().item() > 0.99


@needs_torchao
def test_file_of_the_previous_layout_rebuilds_as_written(tmp_path) -> None:
    model = _tiny()
    calibration = [torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    pt2e, x86 = qmod._import_torchao()
    settings = {k: v for k, v in splitattn.quantize(model, calibration, compile=False).info.items()
                if k != "int8_split"}
    graph, _ = qmod._convert(model, calibration, settings, pt2e, x86)
    old = qmod.QuantizedModel(graph, settings, compile=False)
    path = old.save(tmp_path / "old.int8.safetensors")
    again = splitattn.load_quantized(path, compile=False, model=_tiny())
    assert "int8_split" not in again.info
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(again(x), old(x), atol=0, rtol=0)


def _linears(graph: torch.fx.GraphModule) -> int:
    return sum(n.target is torch.ops.aten.linear.default for n in graph.graph.nodes)


def _pooled_convs(graph: torch.fx.GraphModule) -> int:
    """Float convs on a (B, C, 1, 1) map: what the attention MLP is before the rewrite."""
    return sum(n.op == "call_function" and "conv" in str(n.target) and "val" in n.meta
               and tuple(n.meta["val"].shape[2:]) == (1, 1) for n in graph.graph.nodes)


@needs_torchao
@pytest.mark.parametrize("cardinality", [1, 2])
def test_float_attention_runs_as_linear_layers(cardinality: int, tmp_path) -> None:
    model = randomize_stats(splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=2, cardinality=cardinality,
                                              stem_width=8, base_width=8, num_classes=10)).eval()
    calibration = [torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    qmodel = splitattn.quantize(model, calibration, compile=False)  # attention="fp32" by default
    assert qmodel.info["attention"] == "fp32" and qmodel.info["attention_linear"] is True
    graph = qmodel.graph_module
    n_split = sum(isinstance(m, SplitAttn) for m in model.modules())
    names = int8_fusion.attention_mlp_convs(model)
    assert len(names) == 2 * n_split
    # fc1 and fc2 of every block, one linear per cardinal group, and the classifier; no conv reads a
    # float input or hands a float output on.
    assert _linears(graph) == 2 * n_split * cardinality + 1
    assert _pooled_convs(graph) == 0
    assert int8_fusion.float_round_trips(graph) == []
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # In float the linears compute what the convs do (per cardinal group when grouped).
    float_graph = capture(model, x)
    as_linear = copy.deepcopy(float_graph)
    assert int8_fusion.attention_as_linear(as_linear, names) == 2 * n_split
    with torch.no_grad():
        torch.testing.assert_close(as_linear(x), float_graph(x), atol=1e-5, rtol=1e-5)
    if cardinality == 1:
        # A file written before the rewrite (no "attention_linear") rebuilds with the convs, and computes
        # the same numbers up to rounding (the cardinality plays no part in this: checked once). In the
        # quantized graphs the GEMM and the conv may round the last bit apart on some CPUs, which a
        # quantize downstream can turn into one INT8 step.
        pt2e, x86 = qmod._import_torchao()
        settings = {k: v for k, v in qmodel.info.items() if k != "attention_linear"}
        before, _ = qmod._convert(model, calibration, settings, pt2e, x86)
        assert _linears(before) == 1 and _pooled_convs(before) == 2 * n_split
        with torch.no_grad():
            new, old = qmodel(x), before(x)
        assert torch.equal(new.argmax(1), old.argmax(1))
        assert torch.nn.functional.cosine_similarity(new, old).min().item() > 0.9999
        path = qmod.QuantizedModel(before, settings, compile=False).save(tmp_path / "old.int8.safetensors")
        again = splitattn.load_quantized(path, compile=False, model=model)
        assert "attention_linear" not in again.info and _pooled_convs(again.graph_module) == 2 * n_split
    elif qmod.int8_support_problem() is None:
        # Compiled: the program inductor builds (deploy.int8_program: each cardinal group's linears as a
        # product and a sum, fused into the block's tail kernel) computes what the reference graph does.
        compiled = qmod.QuantizedModel(graph, qmodel.info, compile=True)(x)
        with torch.no_grad():
            reference = qmodel(x)
        assert torch.nn.functional.cosine_similarity(compiled, reference).min().item() > 0.99
    # The rewrite leaves a conv it cannot express as a linear (here: a 3x3 one) as it is.
    assert int8_fusion.attention_as_linear(graph, ["layer1.0.conv2.conv"]) == 0


def test_load8_rewrite_only_touches_8_value_loads() -> None:
    u8 = ("at::vec::Vectorized<uint8_t>::loadu(in_ptr0 + static_cast<int64_t>(x2 + 128L*x1), "
          "static_cast<int64_t>(8))")
    assert int8_fusion._load8_line(u8) == (
        "at::vec::Vectorized<uint8_t>::loadu_one_fourth(in_ptr0 + static_cast<int64_t>(x2 + 128L*x1))")
    s8 = "at::vec::Vectorized<int8_t>::loadu(in_ptr1, static_cast<int64_t>(8))"
    assert int8_fusion._load8_line(s8) == "at::vec::Vectorized<int8_t>::loadu_one_fourth(in_ptr1)"
    for other in ("at::vec::Vectorized<uint8_t>::loadu(in_ptr0, static_cast<int64_t>(5))",  # a loop tail
                  "at::vec::Vectorized<float>::loadu(in_ptr0, static_cast<int64_t>(8))"):
        assert int8_fusion._load8_line(other) == other


def _avx2_inductor() -> bool:
    try:
        from torch._inductor import cpu_vec_isa

        isa = cpu_vec_isa.pick_vec_isa()
        return bool(isa) and isa.bit_width() == 256
    except Exception:  # noqa: BLE001 (no compiler, another inductor)
        return False


@pytest.mark.skipif(not _avx2_inductor(), reason="the rewrite applies to inductor's AVX2 (256-bit) kernels")
def test_fast_int8_loads_in_compiled_kernels() -> None:
    from torch._inductor.utils import run_and_get_code

    def pool_and_gate(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # dequantize -> 3x3 pool with padding (masked loads) and a per-channel gate, channels_last uint8
        x = (q.float() - 3.0) * 0.02
        return torch.nn.functional.avg_pool2d(x, 3, 2, 1) * a + x.mean((2, 3), keepdim=True)[..., :1, :1]

    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 128, (2, 24, 9, 9), dtype=torch.uint8, generator=gen).to(
        memory_format=torch.channels_last)
    a = torch.rand(1, 24, 1, 1, generator=gen)
    torch._dynamo.reset()
    with int8_fusion.fast_int8_loads():
        got, code = run_and_get_code(torch.compile(pool_and_gate, dynamic=False), q, a)
    torch._dynamo.reset()
    assert "loadu_one_fourth" in "\n".join(code)
    torch.testing.assert_close(got, pool_and_gate(q, a), atol=1e-5, rtol=1e-5)
