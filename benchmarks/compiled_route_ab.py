"""A/B of the route a float model is compiled and called by, one model, paired interleaved rounds in one
process (alternating order):

- ``torch.compile``: ``torch.compile`` with inductor's freezing (patched on the compiling call only), the
  route a user takes by hand and the bench's ``+bf16-compile`` rows took before: dynamo's guards at every
  call (one per frozen weight), and inductor's layout asserts after each library call;
- ``compile_for_inference``: :func:`splitattn.compile_for_inference`, the model captured once by
  ``torch.export`` and compiled with freezing and without those asserts
  (:data:`splitattn.deploy.compiled.INDUCTOR_OPTIONS`), each batch size's program called without dynamo.

A splitattn model is ``optimize_for_inference(model, dtype=...)`` first on both sides (its attention MLP
then compiles as products and sums on both); a torchvision or timm model is cast to the dtype. Inputs are
channels_last. Prints the CPU, threads, torch, each side's first call (the compile), the largest logit
difference between the sides, the median ms per batch of each side and the median of the paired ratios.

``--ab wrapper`` compares instead ``compile_for_inference`` with inductor's C++ wrapper
(``INDUCTOR_OPTIONS["cpp_wrapper"]``) against the library's Python wrapper.

``--profile N``: after the timing, ``torch.profiler`` over N calls of each side, sides alternating, twice
each; prints ms per batch of profiled self time by :mod:`profile_ops`' classes and by kernel.

    python benchmarks/compiled_route_ab.py --model splitattn:resnest50 --dtype fp32 --batch-size 1
    python benchmarks/compiled_route_ab.py --model tv:resnet50 --dtype bf16 --batch-size 8 --rounds 6
    python benchmarks/compiled_route_ab.py --ab wrapper --dtype bf16 --batch-size 1 --rounds 12
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

from harness import build_model, compiled_program, compiled_with_freezing
from paired import add_ab_arguments, median_ratio, start_ab, time_paired
from profile_ops import print_sides, profile_sides
from splitattn.deploy import compiled
from splitattn.deploy.cpu_features import cpu_description
from splitattn.deploy.fold import optimize_for_inference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpp_wrapper_program(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """:func:`harness.compiled_program` compiled with inductor's C++ wrapper (on its first call, here)."""
    fn = compiled_program(model, x)
    with mock.patch.dict(compiled.INDUCTOR_OPTIONS, cpp_wrapper=True):
        fn()
    return fn


# --ab -> the two sides, the base first and the library's route last
SIDES: dict[str, dict[str, Callable[[torch.nn.Module, torch.Tensor], Callable[[], torch.Tensor]]]] = {
    "route": {"torch.compile": compiled_with_freezing, "compile_for_inference": compiled_program},
    "wrapper": {"C++ wrapper": cpp_wrapper_program, "Python wrapper": compiled_program},
}


def prepared(spec: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model of ``spec`` (random weights, eval) in ``dtype`` and channels_last."""
    model = build_model(spec).eval()
    if spec.startswith("splitattn:"):
        return optimize_for_inference(model, dtype=dtype)
    return model.to(dtype).to(memory_format=torch.channels_last)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="splitattn:resnest50", help="source:name, as bench.py takes them")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--ab", choices=sorted(SIDES), default="route")
    add_ab_arguments(p, rounds=10)
    args = p.parse_args()
    start_ab(args)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, {args.model} "
          f"{args.dtype}, batch {args.batch_size}, {args.img_size} px, A/B: {args.ab}", flush=True)
    routes = SIDES[args.ab]
    torch.manual_seed(0)
    model = prepared(args.model, DTYPES[args.dtype])
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).to(DTYPES[args.dtype])
    x = x.contiguous(memory_format=torch.channels_last)
    sides, logits = {}, {}
    # The library's side first: a strict torch.export empties dynamo's cache, and torch.compile's model
    # would then compile again at its next call, outside the freezing patch of its first.
    for name in reversed(routes):
        t = time.perf_counter()
        fn = routes[name](model, x)
        logits[name] = fn().float()
        print(f"{name}: captured and compiled in {time.perf_counter() - t:.1f} s", flush=True)
        sides[name] = fn
    sides = {name: sides[name] for name in routes}
    base, last = (logits[n] for n in routes)
    print(f"max |logit difference| {(last - base).abs().max().item():.3g} "
          f"(max |logit| {base.abs().max().item():.3g})")
    ms = time_paired(sides, args.rounds, args.steps)
    for name, v in ms.items():
        print(f"{name}: median {statistics.median(v):.2f} ms per batch ({args.rounds} rounds)")
    first, second = routes
    print(f"{first} / {second} time, median of paired rounds: {median_ratio(ms[second], ms[first]):.3f}")
    if args.profile:
        print_sides(profile_sides(sides, args.profile))


if __name__ == "__main__":
    main()
