"""Digits top-1 and logit cosine of the tests' ResNeSt-14 in fp32 and INT8 (reference graph and kernels).

Trains the model of ``tests/test_quantize.py`` (scikit-learn's digits at 32 px, 4 epochs, seed 0: the same
weights on the same machine and torch), calibrates :func:`splitattn.quantize` on 256 train images, and
prints one JSON line: fp32, INT8 reference graph (``compile=False``) and INT8 oneDNN kernels
(``compile=True``) top-1 on the 360 val images, and the kernels' min logit cosine to fp32. Run it under two
source trees to compare INT8 recipes on one model.

    python benchmarks/digits_int8_accuracy.py --data /tmp/digits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import splitattn  # noqa: E402
from splitattn.data.digits import build_digits_imagefolder  # noqa: E402
from test_quantize import _load_split, _top1, _train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits_data", help="digits ImageFolder (built there if absent)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    if not (root / "val").is_dir():
        root = build_digits_imagefolder(root, size=32)
    xtr, ytr = _load_split(root, "train")
    xva, yva = _load_split(root, "val")
    model = _train(xtr, ytr)
    calibration = [xtr[i:i + 64] for i in range(0, 256, 64)]
    with torch.no_grad():
        fp32 = model(xva)
    reference = splitattn.quantize(model, calibration, compile=False)(xva)
    kernels = splitattn.quantize(model, calibration, compile=True)(xva)
    print(json.dumps({
        "splitattn": str(Path(splitattn.__file__).parent), "torch": torch.__version__,
        "fp32_top1": round(_top1(fp32, yva), 2), "int8_reference_top1": round(_top1(reference, yva), 2),
        "int8_kernels_top1": round(_top1(kernels, yva), 2),
        "int8_kernels_cos_min": round(F.cosine_similarity(kernels, fp32).min().item(), 5),
        "int8_kernels_agree": round((kernels.argmax(1) == fp32.argmax(1)).float().mean().item(), 4)}))


if __name__ == "__main__":
    main()
