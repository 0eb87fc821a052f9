"""A/B of the Split-Attention MLP in an ``optimize_for_inference`` model: ``fc1`` / ``fc2`` on the pooled
``(B, C, 1, 1)`` vector as a GEMM (``FusedConv2d``'s vector path, the library's behaviour) against the same
model with them as convolutions (as before that path: ``fc1`` a oneDNN-prepacked ``FusedConv2d``, ``fc2`` an
``nn.Conv2d``), sharing the weights. Each program is built per side and timed in paired, interleaved rounds
in one process (alternating order); prints the CPU, threads, torch, each side's median ms per batch and
the median of the paired ratios (conv side time / GEMM side time: above 1 means the GEMM is faster).

Programs: ``fp32`` (eager, as the bench's ``+opt`` row), ``bf16`` (eager), ``bf16-compile`` (``torch.compile``
with freezing, as the bench's ``+bf16-compile`` row).

    python benchmarks/attention_gemm_ab.py --program fp32 --batch-size 1 --threads 2 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import splitattn
from paired import median_ratio, time_paired
from splitattn.deploy.cpu_features import cpu_description
from splitattn.deploy.fold import optimize_for_inference
from splitattn.layers import FusedConv2d, SplitAttn


class _ConvPath(FusedConv2d):
    """A FusedConv2d without the vector path: the convolution it ran before."""

    def _on_vector(self, x: torch.Tensor) -> bool:
        return False


def mlp_as_convs(model: nn.Module) -> int:
    """Put back, in place, each Split-Attention MLP of an optimized model as the convs it was before the
    GEMM path (same weight tensors). Returns how many modules it replaced."""
    n = 0
    for m in model.modules():
        if not isinstance(m, SplitAttn):
            continue
        fc1, fc2 = m.fc1, m.fc2
        old1 = _ConvPath.from_conv(fc1, activation=fc1.activation)
        old2 = nn.Conv2d(fc2.in_channels, fc2.out_channels, 1, groups=fc2.groups, device="meta")
        old2.weight, old2.bias = fc2.weight, fc2.bias
        m.fc1, m.fc2 = old1, old2
        n += 2
    return n


def build(program: str, model: nn.Module, x: torch.Tensor, convs: bool) -> Callable[[], torch.Tensor]:
    dtype = torch.bfloat16 if program.startswith("bf16") else None
    m = optimize_for_inference(model, dtype=dtype)
    if convs:
        print(f"  conv side: {mlp_as_convs(m)} MLP modules back as convs")
    x = x.to(dtype or torch.float32).contiguous(memory_format=torch.channels_last)
    if program != "bf16-compile":
        def infer() -> torch.Tensor:
            with torch.inference_mode():
                return m(x)
        return infer
    import torch._inductor.config as inductor_config

    compiled = torch.compile(m)

    def infer_compiled() -> torch.Tensor:
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(x)
    return infer_compiled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnest50")
    p.add_argument("--program", choices=["fp32", "bf16", "bf16-compile"], default="fp32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed calls per side per round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, {args.model} "
          f"{args.program}, batch {args.batch_size}, {args.img_size} px", flush=True)
    torch.manual_seed(0)
    model = splitattn.create_model(args.model).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    sides = {}
    for name, convs in (("MLP as convs", True), ("MLP as GEMM", False)):
        fn = build(args.program, model, x, convs)
        t = time.perf_counter()
        out = fn()
        fn()
        print(f"{name}: built and warmed up in {time.perf_counter() - t:.1f} s", flush=True)
        sides[name] = (fn, out.float())
    (_, a), (_, b) = sides.values()
    print(f"max |logit difference| between the sides: {(a - b).abs().max().item():.3g}")
    ms = time_paired({name: fn for name, (fn, _) in sides.items()}, args.rounds, args.steps)
    for name, v in ms.items():
        print(f"{name}: median {statistics.median(v):.2f} ms per batch ({args.rounds} rounds x {args.steps})")
    print(f"conv / GEMM time, median of paired rounds: {median_ratio(*reversed(ms.values())):.4f}")


if __name__ == "__main__":
    main()
