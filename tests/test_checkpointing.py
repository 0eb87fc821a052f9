"""Gradient checkpointing ("block") and Split-Attention recompute ("attn"): same training step, less saved."""

from __future__ import annotations

import copy

import pytest
import torch

import splitattn
from harness import saved_activation_mb
from splitattn.layers import SplitAttn, checkpoint
from splitattn.models import set_drop_block_prob


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = splitattn.create_model("resnest14d", num_classes=5, drop_block_rate=0.3, zero_init_last=False, **kw)
    set_drop_block_prob(m, 0.3)  # DropBlock active, so the recomputation must replay its masks
    return m.train()


def _step(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    torch.manual_seed(1)
    out = m(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    bufs = {n: b.clone() for n, b in m.named_buffers()}
    return out.detach(), grads, bufs


@pytest.mark.parametrize("mode", ["block", "attn", True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_step_as_without(mode, channels_last: bool) -> None:
    """Outputs, every parameter gradient and every BN buffer (running stats updated once, not twice)."""
    base = _model()
    x = torch.randn(4, 3, 64, 64)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ref_out, ref_g, ref_b = _step(copy.deepcopy(base), x)
    m = copy.deepcopy(base)
    m.set_grad_checkpointing(mode)
    assert m.grad_checkpointing == ("block" if mode is True else mode)
    out, g, b = _step(m, x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for n in ref_g:
        torch.testing.assert_close(g[n], ref_g[n], rtol=1e-6, atol=1e-7, msg=lambda s, n=n: f"{n}: {s}")
    for n in ref_b:
        torch.testing.assert_close(b[n], ref_b[n], rtol=0, atol=0, msg=lambda s, n=n: f"{n}: {s}")
    assert int(b["bn1.num_batches_tracked"]) == 1


def test_saves_less_by_the_expected_amount() -> None:
    """"attn" drops the ReLU'd radix-expanded map of every Split-Attention conv (and the pooled (B, C)
    vectors of its attention path, a few % more); "block" keeps only the block inputs and what lies
    outside the blocks."""
    x = torch.randn(4, 3, 96, 96)
    m = _model()
    set_drop_block_prob(m, 0.0)
    expanded = []
    hooks = [sa.conv.register_forward_hook(lambda mod, i, o: expanded.append(o.numel() * o.element_size()))
             for sa in m.modules() if isinstance(sa, SplitAttn)]
    plain = saved_activation_mb(lambda: m(x))
    for h in hooks:
        h.remove()
    m.set_grad_checkpointing("attn")
    attn = saved_activation_mb(lambda: m(x))
    m.set_grad_checkpointing("block")
    block = saved_activation_mb(lambda: m(x))
    dropped_maps = sum(expanded) / 2**20
    assert dropped_maps <= plain - attn <= 1.05 * dropped_maps
    assert block < 0.5 * attn
    m.set_grad_checkpointing(False)
    assert saved_activation_mb(lambda: m(x)) == plain


def test_inactive_in_eval_no_grad_and_script() -> None:
    m = _model()
    m.set_grad_checkpointing("attn")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # no_grad training forward: nothing to save, no checkpoint
        m(x)
    m.eval()
    ref = splitattn.create_model("resnest14d", num_classes=5)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref.eval()(x))
        torch.testing.assert_close(torch.jit.script(m)(x), m(x))


def test_features_only_and_errors() -> None:
    feats = splitattn.create_model("resnest14d", features_only=True).train()
    feats.set_grad_checkpointing(True)
    outs = feats(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in feats.parameters())
    with pytest.raises(ValueError, match="'blocks'"):
        feats.set_grad_checkpointing("blocks")


def test_checkpoint_helper_keeps_running_stats_under_any_momentum() -> None:
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=None)).train()
    twin = copy.deepcopy(bn)
    x = torch.randn(4, 3, 8, 8)
    checkpoint(bn, x).sum().backward()
    twin(x).sum().backward()
    for a, b in zip(bn.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(bn[0].weight.grad, twin[0].weight.grad)


def test_compiles_with_recompute() -> None:
    """The recomputing model still captures as one graph (dynamo's checkpoint higher-order op)."""
    m = _model()
    set_drop_block_prob(m, 0.0)
    m.set_grad_checkpointing("attn")
    x = torch.randn(2, 3, 64, 64)
    ref = copy.deepcopy(m)
    ref.set_grad_checkpointing(False)
    out = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    out.sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(out, ref(x).detach(), rtol=1e-5, atol=1e-5)
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda s, n=n: f"{n}: {s}")
