"""optimize_for_inference: BatchNorms folded, same outputs, eval-only, channels_last, compile/script/AMP."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from torch import nn

import splitattn
from splitattn.deploy.fold import (
    EvalOnlyError,
    FusedBottleneck,
    FusedStage,
    fold_batchnorms,
    fuse_activations,
    fuse_conv_bn,
    optimize_for_inference,
)
from splitattn.errors import InputError
from splitattn.layers import FrozenBatchNorm2d, FusedConv2d, SplitAttn
from splitattn.layers.fused_conv import onednn_fast_path_available


@torch.no_grad()
def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial statistics for BatchNorm and FrozenBatchNorm2d alike (same scales as conftest's
    ``randomize_stats``, which keep the logits of the deep models of order 1-10)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if getattr(m, "running_var", None) is not None:
            n = m.running_var.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return model


def _norm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm | FrozenBatchNorm2d) for m in model.modules())


# The 200/269-layer models dominate this file's runtime: marked slow (deselect with -m "not slow").
_ZOO = [pytest.param(n, marks=pytest.mark.slow) if n in ("resnest200", "resnest269") else n
        for n in splitattn.list_models()]


@pytest.mark.parametrize("name", _ZOO)
def test_every_zoo_model_folds_to_same_output(name: str) -> None:
    torch.manual_seed(0)
    model = _randomise_norms(splitattn.create_model(name, num_classes=10)).eval()
    n_bn = _norm_count(model)
    opt = optimize_for_inference(model)
    assert _norm_count(opt) == 0 and n_bn > 0
    assert _norm_count(model) == n_bn, "the original must be left untouched"
    assert opt.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)  # the smallest input the network takes: cheap for the deep models
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(opt(x), ref, rtol=0, atol=1e-4)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(opt(x_cl), ref, rtol=0, atol=1e-4)


def test_fold_count_resnest50() -> None:
    model = splitattn.create_model("resnest50").eval()
    # 3 stem BNs (two inside conv1, bn1 after it), 4 per block x 16 blocks, 4 shortcut BNs.
    assert fold_batchnorms(model) == 71
    assert _norm_count(model) == 0


def test_eval_only_and_scriptable() -> None:
    torch.manual_seed(0)
    model = _randomise_norms(splitattn.create_model("resnest14d", num_classes=10)).eval()
    opt = optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = opt(x)
    with pytest.raises(EvalOnlyError, match="eval-only; train the original model instead"):
        opt.train()
    assert opt.eval() is opt  # eval() is allowed and undoes what the failed train() had switched
    assert not any(m.training for m in opt.modules())
    assert not any(p.requires_grad for p in opt.parameters())
    scripted = torch.jit.script(opt)
    with torch.no_grad():
        assert torch.equal(opt(x), before)
        torch.testing.assert_close(scripted(x), before)


def test_frozen_bn_folds_and_groupnorm_stays() -> None:
    torch.manual_seed(0)
    frozen = splitattn.create_model("resnest14d", num_classes=10, norm_layer="frozenbn")
    frozen = _randomise_norms(frozen).eval()
    opt = optimize_for_inference(frozen)
    assert _norm_count(frozen) > 0 and _norm_count(opt) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), frozen(x), rtol=0, atol=1e-4)
    gn = splitattn.create_model("resnest14d", num_classes=10, norm_layer="groupnorm").eval()
    opt_gn = optimize_for_inference(gn)
    assert sum(isinstance(m, nn.GroupNorm) for m in opt_gn.modules()) == sum(
        isinstance(m, nn.GroupNorm) for m in gn.modules())
    with torch.no_grad():
        torch.testing.assert_close(opt_gn(x), gn(x), rtol=0, atol=1e-4)


def test_features_only_backbone_folds() -> None:
    torch.manual_seed(0)
    model = _randomise_norms(splitattn.create_model("resnest14d", features_only=True)).eval()
    opt = optimize_for_inference(model)
    assert _norm_count(opt) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(opt(x), model(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_fuse_conv_bn_grouped_with_bias() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4, bias=True)
    bn = _randomise_norms(nn.BatchNorm2d(12)).eval()
    x = torch.randn(2, 8, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(fuse_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="eval-mode"):
        fold_batchnorms(nn.Sequential(conv, bn).train())


def test_autocast_and_compile() -> None:
    torch.manual_seed(0)
    model = _randomise_norms(splitattn.create_model("resnest14d", num_classes=10)).eval()
    opt = optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = opt(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
        # One block through inductor (fused oneDNN convs, avd pooling, r-softmax, weighted sum): the whole
        # model compiles the same ops, at a minute of C++ compile on 2 cores.
        h = opt.layer1(opt.maxpool(opt.act1(opt.bn1(opt.conv1(x)))))
        compiled = torch.compile(opt.layer2, fullgraph=True)
        torch.testing.assert_close(compiled(h), opt.layer2(h), rtol=0, atol=1e-4)


# --- fused convs (ReLU / residual add in the conv; prepacked oneDNN on CPU) ---------------------------------

_FAST = onednn_fast_path_available()


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # raised by mkldnn.flags() on builds without XPU
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=2, dilation=2, groups=4,
             bias=True),
        dict(in_channels=16, out_channels=32, kernel_size=1, bias=False),
        dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, groups=2, bias=True),
    ],
)
def test_fused_conv_equals_conv_add_relu(cfg: dict, channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**cfg)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, cfg["in_channels"], 13, 11).contiguous(memory_format=fmt)
    with torch.no_grad():
        ref = conv(x)
        res = torch.randn_like(ref).contiguous(memory_format=fmt)
        plain = FusedConv2d.from_conv(conv, activation="none")
        relu = FusedConv2d.from_conv(conv, activation="relu")
        assert relu.weight is conv.weight  # shares the parameters: same state dict
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(relu(x), torch.relu(ref), rtol=0, atol=1e-5)
        res_before = res.clone()
        torch.testing.assert_close(relu(x, res), torch.relu(ref + res_before), rtol=0, atol=1e-5)
        out = relu(x, res, reuse_residual=False)
        assert torch.equal(res, res_before), "without reuse_residual the residual must stay untouched"
        assert out.data_ptr() != res.data_ptr()
        out = relu(x, res, reuse_residual=True)
        torch.testing.assert_close(out, torch.relu(ref + res_before), rtol=0, atol=1e-5)
        if _FAST:
            assert out.data_ptr() == res.data_ptr(), "oneDNN path should write into the reused residual"
        # The unfused ATen path (oneDNN disabled) gives the same numbers.
        with torch.backends.mkldnn.flags(enabled=False):
            torch.testing.assert_close(relu(x, res_before), torch.relu(ref + res_before), rtol=0, atol=1e-5)
    # With autograd the fused conv is the ordinary differentiable sequence.
    x.requires_grad_()
    torch.relu(conv(x) + res_before).square().sum().backward()
    want = (conv.weight.grad.clone(), x.grad.clone())
    conv.weight.grad = x.grad = None
    relu(x, res_before).square().sum().backward()
    torch.testing.assert_close((conv.weight.grad, x.grad), want, rtol=1e-5, atol=1e-5)


def test_fused_conv_cache_follows_weights_and_copies() -> None:
    torch.manual_seed(0)
    conv = FusedConv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1), activation="relu")
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        before = conv(x)
        conv.load_state_dict({"weight": conv.weight * 2, "bias": conv.bias * 2})
        torch.testing.assert_close(conv(x), before * 2, rtol=1e-5, atol=1e-5)  # relu(2z) = 2 relu(z)
        conv(torch.randn(1, 4, 5, 7))  # a second input shape: its own packed weight
        if _FAST:
            assert len(conv._packed) == 3  # two shapes, and the weights' version
        clone = copy.deepcopy(conv)
        restored = pickle.loads(pickle.dumps(conv))
        for c in (clone, restored):
            assert c._packed == {}
            torch.testing.assert_close(c(x), before * 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="activation"):
        FusedConv2d(4, 4, 1, activation="gelu")


def test_fuse_activations_counts_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = _randomise_norms(splitattn.create_model("resnest50", num_classes=10)).eval()
    folded = optimize_for_inference(model, fuse=False)
    assert fuse_activations(folded) == 67  # 3 stem convs + 16 blocks x (conv1, split conv, fc1, conv3)
    assert not any(isinstance(m, nn.ReLU) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-4)
    mlp = [m for name, m in folded.named_modules() if name.endswith((".fc1", ".fc2"))]
    assert len(mlp) == 32 and all(isinstance(m, FusedConv2d) for m in mlp)
    gn = optimize_for_inference(splitattn.create_model("resnest14d", norm_layer="groupnorm").eval())
    fused = {name: m.activation for name, m in gn.named_modules() if isinstance(m, FusedConv2d)}
    # No conv before a GroupNorm fuses a ReLU; the attention MLP (fc1 before its GroupNorm, fc2) still
    # becomes an activation-free FusedConv2d, for its GEMM path.
    assert set(fused.values()) == {"none"}
    assert sorted(fused) == sorted(f"{n}.{fc}" for n, m in gn.named_modules() if isinstance(m, SplitAttn)
                                   for fc in ("fc1", "fc2"))


@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_conv_on_a_vector_runs_as_a_gemm(groups: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x1 conv on a (B, C, 1, 1) map (the attention MLP) is a linear / batched product: same numbers as
    the conv, on every route (eager, TorchScript, autograd), with the residual and ReLU applied after it;
    neither the oneDNN conv nor ATen's conv runs, and a ReLU alone reads the GEMM's output."""
    import splitattn.layers.fused_conv as fc

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 1, groups=groups)
    fused = FusedConv2d.from_conv(conv, activation="relu")
    x = torch.randn(3, 8, 1, 1).contiguous(memory_format=torch.channels_last)
    res = torch.randn(3, 12, 1, 1)
    with torch.no_grad():
        want = torch.relu(conv(x) + res)
    calls = []
    monkeypatch.setattr(fc.FusedConv2d, "_try_onednn", lambda *a: calls.append("onednn"))
    monkeypatch.setattr(fc.FusedConv2d, "_conv_forward", lambda *a: calls.append("conv"))
    with torch.no_grad():
        torch.testing.assert_close(fused(x, res), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(fused(x, res, reuse_residual=True), want, rtol=0, atol=1e-6)
    assert calls == []
    monkeypatch.undo()
    scripted = torch.jit.script(FusedConv2d.from_conv(conv, activation="relu"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, res), want, rtol=0, atol=1e-6)
        # Any other input size, or a kernel that is not 1x1, stays a convolution.
        big = torch.randn(3, 8, 2, 2)
        torch.testing.assert_close(fused(big), torch.relu(conv(big)), rtol=0, atol=1e-6)
        torch.testing.assert_close(fused(x), torch.relu(conv(x)), rtol=0, atol=1e-6)
        torch.testing.assert_close(scripted(x), torch.relu(conv(x)), rtol=0, atol=1e-6)
    # Without a residual the ReLU reads the GEMM's (B, C_out) output, before the reshape to (B, C_out, 1,
    # 1): the form inductor's linear + ReLU fusion matches (one oneDNN call with a ReLU post-op in bf16).
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        graph = make_fx(fused)(x).graph
    relus = [n for n in graph.nodes if n.target is torch.ops.aten.relu.default]
    assert len(relus) == 1 and tuple(relus[0].args[0].meta["val"].shape) == (3, 12)
    if groups == 1:
        assert relus[0].args[0].target is torch.ops.aten.addmm.default
    x.requires_grad_()
    fused(x, res).sum().backward()
    g = x.grad.clone()
    x.grad = None
    torch.relu(conv(x) + res).sum().backward()
    torch.testing.assert_close(g, x.grad, rtol=1e-6, atol=1e-6)


def _dynamo_calls(fn: object, *args: torch.Tensor) -> list[str]:
    """The names of the functions and methods in the graph that dynamo captures for ``fn(*args)``."""
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    torch._dynamo.reset()
    return [getattr(n.target, "__name__", str(n.target)) for g in graphs for n in g.graph.nodes
            if n.op in ("call_function", "call_method")]


@pytest.mark.parametrize("groups", [1, 2])
def test_compiled_inference_writes_the_vector_product_as_a_reduction(groups: int) -> None:
    """Compiled for CPU inference, a 1x1 conv on a (B, C, 1, 1) map is a multiply and a sum (per group), which
    inductor fuses with the ops around it; with autograd, exported, or wider than inductor's bound for such
    products it stays a GEMM. Every form computes the conv's numbers."""
    from splitattn.layers.fused_conv import MAX_REDUCTION_WIDTH

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 1, groups=groups)
    fused = FusedConv2d.from_conv(conv, activation="relu")
    x = torch.randn(3, 8, 1, 1)
    gemm = "linear" if groups == 1 else "bmm"
    with torch.no_grad():
        want = torch.relu(conv(x))
        calls = _dynamo_calls(fused, x)
        assert "mul" in calls and "sum" in calls and gemm not in calls, calls
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(fused, backend="eager")(x), want, rtol=0, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 input, fp32 weights: a bf16 result
            xb = x.to(torch.bfloat16)
            torch._dynamo.reset()
            got = torch.compile(fused, backend="eager")(xb)
            torch.testing.assert_close(got, fused(xb), rtol=0, atol=1e-2)
            assert got.dtype == conv(xb).dtype == torch.bfloat16
        exported = torch.export.export(fused, (x,), strict=False).module()
        assert any(gemm in str(n.target) for n in exported.graph.nodes)
        torch.testing.assert_close(exported(x), want, rtol=0, atol=1e-6)
        wide = FusedConv2d.from_conv(nn.Conv2d(MAX_REDUCTION_WIDTH + 1, 4, 1))
        assert "linear" in _dynamo_calls(wide, torch.randn(2, MAX_REDUCTION_WIDTH + 1, 1, 1))
    with torch.enable_grad():
        assert gemm in _dynamo_calls(fused, x)


