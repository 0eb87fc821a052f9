"""``splitattn train``: the paper's recipe on an ImageFolder (DIR/train, DIR/val); DDP via torchrun."""

from __future__ import annotations

import argparse

from ..utils.train_checkpoint import CLASSIFICATION

# Flags that map one-to-one onto config keys (flag name -> key); any other key: KEY=VALUE.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "--data": ("data", str, "folder holding train/ and val/ in ImageFolder layout"),
    "--output": ("output", str, "run folder (checkpoints, config.yaml, metrics.jsonl)"),
    "--model": ("model", str, "model name (see `splitattn info`)"),
    "--epochs": ("epochs", int, "number of epochs"),
    "--batch-size": ("batch_size", int, "global batch, split over the processes"),
    "--lr": ("lr", float, "peak LR (default: base_lr x global batch / 256)"),
    "--img-size": ("img_size", int, "training crop size"),
    "--pretrained": ("pretrained", str, "initial weights (path/URL); the classifier is re-initialised"),
    "--resume": ("resume", str, "auto (newest valid checkpoint in --output) or a checkpoint path"),
    "--amp": ("amp", str, "bf16 | fp16 | off | auto (bf16 on GPU)"),
    "--workers": ("workers", int, "data-loading processes per training process"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "cpu | cuda | auto"),
    "--checkpoint-interval": ("checkpoint_interval", int, "also save last.ckpt every N iterations"),
    "--max-steps": ("max_steps", int, "stop after N iterations in total (smoke tests)"),
}


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Config overrides from the flags given and the ``KEY=VALUE`` arguments."""
    from ..engine.config import parse_override

    out: dict = {}
    for flag, (key, _, _) in _FLAGS.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None:
            out[key] = v
    for key in ("channels_last", "compile", "ema", "sync_bn", "skip_bad_images", "overwrite"):
        if getattr(args, key):
            out[key] = True
    if args.no_progress_bar:
        out["progress_bar"] = False
    for text in [*args.set, *args.overrides]:
        k, v = parse_override(text)
        out[k] = v
    return out


def run(args: argparse.Namespace) -> int:
    from ..engine import load_config, train

    train(load_config(CLASSIFICATION, args.config, overrides_from_args(args)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train with the paper's ImageNet recipe (single process or torchrun DDP)",
        description="Train a ResNeSt on DIR/train, validating on DIR/val. Any config key can be set as "
                    "KEY=VALUE (e.g. mixup_alpha=0 model_kwargs='{stem_width: 16}'). Under torchrun "
                    "(`torchrun --nproc_per_node=N -m splitattn train ...`) it runs DDP.",
    )
    p.add_argument("--config", help="recipe YAML (e.g. configs/resnest50.yaml); default: ResNeSt-50 recipe")
    for flag, (_, typ, help_) in _FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_)
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (default on GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--ema", action="store_true", help="keep an EMA of the weights")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images (and report how many) instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --output (without it, training there needs --resume)")
    p.add_argument("--no-progress-bar", action="store_true", help="plain progress lines even on a terminal")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="any config key (may appear anywhere, repeatable)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any config key (after the flags)")
    p.set_defaults(func=run)
