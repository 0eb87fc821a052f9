"""Where the INT8 and bf16-compiled programs spend their time, per op class (``torch.profiler``, CPU).

For each model (default: splitattn resnest50 and, for comparison, torchvision resnet50; 224 px, random
weights, eval) and program, built by the bench's own builders (:func:`harness.make_runner`):

- ``int8``: the ``+int8`` row, :func:`splitattn.deploy.quantization` compiled (inductor with freezing);
- ``bf16``: the ``+bf16-compile`` row, ``optimize_for_inference(dtype=torch.bfloat16)`` (splitattn) or a
  bf16 model (torchvision) through :func:`splitattn.compile_for_inference` (inductor with freezing);

and each batch size, the program is compiled and warmed up, timed without the profiler, then profiled for
``--steps`` steps. Inductor's kernel profiling (``torch._inductor.config.cpp.enable_kernel_profile``) makes
each generated C++ kernel a profiler event named after the ops it fuses (``cpp_fused_<aten ops>_<n>``,
inductor's ``descriptive_names="original_aten"``); the oneDNN convolutions are extern kernels
(``onednn::qconv_pointwise``, ``mkldnn::_convolution_pointwise``...). Each event's self time goes to the
class of the event itself or, if it has none (``aten::empty`` inside a convolution...), of its nearest
classified ancestor, else to ``other`` (the Python wrapper's own time included). The rules are the one table
:data:`RULES` (:func:`classify`). Prints, per model, program and batch: ms/step (wall, without and with the
profiler), ms and % per class, the non-convolution share and the top kernels, and the GMAC/s of the step
and of its convolutions alone (:func:`rates`; with ``--roofs FILE``, a ``cpu_peak.py`` result, their
fractions of the format's roof: the convolutions' fraction bounds the step's); ``--out`` writes JSON.

    python benchmarks/cpu_peak.py --out roofs_<cpu>.json
    python benchmarks/profile_ops.py --batch-sizes 8 1 --roofs roofs_<cpu>.json --out profile_ops_<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from harness import BenchConfig, build_model, make_runner, parse_spec
from roofs import load_roofs
from splitattn.deploy.cpu_features import cpu_description, cpu_flags
from splitattn.utils.fileio import atomic_write_text

CLASSES = ("conv", "attn_tail", "quant", "other")
PROGRAMS = {"int8": "int8", "bf16": "bf16-compile"}  # program -> the bench's row variant
DEFAULT_MODELS = ("splitattn:resnest50", "tv:resnet50")

# The classification, first match wins. ``op``: a regex on a profiler event name (aten / oneDNN / mkldnn
# ops). ``fused``: op names among those of an inductor kernel ``cpp_fused_<ops>_<n>`` (matched as whole
# ``_``-separated names). ``quant`` kernels are those whose ops are only (de)quantize and data movement.
# Known blur: names cannot tell which pooling is which, so the network's final global pool (one small kernel
# per step, ``mean``) counts as attn_tail in both models. The attention MLP (fc1/fc2) is told apart by its
# input shapes (:data:`ATTENTION_MLP_CONV`), which the profile records.
RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # oneDNN INT8 conv / linear, mkldnn (bf16/fp32) conv and linear, eager convs and linears (the classifier
    # fc counts as a conv: a GEMM like them).
    ("conv", "op", (r"qconv", r"qlinear", r"convolution", r"_linear_pointwise", r"^aten::(addmm|mm|linear)$",
                    r"^aten::(conv\w*|_convolution)$")),
    ("quant", "op", (r"quantize_per_", r"dequantize", r"^aten::(q_scale|q_zero_point|int_repr)$")),
    ("attn_tail", "op", (r"softmax", r"adaptive_avg_pool", r"^aten::(mean|sum|sigmoid|addcmul|mul)$")),
    # Split-Attention tail inside inductor kernels: pooling (sum / mean over H, W, then the radix sum and
    # the division), r-softmax (softmax, or amax / exp / div once decomposed; exp / logsumexp in compiled
    # inference), sigmoid (radix 1), weighted sum (mul + addcmul at radix 2, mul + sum otherwise).
    ("attn_tail", "fused", ("sum", "mean", "adaptive_avg_pool2d", "_softmax", "softmax", "amax", "exp",
                            "logsumexp", "sigmoid", "addcmul", "mul", "div")),
)
# Ops that only move or (de)quantize data: a kernel of these alone is a quant kernel.
QUANT_OPS = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel",
             "quantize", "dequantize")
MOVE_OPS = ("clone", "copy", "_to_copy", "convert_element_type", "view", "permute", "expand", "round",
            "clamp", "clamp_min", "clamp_max")
# Events of dynamo / AOT / inductor's Python wrapper: their self time (in ``other``) is the glue between
# kernels, reported apart as ``other_wrapper_ms``.
WRAPPER = re.compile(r"^## Call CompiledFxGraph|^Torch-Compiled Region|^TorchDynamo|^AOTDispatcher|^Pregraph")
_FUSED = re.compile(r"cpp_fused_(?P<ops>\w+?)(?:_\d+)?$")


def fused_ops(name: str) -> str | None:
    """The ``_``-joined op names of an inductor kernel event (``graph_0_cpp_fused_add_relu_3`` ->
    ``"add_relu"``), or ``None`` for other events."""
    m = _FUSED.search(name)
    return m.group("ops") if m else None


def _has(ops: str, op: str) -> bool:
    return re.search(rf"(?:^|_){re.escape(op)}(?:_|$)", ops) is not None


def _only(ops: str, allowed: tuple[str, ...]) -> bool:
    rest = f"_{ops}_"
    for op in sorted(allowed, key=len, reverse=True):  # longest first: dequantize_per_tensor before quantize
        rest = re.sub(rf"_{re.escape(op)}(?=_)", "", rest)
    return rest.strip("_") == ""


# The Split-Attention MLP (fc1 / fc2 on the pooled vector), part of the tail in the classes: a
# convolution (ATTENTION_MLP_CONV) of a (B, C, 1, 1) input, or a linear (ATTENTION_MLP_LINEARS: splitattn runs
# the MLP as a GEMM: an fp32 MKL linear in the INT8 programs, a bf16 one in the optimized models) whose input
# is narrower than the classifier's (the head width, which profile_program reads off the model). Without a
# head width, only the MKL linear counts: the INT8 programs' classifier is a oneDNN qlinear.
ATTENTION_MLP_CONV = re.compile(r"qconv|convolution|conv2d")  # conv2d: eager ATen (thnn, _slow_conv2d)
ATTENTION_MLP_LINEAR = "mkl::_mkl_linear"
ATTENTION_MLP_LINEARS = re.compile(
    r"^(mkl::_mkl_linear|mkldnn::_linear_pointwise|onednn::qlinear_pointwise|aten::(addmm|mm|linear))$")


def _pooled_input(shapes: Any) -> bool:
    first = shapes[0] if shapes else None
    return isinstance(first, (list, tuple)) and len(first) == 4 and tuple(first[2:]) == (1, 1)


def _input_width(shapes: Any) -> int | None:
    """The last dim of a linear's first 2-D input (``addmm``'s first input is its bias)."""
    for s in shapes or ():
        if isinstance(s, (list, tuple)) and len(s) == 2:
            return int(s[1])
    return None


def _attention_mlp(name: str, shapes: Any, head_width: int | None) -> bool:
    if ATTENTION_MLP_CONV.search(name) and _pooled_input(shapes):
        return True
    if head_width is None or not ATTENTION_MLP_LINEARS.match(name):
        return name == ATTENTION_MLP_LINEAR
    width = _input_width(shapes)
    return width is not None and width != head_width


def classify(name: str, shapes: Any = None, head_width: int | None = None) -> str | None:
    """The op class of one profiler event name (see :data:`RULES`), or ``None`` when no rule applies (the
    caller then uses the nearest classified ancestor's class, else ``"other"``). ``shapes``: the event's
    input shapes, which tell the attention MLP (:data:`ATTENTION_MLP_CONV`, :data:`ATTENTION_MLP_LINEARS`)
    from the other convolutions and the classifier, whose input width is ``head_width``."""
    if _attention_mlp(name, shapes, head_width):
        return "attn_tail"
    if head_width is not None and ATTENTION_MLP_LINEARS.match(name):
        return "conv"  # the classifier, a GEMM like the convolutions
    ops = fused_ops(name)
    if ops is not None:
        if any(_has(ops, q) for q in QUANT_OPS) and _only(ops, QUANT_OPS + MOVE_OPS):
            return "quant"
        for cls, kind, names in RULES:
            if kind == "fused" and any(_has(ops, op) for op in names):
                return cls
        return "other"
    for cls, kind, patterns in RULES:
        if kind == "op" and any(re.search(p, name) for p in patterns):
            return cls
    return None


def attribute(events: list[Any], head_width: int | None = None,
              ) -> tuple[dict[str, float], dict[str, tuple[str, float, int]]]:
    """``(self us per class, {event name: (class, self us, calls)})`` of profiler ``FunctionEvent`` s; an
    event without a class of its own takes its nearest classified ancestor's. ``head_width``: the
    classifier's input width (see :func:`classify`)."""
    per_class: dict[str, float] = defaultdict(float)
    kernels: dict[str, list[Any]] = {}
    for ev in events:
        own = classify(ev.name, getattr(ev, "input_shapes", None), head_width)
        cls, node = own, ev.cpu_parent
        while node is not None and cls is None:
            cls = classify(node.name, getattr(node, "input_shapes", None), head_width)
            node = node.cpu_parent
        cls = cls or "other"
        per_class[cls] += ev.self_cpu_time_total
        # The attention MLP's convs and linears share their names with others (told apart by shape or
        # width): listed apart.
        told_apart = own == "attn_tail" and classify(ev.name) != "attn_tail"
        name = f"{ev.name} (attention MLP)" if told_apart else ev.name
        k = kernels.setdefault(name, [cls, 0.0, 0])
        k[1] += ev.self_cpu_time_total
        k[2] += 1
    return dict(per_class), {n: (c, t, k) for n, (c, t, k) in kernels.items()}


def summarize(per_class: dict[str, float], kernels: dict[str, tuple[str, float, int]], steps: int,
              top: int = 10) -> dict[str, Any]:
    """ms per step and % per class, the non-conv share and the ``top`` kernels by self time."""
    total = sum(per_class.values()) or 1.0
    classes = {c: dict(ms=round(per_class.get(c, 0.0) / 1e3 / steps, 2),
                       pct=round(100 * per_class.get(c, 0.0) / total, 1)) for c in CLASSES}
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    wrapper = sum(t for n, (_, t, _) in kernels.items() if WRAPPER.search(n))
    return dict(profiled_ms_per_step=round(total / 1e3 / steps, 2), classes=classes,
                non_conv_pct=round(100 - classes["conv"]["pct"], 1),
                other_wrapper_ms=round(wrapper / 1e3 / steps, 2),
                top_kernels=[dict(name=n, cls=c, ms=round(t / 1e3 / steps, 2), pct=round(100 * t / total, 1),
                                  calls_per_step=k / steps) for n, (c, t, k) in ranked[:top]],
                kernels={n: dict(cls=c, ms=round(t / 1e3 / steps, 3)) for n, (c, t, _) in ranked})


def rates(gmacs: float | None, batch: int, wall_ms: float, conv_share: float,
          roof: float | None = None) -> dict[str, float | None]:
    """GMAC/s of the step and of its convolutions alone, and their fractions of ``roof`` (GMAC/s).

    The convolutions' rate (the model's MACs over the ``conv`` class's share of the step) is the most the
    step could reach if everything else took no time: a bound that only faster convolution kernels raise.
    The share comes from the profiled steps and is applied to the unprofiled step time, so that a profiled
    step slower than the others (the profiler's own start) does not lower the bound below the step's rate.

    Args:
        gmacs: multiply-adds per image, in billions (``None``: not counted).
        batch: images per step.
        wall_ms: ms per step, unprofiled.
        conv_share: the ``conv`` class's fraction of the profiled time, 0 to 1.
        roof: the GEMM roof of the program's format (``None``: not measured).

    Returns:
        ``gmac_per_s``, ``conv_gmac_per_s``, ``roof_fraction``, ``conv_roof_fraction`` (``None`` where
        an input is missing).
    """
    def per_s(ms: float) -> float | None:
        return round(gmacs * batch / ms * 1e3, 1) if gmacs and ms > 0 else None

    def of_roof(rate: float | None) -> float | None:
        return round(rate / roof, 3) if rate is not None and roof else None

    step, convs = per_s(wall_ms), per_s(wall_ms * conv_share)
    return dict(gmac_per_s=step, conv_gmac_per_s=convs, roof_fraction=of_roof(step),
                conv_roof_fraction=of_roof(convs))


def profile_sides(sides: dict[str, Callable[[], Any]], steps: int, passes: int = 2,
                  head_width: int | None = None) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """name -> (ms per call by op class, ms per call by kernel family) of profiled self time, the sides
    profiled in alternation, ``passes`` times each (a kernel family: an inductor kernel's fused op names,
    its number dropped; other events by name). ``head_width``: as :func:`attribute`'s (input shapes are
    then recorded: the attention MLP's linears are told from the classifier by them)."""
    totals: dict[str, tuple[dict[str, float], dict[str, float]]] = {n: ({}, {}) for n in sides}
    names = list(sides)
    for p in range(passes):
        for name in (names if p % 2 == 0 else names[::-1]):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                        record_shapes=head_width is not None) as prof:
                for _ in range(steps):
                    sides[name]()
            per_class, kernels = attribute(list(prof.events()), head_width)
            by_class, by_kernel = totals[name]
            for cls, us in per_class.items():
                by_class[cls] = by_class.get(cls, 0.0) + us / 1e3 / steps / passes
            for kernel, (_, us, _) in kernels.items():
                family = fused_ops(kernel) or kernel
                by_kernel[family] = by_kernel.get(family, 0.0) + us / 1e3 / steps / passes
    return totals


