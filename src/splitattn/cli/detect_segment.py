"""``splitattn detect train|eval`` and ``splitattn segment train|eval`` (configs in configs/<task>/)."""

from __future__ import annotations

import argparse
import json

from ..utils.train_checkpoint import DETECTION, SEGMENTATION

_TASK = {"detect": DETECTION, "segment": SEGMENTATION}


def _config(args: argparse.Namespace):
    from ..engine import load_config, parse_override

    overrides = dict(parse_override(text) for text in args.overrides)
    for key in ("output", "resume", "device", "amp", "max_iter", "batch_size", "overwrite",
                "skip_bad_images"):
        if getattr(args, key, None) not in (None, False):
            overrides[key] = getattr(args, key)
    return load_config(_TASK[args.command], args.config, overrides)


def _print(metrics: dict, title: str) -> None:
    from ._console import make_console

    console = make_console()
    console.print(f"[bold]{title}[/bold]")
    for k, v in metrics.items():
        console.print(f"  {k:>12}: {v:.4f}" if isinstance(v, float) else f"  {k:>12}: {v}")
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, int | float)}))


def run_train(args: argparse.Namespace) -> int:
    from ..engine import train

    metrics = train(_config(args))
    if metrics:
        _print(metrics, "final evaluation")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..engine import evaluate_checkpoint

    _print(evaluate_checkpoint(_config(args), args.checkpoint), f"evaluation of {args.checkpoint}")
    return 0


def _add(sub: argparse._SubParsersAction, command: str, help_text: str) -> None:
    p = sub.add_parser(command, help=help_text)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, func in (("train", run_train), ("eval", run_eval)):
        what = "train (torchrun for DDP)" if action == "train" else "evaluate a checkpoint"
        a = actions.add_parser(action, help=what)
        a.add_argument("--config", "-c", help=f"YAML, e.g. configs/{_TASK[command]}/...yaml")
        a.add_argument("--device", help="cpu | cuda | auto")
        a.add_argument("--amp", choices=["bf16", "fp16", "off"])
        if action == "train":
            a.add_argument("--output", "-o", help="run folder (checkpoints, metrics.jsonl)")
            a.add_argument(
                "--resume", help="'auto' (latest checkpoint in the run folder) or a checkpoint path"
            )
            a.add_argument("--overwrite", action="store_true",
                           help="replace the run already in --output (without it, that needs --resume)")
            a.add_argument("--max-iter", dest="max_iter", type=int)
            a.add_argument("--batch-size", dest="batch_size", type=int, help="global batch")
        else:
            a.add_argument("--checkpoint", required=True, help="last.ckpt of a train run")
        a.add_argument("--skip-bad-images", dest="skip_bad_images", action="store_true",
                       help="drop (and count) images that cannot be read instead of stopping")
        a.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. lr=0.01")
        a.set_defaults(func=func)


def register(sub: argparse._SubParsersAction) -> None:
    _add(sub, "detect", "Faster / Cascade / Mask R-CNN + FPN on ResNeSt: train or evaluate (COCO mAP)")
    _add(sub, "segment", "DeepLabV3 on dilated ResNeSt: train or evaluate (pixel acc, mIoU)")
