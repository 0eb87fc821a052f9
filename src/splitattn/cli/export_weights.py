"""``splitattn export-weights``: a training checkpoint -> a clean safetensors weights file."""

from __future__ import annotations

import argparse

from ..evaluation.predict import export_weights


def run(args: argparse.Namespace) -> int:
    path = export_weights(args.checkpoint, args.out, ema=args.ema)
    print(f"wrote {path} (load with splitattn.create_model(NAME, pretrained='{path}', num_classes=..., "
          "**model_kwargs) or `splitattn predict --weights`)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-weights", help="training checkpoint -> safetensors weights for create_model")
    p.add_argument("checkpoint", metavar="CKPT", help="e.g. RUN_DIR/last.ckpt or RUN_DIR/best.ckpt")
    p.add_argument("out", metavar="OUT.safetensors", help="the weights file to write (not the checkpoint)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.set_defaults(func=run)
