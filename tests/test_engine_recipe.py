"""The recipe's pieces: LR schedule, weight-decay groups, DropBlock ramp, mixup + label smoothing."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitattn
from splitattn.data.augment import create_mixup
from splitattn.engine.schedule import (
    WarmupSchedule,
    create_lr_scheduler,
    create_optimizer,
    drop_block_prob_at,
    param_groups_weight_decay,
)
from splitattn.layers import DropBlock2d


def warmup_cosine_lr(step: int, peak: float, total: int, warm: int, min_lr: float = 0.0) -> float:
    return peak * WarmupSchedule("cosine", total, warm, min_factor=min_lr / peak)(step)


def test_warmup_is_linear_from_zero():
    peak, total, warm = 3.2, 1000, 50
    assert warmup_cosine_lr(0, peak, total, warm) == 0.0
    assert warmup_cosine_lr(25, peak, total, warm) == pytest.approx(1.6)
    assert warmup_cosine_lr(49, peak, total, warm) == pytest.approx(peak * 49 / 50)


def test_cosine_after_warmup():
    peak, total, warm = 3.2, 1000, 50
    assert warmup_cosine_lr(50, peak, total, warm) == pytest.approx(peak)
    mid = warm + (total - warm) // 2
    assert warmup_cosine_lr(mid, peak, total, warm) == pytest.approx(peak / 2, rel=1e-3)
    quarter = warm + (total - warm) // 4
    assert warmup_cosine_lr(quarter, peak, total, warm) == pytest.approx(
        peak * 0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-3)
    assert warmup_cosine_lr(total, peak, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_lr(total, peak, total, warm, min_lr=0.01) == pytest.approx(0.01)
    lrs = [warmup_cosine_lr(s, peak, total, warm) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_multistep_and_poly_with_detectron2_warmup():
    steps = WarmupSchedule("multistep", 100, warmup_steps=10, warmup_factor=0.001, milestones=[60, 80])
    assert steps(0) == pytest.approx(0.001)
    assert steps(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [steps(i) for i in (10, 59, 60, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    poly = WarmupSchedule("poly", 100, power=0.9)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.5**0.9) and poly(100) == 0.0


def test_scheduler_sets_optimizer_lr_every_iteration_and_resumes():
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = create_lr_scheduler(opt, WarmupSchedule("cosine", total_steps=20, warmup_steps=4))
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, warmup_cosine_lr(5, 0.4, 20, 4)])
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)  # plain numbers: loads with weights_only=True
    buf.seek(0)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(2, 2))], lr=0.4)
    other = create_lr_scheduler(opt2, WarmupSchedule("cosine", total_steps=20, warmup_steps=4))
    other.load_state_dict(torch.load(buf, weights_only=True))
    opt2.load_state_dict(opt.state_dict())  # the LR in force is the optimizer's state, as on resume
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    opt2.step()
    other.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_weight_decay_skips_norm_and_bias():
    model = splitattn.create_model("resnest14d", num_classes=5, stem_width=8, base_width=8)
    groups = param_groups_weight_decay(model, 1e-4)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            assert id(mod.weight) in decay, name
            if mod.bias is not None:
                assert id(mod.bias) in no_decay, name
        elif isinstance(mod, nn.BatchNorm2d):
            assert id(mod.weight) in no_decay and id(mod.bias) in no_decay, name
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = create_optimizer(model, lr=0.1)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_drop_block_ramp_reaches_final_prob_on_layers_3_4():
    total = 101
    assert drop_block_prob_at(0, total, 0.1) == 0.0
    assert drop_block_prob_at(50, total, 0.1) == pytest.approx(0.05)
    assert drop_block_prob_at(100, total, 0.1) == pytest.approx(0.1)
    assert drop_block_prob_at(500, total, 0.1) == pytest.approx(0.1)
    model = splitattn.create_model("resnest14d", num_classes=5, stem_width=8, base_width=8,
                                   drop_block_rate=0.1)
    n = splitattn.set_drop_block_prob(model, drop_block_prob_at(50, total, 0.1))
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, DropBlock2d)]
    assert n == len(blocks) > 0
    assert all(name.startswith(("layer3", "layer4")) for name, _ in blocks)
    assert all(m.drop_prob == pytest.approx(0.05) for _, m in blocks)


def test_mixup_soft_targets_and_label_smoothing():
    torch.manual_seed(0)
    k = 4
    x = torch.arange(8 * 3 * 2 * 2, dtype=torch.float32).view(8, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixup = create_mixup(0.2, k)
    xm, t = mixup(x, y)
    assert t.shape == (8, k)
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    # torchvision's MixUp pairs each sample with its neighbour (batch rolled by one) with one lambda.
    lam = t[0, 0].item()
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(t, lam * F.one_hot(y, k).float() + (1 - lam) * F.one_hot(y.roll(1), k).float())
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.roll(1, 0))
    assert create_mixup(0.0, k) is None

    # label smoothing 0.1 on the soft target: t * 0.9 + 0.1 / K
    logits = torch.randn(8, k)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, t)
    smoothed = t * 0.9 + 0.1 / k
    manual = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss, manual)
    hard = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    manual_hard = -((F.one_hot(y, k) * 0.9 + 0.1 / k) * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(hard, manual_hard)
