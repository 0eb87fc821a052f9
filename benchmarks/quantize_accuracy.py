"""INT8 and bf16 logits vs fp32 for big zoo models (random weights, non-trivial BatchNorm statistics).

Calibrates splitattn.quantize on random batches and compares the logits of other random batches with the
fp32 model's: cosine similarity (min and mean over images), max |difference| and max |fp32 logit|, top-1
agreement. ``--compile`` runs the INT8 kernels (one inductor compile per model; without it the quantized
reference graph: the same quantization, float arithmetic) and adds the compiled bf16 program of splitattn
models. Prints one JSON line per model and precision.

    python benchmarks/quantize_accuracy.py --models resnest50 resnest101 tv:resnet50 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import splitattn  # noqa: E402
from conftest import randomize_stats  # noqa: E402
from harness import build_model, compiled_program  # noqa: E402
from splitattn.deploy.fold import optimize_for_inference  # noqa: E402


def compare(name: str, got: torch.Tensor, ref: torch.Tensor, precision: str) -> dict:
    cos = F.cosine_similarity(got.float(), ref)
    return {"model": name, "precision": precision, "cos_min": round(cos.min().item(), 5),
            "cos_mean": round(cos.mean().item(), 5),
            "max_abs_diff": round((got.float() - ref).abs().max().item(), 4),
            "max_abs_logit": round(ref.abs().max().item(), 3),
            "top1_agree": round((got.argmax(1) == ref.argmax(1)).float().mean().item(), 4)}


def _bf16_compiled(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The bench's ``+bf16-compile`` program: the bf16 optimized model through ``compile_for_inference``
    (inductor with freezing; each Split-Attention tail one kernel)."""
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    return compiled_program(fast, x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnest50", "resnest101", "resnest50_fast_4s2x40d",
                                                    "tv:resnet50"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", action="store_true",
                   help="run the INT8 kernels and the compiled bf16 program (inductor)")
    p.add_argument("--attention", default="fp32", choices=["int8", "fp32"])
    args = p.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.img_size, args.img_size)
    for name in args.models:
        spec = name if ":" in name else f"splitattn:{name}"
        model = randomize_stats(build_model(spec)).eval()
        calibration = [torch.randn(*shape, generator=gen) for _ in range(args.calibration_batches)]
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = model(x)
            if spec.startswith("splitattn:"):
                bf16 = optimize_for_inference(model, dtype=torch.bfloat16)(x.to(torch.bfloat16))
            else:
                bf16 = model.to(torch.bfloat16)(x.to(torch.bfloat16))
                model.float()
        print(json.dumps(compare(name, bf16, ref, "bf16")), flush=True)
        if args.compile and spec.startswith("splitattn:"):
            print(json.dumps(compare(name, _bf16_compiled(model, x), ref, "bf16 (compiled)")), flush=True)
        q = splitattn.quantize(model, calibration, attention=args.attention, compile=args.compile)
        label = f"int8 ({'compiled' if args.compile else 'reference'}, attention {args.attention})"
        counters["inductor"].clear()
        row = compare(name, q(x), ref, label)
        if args.compile:  # convs inductor lowered to oneDNN INT8 convolutions, of all the model's convs
            row["int8_convs"] = sum(counters["inductor"][k] for k in ("qconv_unary_lower_count",
                                                                       "qconv2d_binary_lower_count"))
            row["convs"] = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
