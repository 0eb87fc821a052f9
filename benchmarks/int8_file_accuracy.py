"""Digits top-1 of a trained model in fp32, bf16 and INT8, and of its INT8 file loaded in a fresh process.

The model of ``make demo`` (or any classification ``.ckpt``) is evaluated on its val folder: fp32, bf16
(``optimize_for_inference(dtype=torch.bfloat16)``), the INT8 reference graph (``quantize(compile=False)``,
calibrated on 512 train images with a fixed seed, 7-bit activations where the CPU has no VNNI), the same
model saved with ``QuantizedModel.save`` and loaded with ``load_quantized`` in another process (logits
compared to the bit), and the INT8 oneDNN kernels (``compile=True``). Prints the machine and one JSON line.

    make demo && python benchmarks/int8_file_accuracy.py --weights demo_out/run/last.ckpt \
        --data demo_out/digits
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import splitattn
from splitattn.data.imagefolder import ImageFolderDataset
from splitattn.data.transforms import create_eval_transform
from splitattn.deploy.cpu_features import cpu_flags
from splitattn.deploy.fold import optimize_for_inference
from splitattn.deploy.quantization import calibration_batches, int8_dot_product, int8_support_problem
from splitattn.evaluation.predict import load_for_inference

_LOAD = """
import sys, torch, splitattn
model = splitattn.load_quantized(sys.argv[1], compile=False)
torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return round(100.0 * (logits.argmax(1) == y).float().mean().item(), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a classification .ckpt (or exported weights)")
    p.add_argument("--data", required=True, help="the ImageFolder with train/ and val/")
    args = p.parse_args()
    torch.manual_seed(0)
    model, classes = load_for_inference(args.weights)
    ds = ImageFolderDataset(Path(args.data) / "val", create_eval_transform(model), classes=classes)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    calib = calibration_batches(Path(args.data) / "train", model, num_images=512)  # as eval --int8 does
    with torch.no_grad():
        fp32 = model(x)
        bf16 = optimize_for_inference(model, dtype=torch.bfloat16)(x.to(torch.bfloat16)).float()
    reference = splitattn.quantize(model, calib, compile=False)
    ref_logits = reference(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = reference.save(Path(tmp) / "model.int8.safetensors")
        fp32_file = splitattn.save_weights(model, Path(tmp) / "model.safetensors")
        inputs, out = Path(tmp) / "x.pt", Path(tmp) / "o.pt"
        torch.save(x, inputs)
        subprocess.run([sys.executable, "-c", _LOAD, str(path), str(inputs), str(out)], check=True)
        loaded = torch.load(out, weights_only=True)
        sizes = {"int8_file_bytes": path.stat().st_size, "fp32_file_bytes": fp32_file.stat().st_size}
    row = {"images": len(x), "fp32": _top1(fp32, y), "bf16": _top1(bf16, y),
           "int8_reference": _top1(ref_logits, y), "int8_file_fresh_process": _top1(loaded, y),
           "file_logits_identical": bool(torch.equal(loaded, ref_logits)), **sizes,
           "reduce_range": reference.info["reduce_range"]}
    if int8_support_problem() is None:
        kernels = splitattn.quantize(model, calib, compile=True)
        row["int8_kernels"] = _top1(kernels(x), y)
    print(f"# {platform.processor() or platform.machine()}, vnni={int8_dot_product()}, "
          f"avx512={'avx512f' in cpu_flags()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
