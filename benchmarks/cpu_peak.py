"""Measured multiply-add rate of this CPU's fp32, bf16 and INT8 matrix multiplies: the roofs that
``benchmarks/bench.py --roofs FILE`` divides each row's GMAC/s by (1 MAC = one multiply-add).

A short fp32 warm-up, then per format one small probe GEMM; a format whose probe is far below what the
CPU's flags promise (a reference loop: bf16 without AVX512-BF16, ...) is reported ``"emulated"`` with the
reason and not timed; the others get one timed measurement of about two seconds
(:func:`roofs.measure_roofs`). Prints the CPU, threads, torch version and one JSON line per format;
finishes in well under a minute.

    python benchmarks/cpu_peak.py --threads 2 --out benchmarks/results/cpu_peak_<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from harness import BenchConfig
from roofs import measure_roofs
from splitattn.deploy.cpu_features import cpu_description
from splitattn.utils.fileio import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=BenchConfig().threads, help="CPU threads (as the bench)")
    p.add_argument("--out", default=None, help="write the result as JSON (for benchmarks/bench.py --roofs)")
    args = p.parse_args()
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}")
    t0 = time.perf_counter()
    result = measure_roofs(args.threads, log=print)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"measured in {result['seconds']} s")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
