"""``splitattn eval``: top-1, top-5, loss and images/s of weights on an ImageFolder."""

from __future__ import annotations

import argparse
import json

from ..evaluate import evaluate_folder
from . import make_console


def run(args: argparse.Namespace) -> int:
    res = evaluate_folder(args.weights, args.data, args.model, args.img_size, args.crop_ratio,
                          args.batch_size, args.workers, args.device, args.amp, args.ema,
                          skip_bad_images=args.skip_bad_images)
    if args.json:
        print(json.dumps(res))
        return 0
    skipped = f", {res['skipped']} unreadable images skipped" if res["skipped"] else ""
    make_console().print(
        f"{res['model']} on {res['data']} ({res['images']} images{skipped}; crop {res['crop_size']} from "
        f"{res['resize_size']}, {res['interpolation']}): top-1 [bold]{res['top1']:.2f}%[/bold], "
        f"top-5 {res['top5']:.2f}%, loss {res['loss']:.4f}, {res['images_per_sec']:.1f} images/s"
    )
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
