"""``splitattn demo``: the zoo table, then a real photo through a randomly initialised resnest50."""

from __future__ import annotations

import argparse

import torch

from . import make_console


def imagenet_classes() -> list[str]:
    from importlib.resources import files

    return files("splitattn.data").joinpath("imagenet_classes.txt").read_text().splitlines()


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from .. import create_model
    from ..data import create_eval_transform, resolve_eval_cfg
    from .info import render_table, zoo_rows

    console = make_console()
    render_table(zoo_rows("*"), console)

    torch.manual_seed(0)
    model = create_model("resnest50").eval()
    img = Image.fromarray(load_sample_image("china.jpg"))
    e = resolve_eval_cfg(model)
    x = create_eval_transform(model)(img).unsqueeze(0)
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    top = probs.topk(5)
    names = imagenet_classes()
    console.print(
        f"\n[bold]resnest50 on scikit-learn's sample photo 'china.jpg'[/bold] ({img.width}x{img.height}): "
        f"resize short side to {e['resize_size']} ({e['interpolation']}), centre crop {e['crop_size']}, "
        f"input {tuple(x.shape)}"
    )
    console.print("[bold red]The weights are RANDOM (no download here): these top-5 are meaningless.[/bold red]")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        console.print(f"  {p:7.4f}  {i:4d}  {names[i]}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on an embedded default (see README)")
    p.set_defaults(func=run)