def test_compiled_bf16_split_attention_tail_is_one_kernel() -> None:
    """An optimized bf16 Split-Attention conv compiled for inference (radix 2, cardinality 2;
    :func:`splitattn.compile_for_inference`): the split pooling, the attention MLP (fc1 + ReLU, fc2), the
    r-softmax and the weighted sum are one generated kernel; no GEMM is called for the MLP; the output is
    eager's within bf16 rounding."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    block = SplitAttn(16, 16, radix=2, groups=2)
    for bn in (block.bn0, block.bn1):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    opt = optimize_for_inference(block.eval(), dtype=torch.bfloat16)
    x = torch.randn(2, 16, 8, 8, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = opt(x)
        got, codes = run_and_get_code(splitattn.compile_for_inference(opt, (16, 8, 8)), x)
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=3e-2 * float(want.abs().max()))
    call = "\n".join(codes).split("def call(")[-1]  # the wrapper's step: what the program calls
    kernels = re.findall(r"\bcpp_fused_(\w+)\(", call)
    # After the grouped conv (a library call), one kernel: pool (sum), fc1 + ReLU, fc2 (mul, sum),
    # r-softmax (exp, logsumexp) and the weighted sum (addcmul).
    assert len(kernels) == 1, kernels
    assert {"sum", "relu", "mul", "exp", "addcmul"} <= set(kernels[0].split("_")), kernels
    assert not re.search(r"linear|addmm|\bmm\b|bmm", call), call


def test_fused_model_does_not_overwrite_what_a_hook_holds() -> None:
    """Blocks write over their input only when nothing else can see it: a forward hook keeps its tensor."""
    torch.manual_seed(0)
    model = _randomise_norms(splitattn.create_model("resnest14d", num_classes=10)).eval()
    opt = optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    x_before = x.clone()
    got, want = {}, {}
    with torch.no_grad():
        for net, store in ((model, want), (opt, got)):
            block = net.layer1[0]
            hooks = [block.register_forward_hook(lambda m, i, o, s=store: s.__setitem__("b0", o)),
                     block.register_forward_hook(lambda m, i, o, s=store: s.__setitem__("b0c", o.clone())),
                     # A downsample's output is the shortcut that conv3 could otherwise accumulate into.
                     block.downsample.register_forward_hook(lambda m, i, o, s=store: s.__setitem__("ds", o)),
                     block.downsample.register_forward_hook(
                         lambda m, i, o, s=store: s.__setitem__("dsc", o.clone()))]
            net(x)
            for h in hooks:
                h.remove()
        torch.testing.assert_close(got["b0"], want["b0"], rtol=0, atol=1e-5)
        torch.testing.assert_close(got["b0"], got["b0c"], rtol=0, atol=0)
        torch.testing.assert_close(got["ds"], got["dsc"], rtol=0, atol=0)
        torch.testing.assert_close(got["ds"], want["ds"], rtol=0, atol=1e-5)
        # Without hooks the same model reuses buffers and still gives the same logits.
        torch.testing.assert_close(opt(x), model(x), rtol=0, atol=1e-4)
        assert torch.equal(x, x_before), "the model input must never be overwritten"


def test_fused_block_writes_over_its_shortcut_only_when_allowed() -> None:
    """A block reuses its input's buffer for the output only when the stage says nothing else holds it."""
    torch.manual_seed(0)
    model = splitattn.create_model("resnest14d", num_classes=10, layers=(2, 1, 1, 1))
    model = _randomise_norms(model).eval()
    opt = optimize_for_inference(model)
    assert isinstance(opt.layer1, FusedStage) and all(isinstance(b, FusedBottleneck) for b in opt.layer1)
    assert opt.layer1[0].fresh_shortcut and not opt.layer1[1].fresh_shortcut  # downsample / identity
    x = torch.randn(2, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    x_before = x.clone()
    with torch.no_grad():
        want = model.layer1[1](x_before.clone())
        block = opt.layer1[1]
        for may_reuse, input_is_private in ((False, True), (True, False)):
            out = block(x, may_reuse, input_is_private)
            torch.testing.assert_close(out, want, rtol=0, atol=1e-4)
            assert torch.equal(x, x_before) and out.data_ptr() != x.data_ptr()
        out = block(x, True, True)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-4)
        if _FAST:
            assert out.data_ptr() == x.data_ptr() and not torch.equal(x, x_before), "x should be reused"
        # A stage never writes over its own input (only over what its blocks produced).
        x = x_before[:, :64].clone()
        stage_in = x.clone()
        torch.testing.assert_close(opt.layer1(x), model.layer1(stage_in), rtol=0, atol=1e-4)
        assert torch.equal(x, stage_in)


