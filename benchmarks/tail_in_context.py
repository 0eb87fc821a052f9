"""What one Split-Attention tail costs in its place in the program, against the same tail on a cached input.

Three programs of one block's ``SplitAttn`` of an ``optimize_for_inference`` model, each through
:func:`splitattn.compile_for_inference` (inductor with freezing), timed in paired, interleaved rounds in one
process: the radix conv alone (its BN and ReLU folded into it), the conv and its tail (the block as the model
runs it), and the tail alone on the conv's output, called again and again on that one tensor (which then
stays in cache). ``conv+tail - conv`` (median of the paired per-round differences) is the tail's cost right
after the convolution has written its input; the last side is the same kernel on a cached input. Prints the
CPU, threads, torch, the map's size and the three medians.

    python benchmarks/tail_in_context.py --layer layer1 --block 1 --batch-size 8 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import splitattn
from paired import add_ab_arguments, start_ab, time_paired
from splitattn.deploy.compiled import compile_for_inference
from splitattn.deploy.cpu_features import cpu_description
from splitattn.deploy.fold import optimize_for_inference
from splitattn.layers import SplitAttn


class _Part(nn.Module):
    """``part(split_attn, x)`` as a module (``compile_for_inference`` captures modules)."""

    def __init__(self, split_attn: SplitAttn, part: str) -> None:
        super().__init__()
        self.sa, self.part = split_attn, part
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part == "conv":  # SplitAttn.forward is tail(conv(x))
            return self.sa.conv(x)
        return self.sa.tail(x) if self.part == "tail" else self.sa(x)

    def train(self, mode: bool = True) -> _Part:  # an optimized model is eval-only: stay in eval
        return self


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnest50")
    p.add_argument("--layer", default="layer1", choices=["layer1", "layer2", "layer3", "layer4"])
    p.add_argument("--block", type=int, default=1, help="block index in the layer (not a downsampling one)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    add_ab_arguments(p, rounds=30)
    args = p.parse_args()
    start_ab(args)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = optimize_for_inference(splitattn.create_model(args.model).eval(), channels_last=True, dtype=dtype)
    block = getattr(model, args.layer)[args.block]
    sa, where = block.conv2, f"{args.model}.{args.layer}[{args.block}]"
    if not isinstance(sa, SplitAttn):
        raise SystemExit(f"{where}.conv2 is a {type(sa).__name__}, not a SplitAttn")
    if not isinstance(getattr(block, "avd_last", None), (nn.Identity, type(None))):
        raise SystemExit(f"{where} pools its splits before the weighted sum (SplitAttn.forward_pooled); "
                         "pick a block without the avd pool (--block 1 or later)")
    side = args.img_size // {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}[args.layer]
    in_size = (sa.conv.in_channels, side, side)
    x = torch.randn(args.batch_size, *in_size).to(dtype).contiguous(memory_format=torch.channels_last)
    conv, both = (compile_for_inference(_Part(sa, part), in_size) for part in ("conv", "both"))
    u = conv(x).contiguous(memory_format=torch.channels_last)
    tail = compile_for_inference(_Part(sa, "tail"), tuple(u.shape[1:]))
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, {args.model} "
          f"{args.layer}[{args.block}] {args.dtype}, batch {args.batch_size}, conv input {tuple(x.shape)}, "
          f"tail input {tuple(u.shape)} ({u.numel() * u.element_size() / 1e6:.2f} MB)")
    sides = {"conv": lambda: conv(x), "conv+tail": lambda: both(x), "tail, cached input": lambda: tail(u)}
    for fn in sides.values():  # the first call of each compiles
        fn()
    ms = time_paired(sides, args.rounds, args.steps)
    for name, times in ms.items():
        print(f"{name}: median {statistics.median(times):.3f} ms ({args.rounds} rounds x {args.steps})")
    in_context = statistics.median(b - a for a, b in zip(ms["conv"], ms["conv+tail"]))
    print(f"tail after its conv (conv+tail - conv, median of paired rounds): {in_context:.3f} ms")


if __name__ == "__main__":
    main()
