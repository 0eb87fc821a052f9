"""A/B of the compiled INT8 program's wrapper: inductor's Python wrapper against its C++ wrapper
(``splitattn.deploy.quantization.INDUCTOR_OPTIONS["cpp_wrapper"]``), one model quantized once per side,
timed in paired, interleaved rounds in one process (alternating order). Prints the CPU, threads, torch and
the median ms per batch of each side and the median of the paired ratios.

    python benchmarks/int8_wrapper_ab.py --batch-size 1 --threads 2 --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch

import splitattn
from paired import median_ratio, time_paired
from splitattn.deploy import quantization
from splitattn.deploy.cpu_features import cpu_description


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnest50")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed calls per side per round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, {args.model} INT8, "
          f"batch {args.batch_size}, {args.img_size} px")
    torch.manual_seed(0)
    model = splitattn.create_model(args.model).eval().to(memory_format=torch.channels_last)
    shape = (3, args.img_size, args.img_size)
    calibration = [torch.randn(4, *shape).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    x = torch.randn(args.batch_size, *shape).contiguous(memory_format=torch.channels_last)
    sides = {}
    for name, cpp in (("python wrapper", False), ("C++ wrapper", True)):
        torch._dynamo.reset()
        with mock.patch.dict(quantization.INDUCTOR_OPTIONS, cpp_wrapper=cpp), torch.no_grad():
            program = splitattn.quantize(model, calibration, compile=True)
            t = time.perf_counter()
            program(x)  # compiles
            print(f"{name}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
            program(x)
        sides[name] = (program, cpp)
    def call(program: Any, cpp: bool) -> Callable[[], Any]:
        def run() -> None:
            with mock.patch.dict(quantization.INDUCTOR_OPTIONS, cpp_wrapper=cpp), torch.no_grad():
                program(x)
        return run

    ms = time_paired({name: call(*side) for name, side in sides.items()}, args.rounds, args.steps)
    for name, v in ms.items():
        print(f"{name}: median {statistics.median(v):.2f} ms per batch ({args.rounds} rounds)")
    print(f"python / C++ wrapper time, median of paired rounds: {median_ratio(*reversed(ms.values())):.3f}")


if __name__ == "__main__":
    main()
