"""``splitattn explain IMAGE...``: figures and numbers of what split attention does on images."""

from __future__ import annotations

import argparse

from ..explain.explanations import DEFAULT_SCALES


def run(args: argparse.Namespace) -> int:
    from ..explain.explanations import explain_images, load_explain_model

    target = load_explain_model(args.model, args.weights, args.pretrained, args.ema)
    if target.random:
        print(f"model {target.name}: {target.weights} (pass --weights FILE or --pretrained)")
    record = explain_images(target, args.images, args.output, args.scales)
    for r in record["images"]:
        p = r["prediction"]
        print(f"{r['image']}: {p['class']} ({p['confidence']:.3f})")
        for path in r["figures"].values():
            print(f"  wrote {path}")
    print(f"wrote {record['json']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="PNG figures + JSON of the split attention, Grad-CAM and scale test "
                                       "of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", help="a zoo model (random weights unless --pretrained), or the model of "
                                   "--weights when the file does not record it")
    p.add_argument("--weights", help="a .ckpt of `splitattn train`, or a weights file (safetensors, .pth)")
    p.add_argument("--pretrained", action="store_true", help="the released ImageNet weights of --model")
    p.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    p.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), metavar="S",
                   help="zoom factors of the scale test, 0.25..8 (default 1.0 1.5 2.0; 1.0 is always added)")
    p.add_argument("--output", default="explain_out", help="output folder (default ./explain_out)")
    p.set_defaults(func=run)
