"""``splitattn predict``: the top-k classes of images."""

from __future__ import annotations

import argparse
import json

from ..evaluation.predict import load_for_inference, predict_images
from ._console import make_console


def run(args: argparse.Namespace) -> int:
    model, classes = load_for_inference(args.weights, args.model, args.ema)
    res = predict_images(model, classes, args.images, args.topk)
    if args.json:
        print(json.dumps(res))
        return 0
    console = make_console()
    for r in res:
        console.print(f"[bold]{r['image']}[/bold]")
        for name, i, p in r["top"]:
            console.print(f"  {p:7.4f}  {i:4d}  {name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-5 classes of images with class names")
    p.add_argument("--model", help="model name (default: the one recorded in the weights)")
    p.add_argument("--weights", required=True, help="a .ckpt of `splitattn train`, or a weights file")
    p.add_argument("--topk", type=int, default=5, help="classes per image (at least 1)")
    p.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=run)
