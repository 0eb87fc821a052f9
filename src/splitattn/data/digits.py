"""An ImageFolder built from scikit-learn's handwritten digits (1,797 real 8x8 scans), for the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.fileio import atomic_write_text


def build_digits_imagefolder(root: str | os.PathLike, size: int = 32, val_fraction: float = 0.2,
                             seed: int = 0) -> Path:
    """Write ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` (stratified split).

    The 8x8 scans (16 grey levels) are upscaled bicubically to ``size`` x ``size`` 8-bit greyscale PNGs.
    Re-running with the same arguments reuses the existing folder.

    Returns:
        ``root``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    stamp = root / "digits.json"
    meta = {"size": size, "val_fraction": val_fraction, "seed": seed,
            "source": "sklearn.datasets.load_digits"}
    if stamp.is_file() and json.loads(stamp.read_text()) == meta:
        return root
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    tr, va = train_test_split(idx, test_size=val_fraction, stratify=digits.target, random_state=seed)
    for split, ids in (("train", tr), ("val", va)):
        for i in ids:
            d = root / split / str(int(digits.target[i]))
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).save(d / f"{i:04d}.png")
    atomic_write_text(stamp, json.dumps(meta))  # written last: marks the folder complete
    return root


__all__ = ["build_digits_imagefolder"]
