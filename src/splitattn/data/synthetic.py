"""Small generated ImageFolders for smoke tests and examples (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def make_synthetic_imagefolder(root: str | os.PathLike, num_classes: int = 3, train_per_class: int = 8,
                               val_per_class: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/{train,val}/class_<k>/*.png``: class ``k`` is a bright square at a class-specific
    place and colour on a noisy background, so a network can learn it in a few steps.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    half = size // 2
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(num_classes):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            colour = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 151 + 40) % 256], dtype=np.float32)
            for i in range(n):
                img = rng.normal(60, 25, (size, size, 3)).clip(0, 255)
                y0, x0 = (k % 2) * half + rng.integers(0, half // 4 + 1), (k // 2 % 2) * half + rng.integers(
                    0, half // 4 + 1)
                img[y0:y0 + half * 3 // 4, x0:x0 + half * 3 // 4] = colour
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


__all__ = ["make_synthetic_imagefolder"]
