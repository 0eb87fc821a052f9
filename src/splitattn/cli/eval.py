"""``splitattn eval``: top-1, top-5, loss and images/s of weights on an ImageFolder."""

from __future__ import annotations

import argparse
import json

from ..evaluation.evaluate import evaluate_folder
from ._console import make_console


def run(args: argparse.Namespace) -> int:
    precision = "int8" if args.int8 else "bf16" if args.bf16 else "fp32"
    res = evaluate_folder(args.weights, args.data, args.model, args.img_size, args.crop_ratio,
                          args.batch_size, args.workers, args.device, args.amp, args.ema,
                          skip_bad_images=args.skip_bad_images, precision=precision,
                          calibration=args.calibration, calibration_images=args.calibration_images)
    if args.json:
        print(json.dumps(res))
        return 0
    skipped = f", {res['skipped']} unreadable images skipped" if res["skipped"] else ""
    console = make_console()
    console.print(
        f"{res['model']} on {res['data']} ({res['images']} images{skipped}; crop {res['crop_size']} from "
        f"{res['resize_size']}, {res['interpolation']})"
        + (f"; INT8 calibrated on {res['calibration_images']} images of {res['calibration']}"
           if precision == "int8" else "")
    )
    rows = [("fp32", res["fp32"]), (precision, res)] if precision != "fp32" else [("fp32", res)]
    for name, r in rows:
        delta = f" ({r['top1'] - rows[0][1]['top1']:+.2f} pt)" if name != "fp32" else ""
        note = ""
        if name == "int8":
            note = (" (including the one-time compile)" if r.get("int8_kernels")
                    else " (reference ops: this CPU has no INT8 kernels, so no speed to read)")
        console.print(f"  {name:5s} top-1 [bold]{r['top1']:.2f}%[/bold]{delta}, top-5 {r['top5']:.2f}%, "
                      f"loss {r['loss']:.4f}, {r['images_per_sec']:.1f} images/s{note}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5/loss/images-per-second of weights on an ImageFolder")
    p.add_argument("--model", help="model name (default: the one recorded in the weights)")
    p.add_argument("--weights", required=True, help="a .ckpt of `splitattn train`, or a weights file")
    p.add_argument("--data", required=True, help="folder holding val/, or the val folder itself")
    p.add_argument("--img-size", type=int, help="eval crop (default: the model's)")
    p.add_argument("--crop-ratio", type=float, help="crop / resized short side (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--amp", default="off", choices=["bf16", "fp16", "off"])
    p.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip (and count) images that cannot be decoded instead of stopping")
    low = p.add_mutually_exclusive_group()
    low.add_argument("--int8", action="store_true",
                     help="also evaluate the post-training INT8 model (splitattn.quantize; its reference ops "
                          "where the CPU lacks VNNI) and print its accuracy next to fp32's")
    low.add_argument("--bf16", action="store_true",
                     help="also evaluate the bf16 model (optimize_for_inference(dtype=torch.bfloat16)) and "
                          "print its accuracy next to fp32's")
    p.add_argument("--calibration", metavar="DIR",
                   help="INT8 calibration images (default: the train/ folder next to the val folder)")
    p.add_argument("--calibration-images", type=int, default=512, metavar="N",
                   help="how many calibration images (default 512, chosen with a fixed seed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
