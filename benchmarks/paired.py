"""Paired, interleaved timing of a few programs in one process: the A/B scripts' loop and ratio.

Each round times every side for ``steps`` calls after one untimed call, in alternating order (reversed
every other round), so that drifts in clock speed and machine load hit the sides alike; a comparison is the
median over rounds of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def time_paired(sides: Mapping[str, Callable[[], Any]], rounds: int, steps: int) -> dict[str, list[float]]:
    """ms per call of each side, one figure per round.

    Args:
        sides: name -> a no-argument callable (one program call, already compiled and warmed up).
        rounds: timed rounds.
        steps: timed calls per side per round.

    Returns:
        name -> ``rounds`` figures, in round order.
    """
    ms: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = sides[name]
            fn()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            ms[name].append((time.perf_counter() - t0) / steps * 1000)
    return ms


def median_ratio(a: list[float], b: list[float]) -> float | None:
    """Median over rounds of ``b[i] / a[i]`` (times: how many times faster ``a`` is), ``None`` if empty."""
    if not a or not b:
        return None
    return statistics.median(tb / ta for ta, tb in zip(a, b))


def add_ab_arguments(p: argparse.ArgumentParser, rounds: int = 10) -> None:
    """The A/B scripts' shared options: batch size, image size, threads, rounds, steps, profile."""
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--steps", type=int, default=5, help="timed calls per side per round")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N calls per side after")


def start_ab(args: argparse.Namespace) -> None:
    """Set the thread count and, with ``--profile``, inductor's kernel profiling (read when it compiles:
    each generated kernel then shows in the profile under the ops it fuses)."""
    if args.profile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    torch.set_num_threads(args.threads)