def print_sides(profiles: dict[str, tuple[dict[str, float], dict[str, float]]], top: int = 12) -> None:
    """Print :func:`profile_sides`' result: each side's ms per call by class, then its ``top`` kernels."""
    for name, (by_class, by_kernel) in profiles.items():
        print(f"{name}, profiled ms per batch: " + ", ".join(
            f"{c} {by_class.get(c, 0.0):.2f}" for c in CLASSES))
        for kernel, ms in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {ms:8.3f}  {kernel[:140]}")


def head_width(model: torch.nn.Module) -> int | None:
    """The input width of ``model``'s classifier (timm's ``get_classifier()``, torchvision's ``fc``)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    return getattr(head, "in_features", None)


def _step_times(fn: Any, steps: int) -> list[float]:
    """ms of each of ``steps`` calls of ``fn`` (all kept: other work on the machine shows as outliers)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(round((time.perf_counter() - t0) * 1e3, 2))
    return times


def profile_program(model: str, program: str, batch: int, args: argparse.Namespace,
                    width: int | None = None, roof: float | None = None) -> dict[str, Any]:
    """Build, compile, time and profile one program at one batch size (``width``: :func:`head_width`;
    ``roof``: the GEMM roof of the program's format in GMAC/s, for :func:`rates`)."""
    cfg = BenchConfig(models=[model], mode="infer", device="cpu", batch_size=batch, img_size=args.img_size,
                      channels_last=args.channels_last, threads=args.threads)
    t0 = time.perf_counter()
    runner = make_runner(f"{model}+{PROGRAMS[program]}", cfg, ["infer"])
    fn = runner.infer
    assert fn is not None
    for _ in range(args.warmup):  # the first call compiles
        fn()
    build_s = time.perf_counter() - t0
    wall = _step_times(fn, args.steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        wall_prof = _step_times(fn, args.steps)
    per_class, kernels = attribute(list(prof.events()), width)
    extra: dict[str, Any] = {}
    if args.shapes:  # the slowest (op, input shapes) pairs: which convolutions or tail kernels cost most
        rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        extra["top_by_shape"] = [dict(name=e.key, shapes=str(e.input_shapes), calls=e.count / args.steps,
                                      ms=round(e.self_cpu_time_total / 1e3 / args.steps, 2))
                                 for e in rows[:15]]
    summary = summarize(per_class, kernels, args.steps)
    step_ms = statistics.median(wall)
    return dict(model=model, program=program, batch=batch, steps=args.steps,
                build_and_warmup_s=round(build_s, 1),
                wall_ms_per_step=round(step_ms, 2), wall_ms_steps=wall,
                wall_ms_steps_profiled=wall_prof, img_per_s=round(batch * 1e3 / step_ms, 2),
                gmacs=runner.gmacs and round(runner.gmacs, 3),
                **rates(runner.gmacs, batch, step_ms, summary["classes"]["conv"]["pct"] / 100, roof),
                **summary, **extra)


def print_result(r: dict[str, Any]) -> None:
    """One program's figures as a few readable lines."""
    cls = "  ".join(f"{c} {v['ms']} ms ({v['pct']}%)" for c, v in r["classes"].items())
    print(f"\n{r['model']} {r['program']} b{r['batch']}: {r['wall_ms_per_step']} ms/step wall "
          f"({r['img_per_s']} img/s; steps {r['wall_ms_steps']} ms, profiled "
          f"{r['wall_ms_steps_profiled']} ms), "
          f"{r['profiled_ms_per_step']} ms/step of profiled op time; non-conv "
          f"{r['non_conv_pct']}%\n  {cls} (of which wrapper {r['other_wrapper_ms']} ms)")
    if r.get("conv_gmac_per_s") is not None:
        def of_roof(key: str) -> str:
            return f" ({r[key]} of the roof)" if r.get(key) is not None else ""

        print(f"  {r['gmac_per_s']} GMAC/s{of_roof('roof_fraction')}; the convolutions alone "
              f"{r['conv_gmac_per_s']} GMAC/s{of_roof('conv_roof_fraction')}")
    for k in r["top_kernels"]:
        print(f"    {k['ms']:9.2f} ms {k['pct']:5.1f}%  {k['cls']:9s} x{k['calls_per_step']:g}  {k['name']}")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="bench model specs")
    p.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 1])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=BenchConfig().threads)
    p.add_argument("--channels-last", action="store_true", help="bf16 program in channels_last (as @cl)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (the first compiles)")
    p.add_argument("--steps", type=int, default=2, help="timed, then profiled, steps")
    p.add_argument("--shapes", action="store_true", help="also the top ops by input shapes (JSON only)")
    p.add_argument("--roofs", default=None, metavar="FILE",
                   help="a cpu_peak.py result: adds each program's fractions of its format's roof")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args()
    roofs = load_roofs(args.roofs, threads=args.threads) if args.roofs else {}
    import torch._inductor.config as inductor_config

    # Each generated C++ kernel becomes a profiler event (must be set before the programs compile).
    inductor_config.cpp.enable_kernel_profile = True
    torch.set_num_threads(args.threads)
    flags = sorted(f for f in cpu_flags() if f == "avx2" or f.startswith(("avx512", "amx", "avx_vnni")))
    command = shlex.join([sys.executable, *sys.argv])
    print(f"{cpu_description()}\nflags: {' '.join(flags) or 'none'}\ntorch {torch.__version__}, "
          f"{args.threads} threads\n{command}")
    results = []
    for model in args.models:
        width = head_width(build_model(parse_spec(model)[0]))
        for program in args.programs:
            for batch in args.batch_sizes:
                results.append(profile_program(model, program, batch, args, width, roofs.get(program)))
                print_result(results[-1])
                if args.out:  # after each program: a long run keeps what it has measured
                    atomic_write_text(args.out, json.dumps(dict(
                        cpu=cpu_description(), flags=flags, torch=torch.__version__, threads=args.threads,
                        command=command, roofs=roofs or None, results=results), indent=2) + "\n")


if __name__ == "__main__":
    main()
