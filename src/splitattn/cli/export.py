"""``splitattn export --model NAME [--weights FILE] --format onnx|torchscript|int8|pt2 [--int8 ...] OUT``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..errors import InputError
from ._console import make_console


def run(args: argparse.Namespace) -> int:
    from .. import create_model
    from ..data.preprocessing import resolve_data_config
    from ..deploy.export import export_onnx, export_torchscript, onnx_max_abs_diff, torchscript_max_abs_diff
    from ..deploy.fold import optimize_for_inference

    console = make_console()
    pretrained: bool | str = False
    if args.weights:
        pretrained = True if args.weights == "pretrained" else args.weights
    model = create_model(args.model, pretrained=pretrained, num_classes=args.num_classes).eval()
    size = args.image_size or resolve_data_config(model).crop_size
    if args.int8:
        return _run_int8(args, model, size, console)
    if args.format in ("int8", "pt2"):
        raise InputError(f"--format {args.format} writes an INT8 model: add --int8 --calibration DIR")
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


def _run_int8(args: argparse.Namespace, model: Any, size: int, console: Any) -> int:
    """``--int8``: calibrate on ``--calibration`` images, write QDQ ONNX, splitattn's INT8 file or a ``.pt2``,
    compare to fp32."""
    import torch
    import torch.nn.functional as F

    from ..data.preprocessing import resolve_data_config
    from ..deploy.export import export_onnx_int8, onnx_predict
    from ..deploy.quantization import calibration_batches, quantize

    if args.format == "torchscript":
        raise InputError("--int8 writes --format onnx (QDQ, for onnxruntime), --format int8 (safetensors, "
                         "for splitattn.load_quantized) or --format pt2 (torch.export, for deployment "
                         "runtimes); "
                         "TorchScript has no INT8 path here")
    if not args.calibration:
        raise InputError("--int8 needs --calibration DIR: a folder of a few hundred representative images "
                         "(e.g. the training split)")
    batches = calibration_batches(args.calibration, resolve_data_config(model, img_size=size),
                                  args.calibration_images)
    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    if args.format == "onnx":
        path = export_onnx_int8(model, args.out, batches, image_size=size, opset=args.opset,
                                method=args.calibration_method, reduce_range=args.reduce_range)
    else:
        qmodel = quantize(model, batches, compile=False, reduce_range=args.reduce_range)
        path = qmodel.save(args.out) if args.format == "int8" else qmodel.export_program(args.out)
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, INT8 {args.format}, calibrated on "
                  f"{n} images of {args.calibration}, {size}x{size} input) "
                  f"in {time.perf_counter() - t0:.1f} s")
    if not args.check:
        return 0
    x = batches[0]
    with torch.no_grad():
        ref = model(x)
        got = onnx_predict(path, x) if args.format == "onnx" else qmodel(x)
    cos = F.cosine_similarity(got.float(), ref.float()).mean().item()
    agree = (got.argmax(1) == ref.argmax(1)).float().mean().item() * 100
    ok = cos >= 0.95
    console.print(f"check on {len(x)} calibration images: logits cosine similarity to fp32 {cos:.4f}, top-1 "
                  f"agreement {agree:.1f}% ({'ok' if ok else 'FAILED: below 0.95'})")
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or TorchScript (dynamic batch axis)")
    p.add_argument("out", help="output file (.onnx or .pt)")
    p.add_argument("--model", required=True, help="model name, e.g. resnest50 (see `splitattn info`)")
    p.add_argument("--weights", default=None,
                   help="weights: a local official/timm .pth or safetensors file, a URL, or 'pretrained' "
                        "for the "
                        "released weights (downloaded); default: random init")
    p.add_argument("--format", choices=["onnx", "torchscript", "int8", "pt2"], default="onnx",
                   help="onnx, torchscript; with --int8 also int8 (tensors + JSON that "
                        "splitattn.load_quantized rebuilds) or pt2 (a torch.export program for deployment "
                        "runtimes, which splitattn never loads)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's crop)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: the weights file's, else 1000)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--dynamo", action="store_true", help="use the dynamo ONNX exporter (slower to export)")
    p.add_argument("--optimized", action="store_true", help="fold BatchNorms into convs first")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the export against PyTorch at batch 3")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed by the check")
    p.add_argument("--int8", action="store_true",
                   help="post-training static INT8: QDQ ONNX for onnxruntime (--format onnx), splitattn's "
                        "INT8 file (--format int8) or a torch.export program (--format pt2); needs "
                        "--calibration")
    p.add_argument("--calibration", metavar="DIR", help="INT8 calibration images (any folder of images)")
    p.add_argument("--calibration-images", type=int, default=512, metavar="N",
                   help="how many calibration images (default 512, chosen with a fixed seed)")
    p.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="onnxruntime's range estimation for --format onnx (default minmax)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="INT8 with 7-bit ranges (onnx: weights; int8/pt2: activations), which CPUs without "
                        "VNNI need to avoid saturation (default: if this CPU lacks VNNI)")
    p.set_defaults(func=run)
