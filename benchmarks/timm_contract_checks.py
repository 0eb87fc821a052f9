"""timm's model contract, adapted from timm's tests/test_models.py, on splitattn and on timm itself.

Runs each check on ``splitattn.create_model(NAME)`` and on ``timm.create_model(NAME)`` (default NAME
``resnest50d``: timm's name, which splitattn resolves to its ``resnest50``) and prints a pass/fail table.
A check that raises is reported as failed with the exception's type, so the script runs on any version
of splitattn (e.g. ``PYTHONPATH=/path/to/old/src python benchmarks/timm_contract_checks.py``).

Usage: ``python benchmarks/timm_contract_checks.py [--name resnest50d] [--json OUT.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import timm.data
import timm.models
import timm.optim
import torch
from torch import nn

# timm's tests/test_models.py sizes
TARGET_BWD_SIZE = TARGET_JIT_SIZE = TARGET_FWD_FX_SIZE = 128
TARGET_FFEAT_SIZE = 96

Make = Callable[..., nn.Module]
CHECKS: list[tuple[str, str, Callable[[Make], None]]] = []


def check(name: str, origin: str) -> Callable[[Callable[[Make], None]], Callable[[Make], None]]:
    """Register a check: ``fn(make)`` raises (an AssertionError or any other) when it fails."""
    def register(fn: Callable[[Make], None]) -> Callable[[Make], None]:
        CHECKS.append((name, origin, fn))
        return fn
    return register


def _cfg(model: nn.Module) -> Any:
    return model.default_cfg


def _x(size: int | tuple[int, ...], batch: int = 1) -> torch.Tensor:
    shape = (3, size, size) if isinstance(size, int) else tuple(size)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


@check("default_cfg is a dict with input_size, pool_size", "test_model_default_cfgs")
def _default_cfg(make: Make) -> None:
    m = make()
    cfg = _cfg(m)
    assert cfg["input_size"][-1] > 0 and cfg["pool_size"] is not None and cfg == m.pretrained_cfg


@check("pretrained_cfg accepted by timm's PretrainedCfg", "timm.models._pretrained")
def _pretrained_cfg(make: Make) -> None:
    timm.models.PretrainedCfg(**make().pretrained_cfg)


@check("num_classes, num_features, head_hidden_size", "test_model_default_cfgs")
def _attrs(make: Make) -> None:
    m = make()
    assert m.num_classes >= 0 and m.num_features > 0 and m.head_hidden_size > 0


@check("forward_features at input_size gives pool_size", "test_model_default_cfgs")
def _forward_features(make: Make) -> None:
    m = make().eval()
    cfg = _cfg(m)
    with torch.no_grad():
        out = m.forward_features(_x(cfg["input_size"]))
    assert out.shape[2:] == tuple(cfg["pool_size"]) and out.shape[1] == m.num_features


@check("forward_head(pre_logits) has head_hidden_size", "test_model_default_cfgs")
def _pre_logits(make: Make) -> None:
    m = make().eval()
    with torch.no_grad():
        pre = m.forward_head(m.forward_features(_x(_cfg(m)["input_size"])), pre_logits=True)
    assert pre.shape[1] == m.head_hidden_size


@check("reset_classifier(0): pooled head_hidden_size", "test_model_default_cfgs")
def _reset0(make: Make) -> None:
    m = make().eval()
    m.reset_classifier(0)
    with torch.no_grad():
        out = m(_x(_cfg(m)["input_size"]))
    assert m.num_classes == 0 and out.shape == (1, m.head_hidden_size)


@check("reset_classifier(0, ''): unpooled at pool_size", "test_model_default_cfgs")
def _reset_nopool(make: Make) -> None:
    m = make().eval()
    m.reset_classifier(0, "")
    cfg = _cfg(m)
    with torch.no_grad():
        out = m(_x(cfg["input_size"]))
    assert out.ndim == 4 and out.shape[2:] == tuple(cfg["pool_size"])


@check("create(num_classes=0, global_pool=''): unpooled", "test_model_default_cfgs")
def _create_nopool(make: Make) -> None:
    m = make(num_classes=0, global_pool="").eval()
    cfg = _cfg(m)
    with torch.no_grad():
        out = m(_x(cfg["input_size"]))
    assert out.ndim == 4 and out.shape[2:] == tuple(cfg["pool_size"])


@check("cfg classifier / first_conv name parameters", "test_model_default_cfgs")
def _cfg_names(make: Make) -> None:
    m = make()
    cfg, state = _cfg(m), m.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state


@check("backward: every parameter gets a gradient", "test_model_backward")
def _backward(make: Make) -> None:
    m = make(num_classes=42).train()
    out = m(_x(TARGET_BWD_SIZE, 2))
    out.mean().backward()
    assert out.shape[-1] == 42 and all(p.grad is not None for p in m.parameters())


@check("set_grad_checkpointing keeps the output", "test_model_forward")
def _grad_ckpt(make: Make) -> None:
    m = make().eval()
    x = _x(TARGET_BWD_SIZE)
    with torch.no_grad():
        ref = m(x)
        m.set_grad_checkpointing()
        assert torch.allclose(m(x), ref, rtol=1e-4, atol=1e-5)


@check("torch.jit.script forward", "test_model_forward_torchscript")
def _script(make: Make) -> None:
    with timm.layers.set_layer_config(scriptable=True):
        m = torch.jit.script(make().eval())
    with torch.no_grad():
        assert m(_x(TARGET_JIT_SIZE)).shape[0] == 1


@check("torch.fx feature extractor equals forward", "test_model_forward_fx")
def _fx(make: Make) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    m = make().eval()
    kw = dict(leaf_modules=timm.models.get_notrace_modules(),
              autowrap_functions=timm.models.get_notrace_functions())
    nodes = get_graph_node_names(m, tracer_kwargs=kw)[1]
    fx = create_feature_extractor(m, return_nodes=[nodes[-1]], tracer_kwargs=kw)
    x = _x(TARGET_FWD_FX_SIZE)
    with torch.no_grad():
        assert torch.equal(next(iter(fx(x).values())), m(x))


@check("forward_intermediates: levels of feature_info", "test_model_forward_intermediates")
def _intermediates(make: Make) -> None:
    m = make().eval()
    info = timm.models.FeatureInfo(m.feature_info, len(m.feature_info))
    x = _x(TARGET_FFEAT_SIZE)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, output_fmt="NCHW")
        assert len(inter) == len(info.channels()) >= 3
        for c, r, t in zip(info.channels(), info.reduction(), inter, strict=True):
            assert t.shape[1] == c and t.shape[-1] <= math.ceil(x.shape[-1] / r) + 1
        assert torch.allclose(final, m.forward_features(x))


@check("prune_intermediate_layers then forward_intermediates", "timm.models._features")
def _prune(make: Make) -> None:
    m = make().eval()
    kept = m.prune_intermediate_layers([1, 2])
    with torch.no_grad():
        inter = m.forward_intermediates(_x(TARGET_FFEAT_SIZE), indices=kept, intermediates_only=True)
    assert list(kept) == [1, 2] and m.num_features == m.feature_info[2]["num_chs"]
    assert [t.shape[1] for t in inter] == [m.feature_info[1]["num_chs"], m.feature_info[2]["num_chs"]]


@check("features_only: 5 levels (stem + 4), FeatureInfo", "test_model_forward_features")
def _features(make: Make) -> None:
    m = make(features_only=True).eval()
    chans, reds = m.feature_info.channels(), m.feature_info.reduction()
    with torch.no_grad():
        outs = m(_x(TARGET_FFEAT_SIZE))
    assert len(chans) == len(outs) == 5 and reds[0] == 2
    assert [o.shape[1] for o in outs] == chans


@check("features_only out_indices=(-2, -1)", "timm.models._features")
def _negative(make: Make) -> None:
    m = make(features_only=True, out_indices=(-2, -1)).eval()
    with torch.no_grad():
        outs = m(_x(TARGET_FFEAT_SIZE))
    assert [o.shape[1] for o in outs] == m.feature_info.channels() == [1024, 2048]


@check("features_only feature_cls='dict'", "timm.models._features")
def _dict(make: Make) -> None:
    m = make(features_only=True, out_indices=(1, 3), feature_cls="dict").eval()
    with torch.no_grad():
        outs = m(_x(TARGET_FFEAT_SIZE))
    assert isinstance(outs, dict) and [o.shape[1] for o in outs.values()] == m.feature_info.channels()


@check("features_only feature_cls='getter'", "test_model_forward_intermediates_features")
def _getter(make: Make) -> None:
    m = make(features_only=True, feature_cls="getter").eval()
    with torch.no_grad():
        outs = m(_x(TARGET_FFEAT_SIZE))
    assert [o.shape[1] for o in outs] == m.feature_info.channels()


@check("timm.data.resolve_data_config + create_transform", "timm.data")
def _data_config(make: Make) -> None:
    m = make()
    cfg = timm.data.resolve_data_config({}, model=m)
    assert cfg == timm.data.resolve_model_data_config(m)
    ref_cfg = timm.models.get_pretrained_cfg(ARGS.name).to_dict()
    ref = timm.data.resolve_data_config({}, pretrained_cfg=ref_cfg)
    assert cfg == ref, f"{cfg} != timm's {ref}"
    timm.data.create_transform(**cfg)


@check("create_optimizer_v2(layer_decay=0.7): groups", "timm.optim")
def _layer_decay(make: Make) -> None:
    opt = timm.optim.create_optimizer_v2(make(), "sgd", lr=0.1, layer_decay=0.7)
    assert len({round(g["lr_scale"], 6) for g in opt.param_groups}) > 2


@check("timm.models.save_for_hf writes config.json", "timm.models._hub")
def _save_for_hf(make: Make) -> None:
    with tempfile.TemporaryDirectory() as d:
        timm.models.save_for_hf(make(), d)
        assert json.loads((Path(d) / "config.json").read_text())["architecture"]


@check("reset_classifier on a bf16 model: bf16 head", "timm ResNet.reset_classifier")
def _bf16_head(make: Make) -> None:
    m = make().eval().to(torch.bfloat16)
    m.reset_classifier(10)
    with torch.no_grad():
        out = m(_x(64).to(torch.bfloat16))
    assert m.get_classifier().weight.dtype == torch.bfloat16 and out.dtype == torch.bfloat16


def run(make: Make) -> list[tuple[bool, str]]:
    """``(passed, note)`` per check, in order."""
    results = []
    for _, _, fn in CHECKS:
        torch.manual_seed(0)
        try:
            fn(make)
            results.append((True, ""))
        except Exception as e:  # noqa: BLE001 - a check fails whatever it raises
            results.append((False, f"{type(e).__name__}: {str(e).splitlines()[0][:70] if str(e) else ''}"))
    return results


def main() -> None:
    import splitattn

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script. is deprecated", category=FutureWarning)

    t0 = time.perf_counter()
    ours = run(lambda **kw: splitattn.create_model(ARGS.name, **kw))
    theirs = run(lambda **kw: timm.create_model(ARGS.name, pretrained=False, **kw))
    print(f"splitattn from {Path(splitattn.__file__).parent}, timm {timm.__version__}, torch "
          f"{torch.__version__}; model {ARGS.name!r} in both ({time.perf_counter() - t0:.0f} s)\n")
    width = max(len(n) for n, _, _ in CHECKS)
    print(f"| {'#':>2} | {'check (timm origin)':<{width}} | splitattn | timm | splitattn failure")
    print(f"|---:|{'-' * (width + 2)}|:---:|:---:|---")
    for i, ((name, origin, _), (a, note), (b, _)) in enumerate(zip(CHECKS, ours, theirs, strict=True), 1):
        verdicts = " | ".join("pass" if ok else "FAIL" for ok in (a, b))
        print(f"| {i:>2} | {name:<{width}} | {verdicts} | {note + ' ' if note else ''}[{origin}]")
    n = len(CHECKS)
    print(f"\nsplitattn {sum(a for a, _ in ours)}/{n}, timm {sum(b for b, _ in theirs)}/{n}")
    if ARGS.json:
        rows = [dict(check=c[0], origin=c[1], splitattn=a[0], timm=b[0], note=a[1])
                for c, a, b in zip(CHECKS, ours, theirs, strict=True)]
        Path(ARGS.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="resnest50d", help="a model name both libraries know")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    ARGS = parser.parse_args()
    main()