def test_fused_conv_falls_back_when_onednn_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build whose oneDNN lacks the fused primitive gets one warning and the plain ATen result."""
    import splitattn.layers.fused_conv as fc

    monkeypatch.setattr(fc, "_ONEDNN", True)

    def refuse(self: FusedConv2d, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no primitive for this case")

    monkeypatch.setattr(FusedConv2d, "_onednn_forward", refuse)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    fused = FusedConv2d.from_conv(conv, activation="relu")
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad(), pytest.warns(UserWarning, match="oneDNN fused convolution unavailable"):
        out = fused(x)
    torch.testing.assert_close(out, torch.relu(conv(x)), rtol=0, atol=1e-6)
    assert fc._ONEDNN is False  # switched off: later calls go straight to the ATen path


def test_a_dtype_this_cpu_emulates_is_named(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                            ) -> None:
    """optimize_for_inference in bf16 on a CPU whose oneDNN refuses bf16 convolutions (ATen then emulates
    them, several times slower than fp32) says so, once, naming the dtype and what to use instead."""
    import logging

    import splitattn.deploy.fold as fold
    from splitattn.deploy.cpu_features import emulated_on_cpu

    assert emulated_on_cpu(torch.bfloat16) is (not torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert emulated_on_cpu(torch.float32) is False
    model = splitattn.ResNeSt(layers=(1, 1, 1, 1), stem_width=8, base_width=8, num_classes=10)
    for emulated in (True, False):
        monkeypatch.setattr(fold, "emulated_on_cpu", lambda dtype, emulated=emulated: emulated)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="splitattn"):
            bf16 = fold.optimize_for_inference(model, dtype=torch.bfloat16)
            fold.optimize_for_inference(model)  # fp32: nothing to say
        said = [r.getMessage() for r in caplog.records if "emulates them" in r.getMessage()]
        assert len(said) == int(emulated), said
        if emulated:
            assert "no bfloat16 convolutions" in said[0] and "splitattn.quantize" in said[0]
        assert next(bf16.parameters()).dtype == torch.bfloat16
