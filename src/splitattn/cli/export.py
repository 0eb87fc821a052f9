"""``splitattn export --model NAME [--weights FILE] --format onnx|torchscript OUT``."""

from __future__ import annotations

import argparse
import time

from . import make_console


def run(args: argparse.Namespace) -> int:
    from .. import create_model
    from ..export import export_onnx, export_torchscript, onnx_max_abs_diff, torchscript_max_abs_diff
    from ..inference import optimize_for_inference

    console = make_console()
    pretrained: bool | str = False
    if args.weights:
        pretrained = True if args.weights == "pretrained" else args.weights
    model = create_model(args.model, pretrained=pretrained, num_classes=args.num_classes).eval()
    size = args.image_size or model.pretrained_cfg.crop_size
    if args.optimized:
        # The layout does not survive export; ONNX Runtime picks its own.
        model = optimize_for_inference(model, channels_last=False)
    t0 = time.perf_counter()
    if args.format == "onnx":
        path = export_onnx(model, args.out, image_size=size, batch_size=2, opset=args.opset,
                           dynamo=True if args.dynamo else None)
    else:
        path = export_torchscript(model, args.out)
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.format}, dynamic batch, "
                  f"{size}x{size} input) in {time.perf_counter() - t0:.1f} s")
    if args.check:
        check = onnx_max_abs_diff if args.format == "onnx" else torchscript_max_abs_diff
        diff = check(model, path, batch_size=3, image_size=size)
        ok = diff <= args.atol
        console.print(f"check at batch 3: max |{args.format} - PyTorch| = {diff:.2e} "
                      f"({'ok' if ok else 'FAILED'}, tolerance {args.atol:g})")
        if not ok:
            return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or TorchScript (dynamic batch axis)")
    p.add_argument("out", help="output file (.onnx or .pt)")
    p.add_argument("--model", required=True, help="model name, e.g. resnest50 (see `splitattn info`)")
    p.add_argument("--weights", default=None,
                   help="weights: a local official/timm .pth or safetensors file, a URL, or 'pretrained' "
                        "for the "
                        "released weights (downloaded); default: random init")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's crop)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--dynamo", action="store_true", help="use the dynamo ONNX exporter (slower to export)")
    p.add_argument("--optimized", action="store_true", help="fold BatchNorms into convs first")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the export against PyTorch at batch 3")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed by the check")
    p.set_defaults(func=run)
