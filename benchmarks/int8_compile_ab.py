"""A/B of how the INT8 program compiles, one model quantized once per side, timed in paired, interleaved
rounds in one process (alternating order). Prints the CPU, threads, torch, each side's first call (the
compile), the largest logit difference between the sides, the median ms per batch of each side and the
median of the paired ratios.

``--ab wrapper``: inductor's Python wrapper against its C++ wrapper
(``splitattn.deploy.compiled.INDUCTOR_OPTIONS["cpp_wrapper"]``).
``--ab templates``: the linears as MKL / oneDNN calls (the library's program) against inductor's C++ GEMM
templates (:func:`gemm_templates`: the attention MLP's bias and ReLU in the GEMM's epilogue, no library call
per GEMM; measured and not adopted, benchmarks/RESULTS.md).
``--ab scales``: the converted graph compiled as it is against the same with the dequantize / quantize scales
of its float tails folded into the attention weights (:func:`splitattn.deploy.int8_program.fold_int8_scales`;
neither side with the MLP rewrite).
``--ab mlp``: the attention MLP as MKL linears (scales folded) against the library's program, which also
writes it as reductions that inductor fuses (:func:`splitattn.deploy.int8_program.linears_as_reductions`).
``--ab calls``: three ways of calling the same INT8 program (one quantized model): compiled by
``torch.compile`` (dynamo's guards at every call) and called inside inductor's config patch (freezing and the
other ``INDUCTOR_OPTIONS``, :func:`~splitattn.deploy.int8_fusion.fast_int8_loads`), as ``QuantizedModel`` did
before; the same with the patch on the compiling call only; and the library's call (inductor's compiled
function, without dynamo). Each side is compared with the last.

``--profile N``: after the timing, ``torch.profiler`` over N calls of each side, sides alternating, twice
each; prints ms per batch of profiled self time by :mod:`profile_ops`' classes and by kernel (inductor
names its kernels in the profile: both sides compile with ``cpp.enable_kernel_profile``).

    python benchmarks/int8_compile_ab.py --ab wrapper --batch-size 1 --threads 2 --rounds 8
    python benchmarks/int8_compile_ab.py --ab scales --batch-size 8 --rounds 10 --steps 2 --profile 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any
from unittest import mock

import torch

import splitattn
from paired import add_ab_arguments, median_ratio, start_ab, time_paired
from profile_ops import print_sides, profile_sides
from splitattn.deploy import compiled, quantization
from splitattn.deploy.cpu_features import cpu_description
from splitattn.deploy.int8_fusion import fast_int8_loads
from splitattn.deploy.int8_program import fold_int8_scales, program_graph


@contextlib.contextmanager
def gemm_templates() -> Iterator[None]:
    """While inductor compiles inside this context, each linear with a constant weight that its C++ GEMM
    template covers runs as that template (max-autotune's ``CPP`` backend) instead of an MKL or oneDNN
    call, with one candidate, so that nothing is timed; INT8 linears only where inductor has an INT8
    micro-kernel for this CPU (AVX512-VNNI or AMX: elsewhere it has a scalar reference kernel, several
    times slower than oneDNN's). A patch of inductor's private lowerings (torch 2.14)."""
    import torch._inductor.config as inductor_config
    from torch._inductor import cpu_vec_isa
    from torch._inductor import mkldnn_lowerings as lowerings

    uses_template, uses_aten = lowerings.use_cpp_gemm_template, lowerings.use_aten_gemm_kernels
    int8_kernel = isinstance(cpu_vec_isa.pick_vec_isa(), cpu_vec_isa.VecAVX512VNNI)

    def use_template(layout: Any, mat1: Any, mat2: Any, *args: Any, **kwargs: Any) -> bool:
        if mat1.get_dtype() in (torch.uint8, torch.int8) and not int8_kernel:
            return False
        return uses_template(layout, mat1, mat2, *args, **kwargs)

    # These lowerings fall back to the library call where no template applies; ATen stays among the
    # backends of every other GEMM (a CPP-only list fails to lower a GEMM no template covers).
    lowerings.use_cpp_gemm_template, lowerings.use_aten_gemm_kernels = use_template, lambda: False
    try:
        with inductor_config.patch(max_autotune_gemm=True, max_autotune_gemm_backends="CPP,ATEN"):
            yield
    finally:
        lowerings.use_cpp_gemm_template, lowerings.use_aten_gemm_kernels = uses_template, uses_aten


def _wrapper(cpp: bool) -> ContextManager[Any]:
    return mock.patch.dict(compiled.INDUCTOR_OPTIONS, cpp_wrapper=cpp)


def _templates(on: bool) -> ContextManager[Any]:
    return gemm_templates() if on else contextlib.nullcontext()


def _call_paths(program: Any, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """``--ab calls``: the program of ``program`` (a compiled ``QuantizedModel``) called three ways."""
    import torch._inductor.config as inductor_config

    def patched() -> ContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(inductor_config.patch(compiled.INDUCTOR_OPTIONS))
        stack.enter_context(fast_int8_loads())
        return stack

    dynamo = torch.compile(program_graph(program.graph_module)[0], dynamic=False)
    with torch.no_grad(), patched():
        dynamo(x)  # compiles

    def per_call() -> Any:
        with torch.no_grad(), patched():
            return dynamo(x)

    def on_compile() -> Any:
        with torch.no_grad():
            return dynamo(x)

    return {"dynamo, config patched per call": per_call, "dynamo, config patched on compile": on_compile,
            "inductor without dynamo": lambda: program(x)}


def _program(**rewrites: Callable[[torch.fx.GraphModule], int]) -> ContextManager[Any]:
    """The INT8 program compiled from the converted graph with only ``rewrites`` applied."""
    return mock.patch.object(quantization, "program_graph", lambda graph: program_graph(graph, rewrites))


# --ab -> ((side name, context of the side's compile and calls), ...): the first side is the base
SIDES: dict[str, tuple[tuple[str, Callable[[], ContextManager[Any]]], ...]] = {
    "wrapper": (("python wrapper", lambda: _wrapper(False)), ("C++ wrapper", lambda: _wrapper(True))),
    "templates": (("library GEMMs", lambda: _templates(False)), ("GEMM templates", lambda: _templates(True))),
    "scales": (("scales as converted", lambda: _program()),
               ("scales folded", lambda: _program(scales=fold_int8_scales))),
    "mlp": (("MLP as MKL linears", lambda: _program(scales=fold_int8_scales)),
            ("MLP as reductions", contextlib.nullcontext)),
    "calls": (("library", contextlib.nullcontext),),  # one program, called three ways: _call_paths
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ab", choices=sorted(SIDES), default="wrapper")
    p.add_argument("--model", default="resnest50")
    add_ab_arguments(p, rounds=8)
    args = p.parse_args()
    start_ab(args)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, {args.model} INT8, "
          f"batch {args.batch_size}, {args.img_size} px, A/B: {args.ab}")
    torch.manual_seed(0)
    model = splitattn.create_model(args.model).eval().to(memory_format=torch.channels_last)
    shape = (3, args.img_size, args.img_size)
    calibration = [torch.randn(4, *shape).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    x = torch.randn(args.batch_size, *shape).contiguous(memory_format=torch.channels_last)

    def call(program: Any, context: Callable[[], ContextManager[Any]]) -> Callable[[], Any]:
        def run() -> Any:
            with context(), torch.no_grad():
                return program(x)
        return run

    sides = {}
    for name, context in SIDES[args.ab]:
        torch._dynamo.reset()
        with context(), torch.no_grad():
            program = splitattn.quantize(model, calibration, compile=True)
            t = time.perf_counter()
            program(x)
            print(f"{name}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
        sides[name] = call(program, context)
    if args.ab == "calls":
        sides = _call_paths(program, x)
    logits = {name: run() for name, run in sides.items()}
    base_logits, last = next(iter(logits.values())), list(sides)[-1]
    print(f"max |logit difference| {max((v - base_logits).abs().max().item() for v in logits.values()):.3g} "
          f"(max |logit| {base_logits.abs().max().item():.3g})")
    ms = time_paired(sides, args.rounds, args.steps)
    for name, v in ms.items():
        print(f"{name}: median {statistics.median(v):.2f} ms per batch ({args.rounds} rounds)")
    for name in list(sides)[:-1]:
        print(f"{name} / {last} time, median of paired rounds: {median_ratio(ms[last], ms[name]):.3f}")
    if args.profile:
        print_sides(profile_sides(sides, args.profile))


if __name__ == "__main__":
    main()
