"""Every PyTorch tool that traces or transforms a model takes a ResNeSt: torch.fx (symbolic_trace,
torchvision and timm feature extraction, FX quantization), torch.func (vmap, grad, jacrev), double
backward, torch.jit.trace (save / load) and torch.export; the batch-1 guard follows the norms' state."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.ops.misc import FrozenBatchNorm2d

import splitattn
from conftest import randomize_stats
from splitattn.errors import InputError
from splitattn.layers import split_attn
from splitattn.layers.split_attn import SplitAttn, radix_weighted_sum


def _model(radix: int = 2, cardinality: int = 1) -> splitattn.ResNeSt:
    """resnest14d's layout (1 block per stage, deep stem, avg-down) at a fraction of its width."""
    torch.manual_seed(radix + 10 * cardinality)
    model = splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=radix, cardinality=cardinality, stem_width=8,
                              base_width=16 // cardinality, num_classes=10, zero_init_last=False)
    return randomize_stats(model)


def _input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))


def plain_weighted_sum(x: torch.Tensor, attn: torch.Tensor, radix: int) -> torch.Tensor:
    """The weighted sum in plain ops, differentiated by autograd alone: the reference."""
    b, rc, h, w = x.shape
    return (x.view(b, radix, rc // radix, h, w) * attn.view(b, radix, rc // radix, 1, 1)).sum(1)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("radix,cardinality", [(1, 1), (2, 1), (4, 2)])
def test_fx_symbolic_trace_matches_eager(radix: int, cardinality: int) -> None:
    model = _model(radix, cardinality)
    x = _input()
    for train in (True, False):
        model.train(train)
        traced = torch.fx.symbolic_trace(model)
        want = model(x)
        got = traced(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        model.zero_grad()
        want.square().sum().backward()
        expected = _grads(model)
        model.zero_grad()
        got.square().sum().backward()
        for a, b in zip(_grads(model), expected):
            torch.testing.assert_close(a, b)
    # The weighted sum is one leaf call, so the traced module runs the same fast backward.
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets.count(radix_weighted_sum) == 4


def test_torchvision_feature_extraction_forward_backward() -> None:
    model = _model()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert "layer1.0.conv2.radix_weighted_sum" in train_nodes and "layer4.0.act3" in eval_nodes
    nodes = {"layer2": "c3", "layer4": "c5", "layer1.0.conv2.radix_weighted_sum": "attn1"}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    x = _input()
    out = extractor.train()(x)
    assert out["attn1"].shape == (2, 16, 16, 16) and out["c3"].shape == (2, 512, 8, 8)
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in extractor.parameters())
    extractor.eval()
    torch.testing.assert_close(extractor(x)["c5"], model.eval().forward_features(x), rtol=0, atol=0)


def test_timm_fx_feature_extraction() -> None:
    model = _model().eval()
    net = timm.models.FeatureGraphNet(model, out_indices=(0, 2, 4))
    x = _input()
    outs = net(x)
    assert [o.shape[1] for o in outs] == [16, 512, 2048]
    torch.testing.assert_close(outs[-1], model.forward_features(x), rtol=0, atol=0)


def test_fx_quantization() -> None:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = _model().eval()
    x = _input(4)
    with warnings.catch_warnings():  # FX quantization is deprecated in favour of torchao's pt2e
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
        prepared(x)
        quantized = convert_fx(prepared)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in quantized.modules())
    want = model(x)
    got = quantized(x)
    assert (got - want).abs().max() < 0.2 * want.abs().max()


@pytest.mark.parametrize("radix", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weighted_sum_first_and_second_order_gradcheck(radix: int, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, radix * 3, 4, 3, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    a = torch.rand(2, radix * 3, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return radix_weighted_sum(x, a, radix)

    assert type(fn(x, a).grad_fn).__name__ == "_RadixWeightedSumBackward"
    assert torch.autograd.gradcheck(fn, (x, a))
    assert torch.autograd.gradgradcheck(fn, (x, a))


def test_gradient_penalty_matches_plain_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """autograd.grad(create_graph=True) then backward: the double backward of the weighted sum.

    float64: a penalty through training-mode BatchNorm amplifies float32 rounding to ~1e-3.
    """
    model = _model().double().train()
    reference = copy.deepcopy(model)
    x = _input().double()

    def penalty_grads(m: nn.Module) -> list[torch.Tensor]:
        xg = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xg).logsumexp(1).sum(), xg, create_graph=True)
        gx.square().sum().backward()
        return _grads(m)

    got = penalty_grads(model)
    monkeypatch.setattr(split_attn, "radix_weighted_sum", plain_weighted_sum)
    want = penalty_grads(reference)
    scale = max(b.abs().max() for b in want)
    assert scale > 0
    for a, b in zip(got, want):  # atol: fc1's bias, cancelled by the BatchNorm after it, has a zero gradient
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10 * scale)


def test_vmap_per_sample_gradients_equal_a_loop() -> None:
    model = _model().eval()  # eval-mode BN: each sample's loss depends on that sample alone
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, y = _input(3), torch.tensor([1, 5, 7])

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("radix", [2, 4])
def test_jacrev_of_split_attention(radix: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(radix)
    layer = randomize_stats(SplitAttn(8, 8, radix=radix, min_inter=8)).eval()
    x = torch.randn(2, 8, 4, 4)
    params = dict(layer.named_parameters())
    jac_x, jac_p = jacrev(lambda x, p: functional_call(layer, p, (x,)), argnums=(0, 1))(x, params)
    monkeypatch.setattr(split_attn, "radix_weighted_sum", plain_weighted_sum)
    want_x, want_p = jacrev(lambda x, p: functional_call(layer, p, (x,)), argnums=(0, 1))(x, params)
    torch.testing.assert_close(jac_x, want_x, rtol=1e-5, atol=1e-6)
    for name in params:
        torch.testing.assert_close(jac_p[name], want_p[name], rtol=1e-5, atol=1e-6)


def test_jit_trace_with_grad_saves_and_loads(tmp_path: pytest.TempPathFactory) -> None:
    model = _model().eval()
    x = _input()
    assert torch.is_grad_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of export
        traced = torch.jit.trace(model, x)  # check_trace on: the re-run must match
        torch.jit.save(traced, tmp_path / "model.pt")
        loaded = torch.jit.load(tmp_path / "model.pt")
    out = loaded(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    out.sum().backward()  # the saved graph is differentiable
    assert all(p.grad is not None for p in loaded.parameters())


def test_export_with_dynamic_batch() -> None:
    model = _model().eval()
    batch = torch.export.Dim("batch", max=64)
    program = torch.export.export(model, (_input(2),), dynamic_shapes={"x": {0: batch}})
    for n in (3, 5):
        torch.testing.assert_close(program.module()(_input(n)), model(_input(n)), rtol=1e-5, atol=1e-5)


def _swap_in_frozen_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.load_state_dict(child.state_dict())
            setattr(module, name, frozen)
        else:
            _swap_in_frozen_bn(child)


def _eval_batchnorms(model: nn.Module) -> None:
    model.apply(lambda m: m.eval() if isinstance(m, nn.modules.batchnorm._BatchNorm) else None)


@pytest.mark.parametrize("freeze", ["bn_eval", "torchvision_frozen", "timm_freeze"])
def test_training_batch_of_one_after_freezing_batchnorm(freeze: str) -> None:
    model = _model().train()
    x = _input(1)
    in_training = r"batch of 1.*layer1\.0\.conv2\.bn1 \(BatchNorm2d in training mode\)"
    with pytest.raises(InputError, match=in_training):
        model(x)
    if freeze == "bn_eval":
        _eval_batchnorms(model)
    elif freeze == "torchvision_frozen":
        _swap_in_frozen_bn(model)
    else:
        model = timm.layers.freeze_batch_norm_2d(model)
    assert model.training
    out = model(x)
    out.sum().backward()
    assert out.shape == (1, 10) and model.fc.weight.grad is not None


def test_batch_of_one_guard_follows_the_attention_norms() -> None:
    model = _model().train()
    x = _input(1)
    # Only the 1x1 attention vector cannot take a batch of 1: BatchNorm over spatial maps can.
    for m in model.modules():
        if isinstance(m, SplitAttn):
            m.bn1.eval()
    assert model(x).shape == (1, 10)
    _eval_batchnorms(model)
    model.layer3[0].conv2.bn1.train()
    with pytest.raises(InputError, match=r"layer3\.0\.conv2\.bn1 \(BatchNorm2d in training mode\).*eval"):
        model(x)
    # A BatchNorm without running statistics uses batch statistics in eval mode too.
    no_stats = nn.BatchNorm2d(model.layer3[0].conv2.bn1.num_features, track_running_stats=False)
    model.eval().layer3[0].conv2.bn1 = no_stats.eval()
    with pytest.raises(InputError, match="without running statistics"):
        model(x)
    # The feature extractors decide from their own norms alike.
    features = splitattn.models.FeatureListNet(_model(), out_indices=(1, 2)).train()
    with pytest.raises(InputError, match=r"layer1\.0\.conv2\.bn1"):
        features(x)
    assert [f.shape[1] for f in timm.layers.freeze_batch_norm_2d(features)(x)] == [256, 512]


def test_fx_trace_with_drop_block_in_training() -> None:
    """DropBlock (its sizes come from the input shape) is a leaf of the graph: the traced model drops blocks
    in training like the eager one (same RNG stream, same output) and equals eager in eval mode."""
    model = splitattn.create_model("resnest14d", num_classes=10, drop_block_rate=0.2).train()
    splitattn.set_drop_block_prob(model, 0.2)
    traced = torch.fx.symbolic_trace(model)
    x = _input()
    torch.manual_seed(0)
    eager = model(x)
    torch.manual_seed(0)
    torch.testing.assert_close(traced(x), eager, rtol=0, atol=0)
    model.eval()
    traced.eval()
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
