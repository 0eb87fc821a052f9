"""A/B in INT8: a ResNeSt bottleneck's ``conv1`` -> radix-2 grouped 3x3 ``conv2``, against the same MACs as
two dense branches (``conv1`` and ``conv2`` split by radix, no grouped conv) and against ResNet's dense
3x3 of the same MACs. Each side is ``splitattn.quantize``-d (oneDNN INT8 through inductor) and timed in
paired, interleaved rounds in one process; prints the CPU, threads, torch, each side's median ms and the
median of the paired ratios (side / grouped: below 1 means faster than the grouped conv).

Why: in the INT8 profile of resnest50 on an AVX2 CPU the grouped 3x3 convs ran at a lower GMAC/s than
resnet50's dense 3x3 convs of the same MACs; this measures whether splitting the groups would pay.

    python benchmarks/grouped_conv_ab.py --batch-size 8 --channels 256 --size 14 --threads 2 --rounds 12
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import splitattn
from paired import median_ratio, time_paired
from splitattn.deploy.cpu_features import cpu_description


class Grouped(nn.Module):
    """``conv1`` (4C -> C, 1x1) -> ``conv2`` (C -> 2C, 3x3, 2 groups), as a radix-2 ResNeSt block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4 * c, c, 1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3))


class TwoDense(nn.Module):
    """The same MACs as two branches: ``conv1`` split in two (4C -> C/2), each feeding a dense C/2 -> C."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.ModuleList(nn.Conv2d(4 * c, c // 2, 1) for _ in range(2))
        self.conv2 = nn.ModuleList(nn.Conv2d(c // 2, c, 3, padding=1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = zip(self.conv1, self.conv2)
        return torch.cat([F.relu(c2(F.relu(c1(x)))).mean((2, 3)) for c1, c2 in branches], 1)


class Dense(nn.Module):
    """ResNet's bottleneck of the same MACs: ``conv1`` 4C -> C, a dense C -> C 3x3."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4 * c, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--channels", type=int, default=256, help="C: the group width (64..512 in resnest50)")
    p.add_argument("--size", type=int, default=14, help="H = W of the map")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, s = args.channels, args.size
    x = torch.randn(args.batch_size, 4 * c, s, s)
    calibration = [torch.randn(args.batch_size, 4 * c, s, s)]
    sides = {}
    for cls in (Grouped, TwoDense, Dense):
        qmodel = splitattn.quantize(cls(c).eval(), calibration)
        qmodel(x)  # compiles
        sides[cls.__name__] = lambda q=qmodel: q(x)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}; batch {args.batch_size}, "
          f"C {c}, {s}x{s}, {args.rounds} rounds x {args.steps} calls")
    ms = time_paired(sides, args.rounds, args.steps)
    for name, figures in ms.items():
        print(f"  {name:8s} {statistics.median(figures):8.3f} ms, x grouped (median of paired ratios) "
              f"{median_ratio(ms['Grouped'], figures):.3f}")


if __name__ == "__main__":
    main()
