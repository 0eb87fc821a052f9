"""Max |logit difference| between splitattn and the reference implementations, model by model.

Reference weights are random with non-trivial BatchNorm statistics (as in tests/test_equivalence.py),
saved to a .pth, loaded with ``splitattn.create_model(name, pretrained=path)``; fp32, eval mode, batch 1.

    python benchmarks/equivalence.py [--sizes 224 97x131]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import splitattn  # noqa: E402
from conftest import ALL_MODELS, randomize_stats, reference_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["224", "97x131"])
    ap.add_argument("--models", nargs="+", default=ALL_MODELS)
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) if "x" in s else (int(s), int(s)) for s in args.sizes]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, fp32, eval, batch 1")
    cols = " | ".join(f"max abs diff @{h}x{w}" for h, w in sizes)
    print(f"| model | reference | {cols} | max abs logit |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ref = randomize_stats(reference_model(name)).eval()
            path = Path(tmp) / f"{name}.pth"
            torch.save(ref.state_dict(), path)
            ours = splitattn.create_model(name, pretrained=str(path)).eval()
            diffs, scale = [], 0.0
            for h, w in sizes:
                x = torch.randn(1, 3, h, w)
                with torch.no_grad():
                    a, b = ref(x), ours(x)
                diffs.append((a - b).abs().max().item())
                scale = max(scale, a.abs().max().item())
            src = "timm" if name in ("resnest14d", "resnest26d") else "resnest.torch"
            cells = " | ".join(f"{d:.1e}" for d in diffs)
            print(f"| {name} | {src} | {cells} | {scale:.1f} |", flush=True)


if __name__ == "__main__":
    main()
