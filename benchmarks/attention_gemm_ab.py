"""A/B of how an ``optimize_for_inference`` model runs its Split-Attention MLP (``fc1`` / ``fc2`` on the
pooled ``(B, C, 1, 1)`` vector), the two sides sharing the weights, each program built per side and timed in
paired, interleaved rounds in one process (alternating order); prints the CPU, threads, torch, each side's
median ms per batch and the median of the paired ratios (base side time / new side time: above 1 means the
new side, the library's behaviour, is faster).

``--ab convs``: the MLP as convolutions (as before the GEMM path: ``fc1`` a oneDNN-prepacked ``FusedConv2d``,
``fc2`` an ``nn.Conv2d``) against ``FusedConv2d``'s vector path, a GEMM per product.
``--ab reductions`` (compiled programs only): the GEMM path compiled as a pre-packed GEMM per product against
the library's compiled path, the product written as a multiply and a sum that inductor fuses with the
block's pooling, r-softmax and weighted sum (``splitattn.layers.fused_conv.vector_as_reduction``).

Programs: ``fp32`` (eager, as the bench's ``+opt`` row), ``bf16`` (eager), ``fp32-compile`` and
``bf16-compile`` (``compile_for_inference``, as the bench's ``+bf16-compile`` row compiles).

``--profile N``: after the timing, ``torch.profiler`` over N calls of each side, sides alternating, twice
each; ms per batch of profiled self time by ``profile_ops``' classes and by kernel (compiled sides name
their kernels: they compile with ``cpp.enable_kernel_profile``).

    python benchmarks/attention_gemm_ab.py --ab convs --program fp32 --batch-size 1 --threads 2 --rounds 10
    python benchmarks/attention_gemm_ab.py --ab reductions --program bf16-compile --batch-size 8 --profile 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import splitattn
from harness import compiled_program
from paired import add_ab_arguments, median_ratio, start_ab, time_paired
from profile_ops import head_width, print_sides, profile_sides
from splitattn.deploy.cpu_features import cpu_description
from splitattn.deploy.fold import optimize_for_inference
from splitattn.layers import FusedConv2d, SplitAttn


class _ConvPath(FusedConv2d):
    """A FusedConv2d without the vector path: the convolution it ran before."""

    def _on_vector(self, x: torch.Tensor) -> bool:
        return False


class _GemmPath(FusedConv2d):
    """A FusedConv2d whose vector path stays a GEMM when compiled: what it compiled to before."""

    def _vector_as_reduction(self, x: torch.Tensor) -> bool:
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


def mlp_as_gemms(model: nn.Module) -> int:
    """Make, in place, each Split-Attention MLP module of an optimized model one that compiles to a GEMM
    (same weight tensors). Returns how many modules it replaced."""
    n = 0
    for m in model.modules():
        if isinstance(m, SplitAttn):
            for name in ("fc1", "fc2"):
                fc = getattr(m, name)
                setattr(m, name, _GemmPath.from_conv(fc, activation=fc.activation))
                n += 1
    return n


# --ab -> ((side name, how the side changes an optimized model, or None), ...): the first side is the base
SIDES = {
    "convs": (("MLP as convs", mlp_as_convs), ("MLP as GEMM", None)),
    "reductions": (("MLP as GEMMs", mlp_as_gemms), ("MLP as reductions", None)),
}


def build(program: str, model: nn.Module, x: torch.Tensor, change: Callable[[nn.Module], int] | None,
          ) -> Callable[[], torch.Tensor]:
    dtype = torch.bfloat16 if program.startswith("bf16") else None
    m = optimize_for_inference(model, dtype=dtype)
    if change is not None:
        print(f"  {change.__name__}: {change(m)} MLP modules replaced")
    x = x.to(dtype or torch.float32).contiguous(memory_format=torch.channels_last)
    if program.endswith("-compile"):
        return compiled_program(m, x)

    def infer() -> torch.Tensor:
        with torch.inference_mode():
            return m(x)
    return infer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ab", choices=sorted(SIDES), default="convs")
    p.add_argument("--model", default="resnest50")
    p.add_argument("--program", choices=["fp32", "bf16", "fp32-compile", "bf16-compile"], default="fp32")
    add_ab_arguments(p, rounds=10)
    args = p.parse_args()
    if args.ab == "reductions" and not args.program.endswith("-compile"):
        p.error("--ab reductions compares compiled programs: --program fp32-compile or bf16-compile")
    start_ab(args)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, {args.model} "
          f"{args.program}, batch {args.batch_size}, {args.img_size} px, A/B: {args.ab}", flush=True)
    torch.manual_seed(0)
    model = splitattn.create_model(args.model).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    sides = {}
    for name, change in SIDES[args.ab]:
        fn = build(args.program, model, x, change)
        t = time.perf_counter()
        out = fn()
        fn()
        print(f"{name}: built and warmed up in {time.perf_counter() - t:.1f} s", flush=True)
        sides[name] = (fn, out.float())
    (base, a), (new, b) = ((name, logits) for name, (_, logits) in sides.items())
    print(f"max |logit difference| between the sides: {(a - b).abs().max().item():.3g} "
          f"(max |logit| {a.abs().max().item():.3g})")
    ms = time_paired({name: fn for name, (fn, _) in sides.items()}, args.rounds, args.steps)
    for name, v in ms.items():
        print(f"{name}: median {statistics.median(v):.2f} ms per batch ({args.rounds} rounds x {args.steps})")
    print(f"{base} / {new} time, median of paired rounds: {median_ratio(ms[new], ms[base]):.4f}")
    if args.profile:
        print_sides(profile_sides({name: fn for name, (fn, _) in sides.items()}, args.profile,
                                  head_width=head_width(model)))


if __name__ == "__main__":
    main()
