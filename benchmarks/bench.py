"""Side-by-side ResNeSt benchmark: splitattn, timm, the official code and torchvision, timed in paired,
interleaved rounds in one process (see ``--help`` and :mod:`harness`).

Example (the CPU figures of RESULTS.md)::

    python benchmarks/bench.py --device cpu --threads 2 -b 8 --img-size 224 --optimized --onnx \
        --json benchmarks/results/cpu_fp32.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from harness import (
    DEFAULT_MODELS,
    REF_RESNEST,
    REF_RESNET,
    BenchConfig,
    render,
    run_benchmark,
    write_outputs,
)
from splitattn.cli._console import make_console
from splitattn.errors import SplitAttnError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that fill a :class:`harness.BenchConfig` (plus ``--csv`` / ``--json``)."""
    default = BenchConfig()
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                   metavar="SOURCE:NAME[+VARIANT][@cl|@nchw]",
                   help=f"rows to time (default: {' '.join(DEFAULT_MODELS)}); a @cl / @nchw suffix sets "
                        "that row's memory format; +ckpt / +ckpt-attn time training with gradient "
                        "checkpointing / Split-Attention recompute, +opt / +fold optimized inference, "
                        "+int8 post-training INT8 (splitattn.quantize; onnx: rows: QDQ in onnxruntime), "
                        "+bf16 bf16 weights and inputs (+bf16-compile: through compile_for_inference)")
    p.add_argument("--mode", choices=["infer", "train", "both"], default=default.mode)
    p.add_argument("--device", default=default.device)
    p.add_argument("-b", "--batch-size", type=int, default=default.batch_size)
    p.add_argument("--img-size", type=int, default=default.img_size)
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--optimized", action="store_true",
                   help="add two inference rows per splitattn model: BN folded only, and "
                        "optimize_for_inference (folded + ReLU/residual fused, prepacked oneDNN on CPU)")
    p.add_argument("--onnx", action="store_true", help="add an onnxruntime (CPU) row per splitattn model")
    p.add_argument("--ref-resnest", default=REF_RESNEST,
                   help="row the *_vs_timm_resnest50d ratios divide by (must be among --models)")
    p.add_argument("--ref-resnet", default=REF_RESNET,
                   help="row the *_vs_resnet50 ratios divide by (must be among --models)")
    p.add_argument("--threads", type=int, default=default.threads, help="CPU threads (torch and onnxruntime)")
    p.add_argument("--warmup", type=int, default=default.warmup, help="untimed steps per model and mode")
    p.add_argument("--rounds", type=int, default=default.rounds, help="interleaved timed rounds")
    p.add_argument("--steps", type=int, default=default.steps, help="timed steps per model per round")
    p.add_argument("--roofs", default=None, metavar="FILE",
                   help="this CPU's GEMM roofs (benchmarks/cpu_peak.py --out FILE): each inference row gets "
                        "the fraction of the roof of its format (fp32, +bf16* -> bf16, +int8 -> INT8)")
    p.add_argument("--measure-roofs", action="store_true",
                   help="measure the roofs in this process first (about 10 s; overrides --roofs)")
    p.add_argument("--csv", default=None, help="write the rows as CSV")
    p.add_argument("--json", default=None, help="write the rows as JSON")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` fields of parsed ``bench`` arguments."""
    return BenchConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)})


def run(args: argparse.Namespace) -> int:
    console = make_console()
    log = (lambda msg: None) if args.quiet else console.log
    rows = run_benchmark(config_from_args(args), log)
    render(rows, console)
    write_outputs(rows, args.csv, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the benchmark, print the table; a splitattn error is one line and exit 2."""
    p = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    try:
        return run(args)
    except SplitAttnError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
