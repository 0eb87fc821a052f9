"""A/B of the compiled INT8 resnest50: the r-softmax output as inductor leaves it (the library's program:
``exp(x - max)`` stored, the division by the sum inlined into the weighted sum, so done at every pixel)
against the same graph with the softmax output forced into a buffer (``prims.inductor_force_stride_order``
after each softmax: the weights are normalised once per image and channel, the weighted sum only
multiplies). Paired, interleaved rounds in one process; then the profiled self time of the weighted-sum
kernels (inductor's ``..._addcmul_...`` kernels) of each side. Prints the CPU, threads and torch.

    python benchmarks/int8_realized_weights_ab.py --batch-size 8 --threads 2 --rounds 8
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

import splitattn
from paired import median_ratio, time_paired
from splitattn.deploy.cpu_features import cpu_description
from splitattn.deploy.quantization import QuantizedModel


def realize_softmax(graph: torch.fx.GraphModule) -> int:
    """Insert a stride-forcing no-op after every softmax of ``graph`` (in place); how many."""
    n = 0
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.softmax.int:
            with graph.graph.inserting_after(node):
                stride = list(node.meta["val"].stride())
                kept = graph.graph.call_function(torch.ops.prims.inductor_force_stride_order.default,
                                                 (node, stride))
            kept.meta.update(node.meta)
            node.replace_all_uses_with(kept, delete_user_cb=lambda user, k=kept: user is not k)
            n += 1
    graph.recompile()
    return n


def weighted_sum_ms(fn, steps: int) -> float:
    """Profiled self time per call of the weighted-sum kernels."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return sum(e.self_cpu_time_total for e in prof.events() if "addcmul" in e.name) / steps / 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    inductor_config.cpp.enable_kernel_profile = True  # name each generated kernel in the profile
    gen = torch.Generator().manual_seed(0)
    model = splitattn.create_model("resnest50").eval()
    base = splitattn.quantize(model, [torch.randn(4, 3, 224, 224, generator=gen)], compile=False)
    graph = copy.deepcopy(base.graph_module)
    n = realize_softmax(graph)
    as_is = QuantizedModel(base.graph_module, base.info, compile=True)
    realized = QuantizedModel(graph, base.info, compile=True)
    x = torch.randn(args.batch_size, 3, 224, 224, generator=gen)
    with torch.no_grad():
        diff = (as_is(x) - realized(x)).abs().max().item()
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}; resnest50 INT8, batch "
          f"{args.batch_size}, {n} softmax outputs realized; max |logit difference| {diff:.3g}")
    sides = {"as is": lambda: as_is(x), "realized": lambda: realized(x)}
    ms = time_paired(sides, args.rounds, args.steps)
    for name, figures in ms.items():
        print(f"  {name:9s} {statistics.median(figures):8.2f} ms per batch, weighted-sum kernels "
              f"{weighted_sum_ms(sides[name], 4):.2f} ms")
    print(f"  as is / realized (median of paired ratios): {median_ratio(ms['realized'], ms['as is']):.4f}")


if __name__ == "__main__":
    main()
