"""Measured multiply-add rate of this CPU's fp32, bf16 and int8 matrix multiplies (the roof the
``splitattn bench`` rows are compared with in RESULTS.md).

Large square GEMMs through PyTorch's CPU kernels (oneDNN / MKL): ``torch.mm`` in fp32 and bf16, and
``torch._int_mm`` (int8 x int8 -> int32) where this torch build has it; the best of ``--repeats`` timed
calls after one warm-up. A GEMM is the densest work these kernels do, so its rate is the practical peak;
the theoretical one is cores x clock x MACs per cycle of the instructions used (see RESULTS.md).

    python benchmarks/cpu_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from splitattn.cpu_features import cpu_description


def gemm_rate(dtype: torch.dtype, n: int, repeats: int) -> float | None:
    """Best-of-``repeats`` multiply-adds per second of an ``n x n x n`` GEMM, or ``None`` if unsupported."""
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)

        def fn() -> torch.Tensor:
            return torch._int_mm(a, b)
    else:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)

        def fn() -> torch.Tensor:
            return torch.mm(a, b)
    try:
        fn()
    except (RuntimeError, NotImplementedError):
        return None
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n**3 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"cpu": cpu_description(), "threads": args.threads, "n": args.n, "torch": torch.__version__}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        rate = gemm_rate(dtype, args.n, args.repeats)
        out[f"{name}_gmac_per_s"] = None if rate is None else round(rate / 1e9, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
