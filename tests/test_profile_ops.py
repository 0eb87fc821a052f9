"""The op classes of benchmarks/profile_ops.py: profiler event names -> conv / attn_tail / quant / other."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

import splitattn

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_ops.py"
_SPEC = importlib.util.spec_from_file_location("profile_ops", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
profile_ops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(profile_ops)


@pytest.mark.parametrize("name, expected", [
    # oneDNN / mkldnn extern kernels and eager convs and linears
    ("onednn::qconv_pointwise", "conv"),
    ("onednn::qconv2d_pointwise.binary", "conv"),
    ("onednn::qlinear_pointwise", "conv"),
    ("mkldnn::_convolution_pointwise", "conv"),
    ("mkldnn::_convolution_pointwise_.binary", "conv"),
    ("mkldnn::_linear_pointwise", "conv"),
    ("aten::mkldnn_convolution", "conv"),
    ("aten::addmm", "conv"),
    # eager (de)quantize and Split-Attention ops
    ("quantized_decomposed::quantize_per_tensor", "quant"),
    ("aten::dequantize", "quant"),
    ("aten::_softmax", "attn_tail"),
    ("aten::sum", "attn_tail"),
    # inductor's generated kernels, named after the ops they fuse
    ("graph_0_cpp_fused_quantize_per_tensor_0", "quant"),
    ("graph_0_cpp_fused_dequantize_per_tensor_clone_quantize_per_tensor_12", "quant"),
    ("graph_0_cpp_fused__softmax_7", "attn_tail"),
    # names seen in splitattn resnest50's INT8 program (torch 2.14): pooling + division, then r-softmax
    # and weighted sum fused with the next block's avd pooling, and the final global pool
    ("graph_0_cpp_fused_div_quantize_per_tensor_sum_view_8", "attn_tail"),
    ("graph_0_cpp_fused__softmax_addcmul_avg_pool2d_mul_quantize_per_tensor_transpose_unbind_view_9",
     "attn_tail"),
    ("graph_0_cpp_fused_dequantize_per_tensor_mean_quantize_per_tensor_36", "attn_tail"),
    ("graph_0_cpp_fused_addcmul_exp_logsumexp_mul_relu_sub_transpose_unbind_view_5", "attn_tail"),
    ("graph_0_cpp_fused_avg_pool2d_dequantize_per_tensor_quantize_per_tensor_7", "other"),
    ("graph_0_cpp_fused_dequantize_per_tensor_sum_3", "attn_tail"),
    ("graph_0_cpp_fused_addcmul_dequantize_per_tensor_mul_quantize_per_tensor_9", "attn_tail"),
    ("graph_1_cpp_fused_mean_51", "attn_tail"),
    ("graph_0_cpp_fused_add_relu_4", "other"),
    ("graph_0_cpp_fused_dequantize_per_tensor_max_pool2d_with_indices_quantize_per_tensor_1", "other"),
    ("graph_0_cpp_fused_avg_pool2d_2", "other"),
])
def test_classify_kernel_names(name: str, expected: str) -> None:
    assert profile_ops.classify(name) == expected, f"{name} -> {profile_ops.classify(name)}, want {expected}"


def test_the_attention_mlp_is_told_apart_by_its_input_shapes() -> None:
    # fc1 / fc2 on the pooled (B, C, 1, 1) vector belong to the Split-Attention tail; a conv of a map not.
    assert profile_ops.classify("onednn::qconv_pointwise", [[8, 64, 1, 1], [], []]) == "attn_tail"
    assert profile_ops.classify("mkldnn::_convolution_pointwise", [[1, 256, 1, 1]]) == "attn_tail"
    # ATen's own kernels, where a CPU has no bf16 oneDNN convolution
    slow = "aten::_slow_conv2d_forward"
    assert profile_ops.classify(slow, [[1, 256, 1, 1], [128, 256, 1, 1]]) == "attn_tail"
    assert profile_ops.classify(slow, [[1, 256, 7, 7], [128, 256, 1, 1]]) is None  # its parent's: conv
    assert profile_ops.classify("onednn::qconv_pointwise", [[8, 64, 56, 56], [], []]) == "conv"
    assert profile_ops.classify("onednn::qlinear_pointwise", [[8, 2048], []]) == "conv"  # the classifier
    assert profile_ops.classify("mkl::_mkl_linear", [[8, 64], [32, 64]]) == "attn_tail"  # fp32 MLP
    # Linears: given the classifier's input width, any narrower linear (a bf16 GEMM of an optimized model,
    # or addmm where the CPU has no bf16 kernels) is the MLP; the classifier stays with the convs.
    for name in ("mkldnn::_linear_pointwise", "aten::addmm", "mkl::_mkl_linear"):
        shapes = [[64], [8, 256], [256, 64]] if name == "aten::addmm" else [[8, 256], [64, 256]]
        assert profile_ops.classify(name, shapes, head_width=2048) == "attn_tail", name
        head = [[1000], [8, 2048], [2048, 1000]] if name == "aten::addmm" else [[8, 2048], [1000, 2048]]
        assert profile_ops.classify(name, head, head_width=2048) == "conv", name
    assert profile_ops.classify("aten::addmm", [[64], [8, 256], [256, 64]]) == "conv"  # no head width given
    assert profile_ops.head_width(nn.Sequential()) is None
    assert profile_ops.head_width(splitattn.create_model("resnest14d", num_classes=3)) == 2048
    mlp = SimpleNamespace(name="onednn::qconv_pointwise", self_cpu_time_total=30.0, cpu_parent=None,
                          input_shapes=[[8, 64, 1, 1]])
    conv = SimpleNamespace(name="onednn::qconv_pointwise", self_cpu_time_total=500.0, cpu_parent=None,
                           input_shapes=[[8, 64, 56, 56]])
    per_class, kernels = profile_ops.attribute([mlp, conv])
    assert per_class == {"attn_tail": 30.0, "conv": 500.0}, per_class
    assert kernels["onednn::qconv_pointwise (attention MLP)"] == ("attn_tail", 30.0, 1), kernels


@pytest.mark.parametrize("name", ["aten::empty", "Torch-Compiled Region: 0/0", "aten::as_strided",
                                  "quantized::max_pool2d"])
def test_unclassified_names_defer_to_their_parent(name: str) -> None:
    assert profile_ops.classify(name) is None, f"{name} got class {profile_ops.classify(name)}"


def test_attribute_gives_children_their_parents_class_and_summarize_the_shares() -> None:
    def ev(name: str, self_us: float, parent: object = None) -> SimpleNamespace:
        return SimpleNamespace(name=name, self_cpu_time_total=self_us, cpu_parent=parent)

    root = ev("Torch-Compiled Region: 0/0", 100.0)
    conv = ev("onednn::qconv_pointwise", 500.0, root)
    events = [root, conv, ev("aten::empty", 20.0, conv), ev("graph_0_cpp_fused__softmax_3", 200.0, root),
              ev("graph_0_cpp_fused_quantize_per_tensor_0", 180.0, root)]
    per_class, kernels = profile_ops.attribute(events)
    assert per_class == {"other": 100.0, "conv": 520.0, "attn_tail": 200.0, "quant": 180.0}, per_class
    assert kernels["aten::empty"] == ("conv", 20.0, 1), kernels["aten::empty"]
    out = profile_ops.summarize(per_class, kernels, steps=2, top=2)
    assert out["profiled_ms_per_step"] == 0.5, out
    assert out["classes"]["conv"] == {"ms": 0.26, "pct": 52.0}, out["classes"]
    assert out["non_conv_pct"] == 48.0, out
    assert out["other_wrapper_ms"] == 0.05, out  # the compiled region's own 100 us over 2 steps
    top = [k["name"] for k in out["top_kernels"]]
    assert top == ["onednn::qconv_pointwise", "graph_0_cpp_fused__softmax_3"], top


def test_rates_bound_the_step_by_its_convolutions() -> None:
    # resnest50 INT8 at batch 8 on the AVX-512 VNNI machine: 5.371 GMAC per image, a 118.63 ms step of
    # which the conv class took 91.7% of the profiled time, an INT8 roof of 432.6 GMAC/s
    r = profile_ops.rates(5.371, 8, 118.63, 0.917, roof=432.6)
    assert r == {"gmac_per_s": 362.2, "conv_gmac_per_s": 395.0, "roof_fraction": 0.837,
                 "conv_roof_fraction": 0.913}, r
    assert profile_ops.rates(5.371, 8, 118.63, 0.917) == {
        "gmac_per_s": 362.2, "conv_gmac_per_s": 395.0, "roof_fraction": None, "conv_roof_fraction": None}
    # the convolutions alone are never slower than the step they are part of
    assert profile_ops.rates(4.089, 1, 22.45, 1.0)["conv_gmac_per_s"] == 182.1
    # no MAC count (a model the counter cannot trace), or no conv time: nothing made up
    assert set(profile_ops.rates(None, 8, 118.63, 0.917, roof=432.6).values()) == {None}
    assert profile_ops.rates(5.371, 1, 17.34, 0.0, roof=432.6)["conv_gmac_per_s"] is None


def test_program_calls_reads_the_generated_wrapper() -> None:
    """benchmarks/program_calls.py counts, in the ``call`` of inductor's Python wrapper, each library op,
    extern kernel and generated kernel per step, kernel numbers dropped."""
    import torch
    from torch._inductor.utils import run_and_get_code

    import program_calls

    w = torch.randn(16, 8)

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x @ w)
        return torch.relu(y @ w.t()).sum(1) + y.amax(1).sum()

    _, codes = run_and_get_code(torch.compile(fn), torch.randn(4, 16))
    calls = sum((program_calls.wrapper_calls(code) for code in codes), start=collections.Counter())
    assert calls["extern_kernels.mm"] == 2, calls
    kernels = {name: n for name, n in calls.items() if name.startswith("cpp_fused_")}
    assert kernels and all(not name[-1].isdigit() for name in kernels), calls
    # A function ends at the next top-level statement: what follows call() is not counted.
    code = ("class Runner:\n    def call(self, args):\n        buf0 = extern_kernels.mm(a, b)\n"
            "        cpp_fused_relu_0(buf0)\n        cpp_fused_relu_1(buf0)\n"
            "        torch.ops.onednn.qconv_pointwise.tensor(buf0)\n\ndef benchmark():\n"
            "    extern_kernels.mm(a, b)\n")
    assert program_calls.wrapper_calls(code) == collections.Counter(
        {"cpp_fused_relu": 2, "extern_kernels.mm": 1, "torch.ops.onednn.qconv_pointwise.tensor": 1})
    with pytest.raises(ValueError, match="no call"):
        program_calls.wrapper_calls("def other():\n    pass\n")
