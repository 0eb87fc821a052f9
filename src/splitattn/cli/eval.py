"""``splitattn eval``: top-1, top-5, loss and images/s of weights on an ImageFolder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def evaluate_folder(weights: str, data: str, model_name: str | None = None, img_size: int | None = None,
                    crop_ratio: float | None = None, batch_size: int = 64, workers: int = 4,
                    device: str = "auto", amp: str = "off", ema: bool = False) -> dict:
    """Evaluate ``weights`` on ``data`` (a folder with ``val/``, or the val folder itself).

    The class folders must match the class names stored with the weights; for ImageNet weights
    without names, the 1000 sorted synset folders are used in order.
    """
    from torch.utils.data import DataLoader

    from ..data.datasets import ImageFolderDataset, collate_skip_bad, scan_image_folder
    from ..data.transforms import create_eval_transform, resolve_eval_cfg
    from ..engine.evaluate import evaluate
    from ..engine.inference import imagenet_classes, load_for_inference

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    val_dir = root / "val" if (root / "val").is_dir() else root
    model, classes = load_for_inference(weights, model_name, ema)
    folder_classes, _ = scan_image_folder(val_dir, "val")
    ds = ImageFolderDataset(val_dir, create_eval_transform(model, img_size, crop_ratio), what="val")
    if set(folder_classes) <= set(classes):
        remap = [classes.index(c) for c in folder_classes]  # match by name
        ds.samples = [(p, remap[t]) for p, t in ds.samples]
    elif classes == imagenet_classes() and len(folder_classes) == len(classes):
        pass  # ImageNet weights carry readable names; the sorted synset folders are in the same order
    else:
        unknown = sorted(set(folder_classes) - set(classes))
        raise ValueError(
            f"class folders {unknown[:10]} of {val_dir} are not classes of {weights} ({len(classes)} "
            f"classes: {classes[:5]}...); evaluate on a folder of the same classes"
        )
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model.to(dev)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_bad,
                        pin_memory=dev.type == "cuda")
    res = evaluate(model, loader, dev, amp)
    res.update(resolve_eval_cfg(model, img_size, crop_ratio))
    res.update(weights=str(weights), data=str(val_dir), model=model.pretrained_cfg.name)
    return res


def run(args: argparse.Namespace) -> int:
    from . import make_console

    res = evaluate_folder(args.weights, args.data, args.model, args.img_size, args.crop_ratio,
                          args.batch_size, args.workers, args.device, args.amp, args.ema)
    if args.json:
        print(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in res.items()}))
        return 0
    console = make_console()
    console.print(
        f"{res['model']} on {res['data']} ({res['images']} images; crop {res['crop_size']} from "
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
