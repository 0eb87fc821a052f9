"""``splitattn predict``: top-5 classes of images."""

from __future__ import annotations

import argparse
import json

import torch


def predict_images(model: torch.nn.Module, classes: list[str], images: list[str], topk: int = 5,
                   ) -> list[dict]:
    """``[{"image", "top": [(class_name, index, prob), ...]}]`` with the model's eval preprocessing."""
    from ..data.datasets import load_rgb
    from ..data.transforms import create_eval_transform

    tf = create_eval_transform(model)
    out = []
    for path in images:
        x = tf(load_rgb(path)).unsqueeze(0)
        with torch.inference_mode():
            probs = model(x).softmax(-1)[0]
        top = probs.topk(min(topk, probs.numel()))
        out.append({"image": path, "top": [(classes[i], i, p) for p, i in
                                           zip(top.values.tolist(), top.indices.tolist())]})
    return out


def run(args: argparse.Namespace) -> int:
    from ..engine.inference import load_for_inference
    from . import make_console

    for p in args.images:
        import os

        if not os.path.isfile(p):
            raise FileNotFoundError(f"image {p} does not exist")
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
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=run)
