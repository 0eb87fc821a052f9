"""ImageFolder datasets with checks that name the folder or file at fault and say how to fix it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class BadImageError(ValueError):
    """An image file cannot be decoded (corrupt or truncated)."""


def _list_classes(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(root: str | os.PathLike, what: str = "dataset",
                      ) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folder names) and ``(path, class_index)`` samples of an ImageFolder.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no class folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist")
    classes = _list_classes(root)
    if not classes:
        raise ValueError(f"{what} folder {root} has no class sub-folders; put the images of each class in "
                         f"{root}/<class_name>/ (ImageFolder layout)")
    samples: list[tuple[str, int]] = []
    for idx, name in enumerate(classes):
        files = []
        for dirpath, _, filenames in os.walk(root / name, followlinks=True):
            files += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMG_EXTENSIONS)]
        if not files:
            raise ValueError(
                f"class folder {root / name} has no images (extensions {', '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        samples += [(f, idx) for f in sorted(files)]
    return classes, samples


def resolve_split_dirs(data: str | os.PathLike) -> tuple[Path, Path]:
    """``DIR`` -> ``(DIR/train, DIR/val)`` with clear errors when either is missing."""
    if data is None:
        raise ValueError("no data folder given; pass --data DIR holding train/ and val/ (ImageFolder layout)")
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; pass --data DIR holding train/ and val/")
    train, val = root / "train", root / "val"
    if not train.is_dir():
        raise FileNotFoundError(f"data folder {root} has no train/ sub-folder; expected "
                                f"{train}/<class>/<image> and {val}/<class>/<image>")
    if not val.is_dir():
        raise FileNotFoundError(f"data folder {root} has no val/ sub-folder; expected {val}/<class>/<image> "
                                "with the same class folders as train/")
    return train, val


def check_same_classes(train_classes: Sequence[str], val_classes: Sequence[str], train_dir: Path,
                       val_dir: Path) -> None:
    if list(train_classes) != list(val_classes):
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"the class folders of {val_dir} differ from those of {train_dir}: "
            f"only in train: {only_t[:10] or 'none'}, only in val: {only_v[:10] or 'none'}; "
            "make both hold the same class sub-folders"
        )


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully as RGB; :class:`BadImageError` names the file when it cannot."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise BadImageError(
            f"cannot read image {path} ({e}); it is corrupt or truncated: delete or replace it, or pass "
            "--skip-bad-images to skip such files"
        ) from e


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index): augmentation is then the same whatever
    the number of workers, the world size, or where a resumed run restarts."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class ImageFolderDataset(Dataset):
    """An ImageFolder (``root/<class>/<image>``) returning ``(image (3, H, W), class_index)``.

    Args:
        root: folder of class folders.
        transform: PIL image -> tensor.
        classes: expected class names (the train classes) for a val split; a mismatch is an error.
        skip_bad_images: return ``None`` for an unreadable file instead of raising (the loader's
            :func:`collate_skip_bad` drops and counts them).
        seed: base seed for per-sample augmentation (see :func:`sample_seed`); ``None``: the global RNG.
        what: ``"train"``/``"val"``, used in error messages.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 classes: Sequence[str] | None = None, skip_bad_images: bool = False, seed: int | None = None,
                 what: str = "dataset") -> None:
        self.root = Path(root)
        self.classes, self.samples = scan_image_folder(self.root, what)
        if classes is not None:
            check_same_classes(classes, self.classes, Path("train"), self.root)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.seed = seed
        self.epoch = 0
        self.targets = [t for _, t in self.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            img = load_rgb(path)
        except BadImageError:
            if self.skip_bad_images:
                return None
            raise
        if self.transform is None:
            return img, target
        if self.seed is None:
            return self.transform(img), target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transform(img), target


def collate_skip_bad(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; returns ``(images (B, 3, H, W), targets (B,), n_skipped)``."""
    good = [b for b in batch if b is not None]
    n_bad = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), n_bad
    x = torch.stack([g[0] for g in good])
    y = torch.tensor([g[1] for g in good], dtype=torch.long)
    return x, y, n_bad


def unwrap_worker_error(e: BaseException) -> str:
    """The one-line message of an error re-raised by a DataLoader worker (which adds a traceback)."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


__all__ = ["BadImageError", "ImageFolderDataset", "IMG_EXTENSIONS", "check_same_classes", "collate_skip_bad",
           "load_rgb", "resolve_split_dirs", "sample_seed", "scan_image_folder", "unwrap_worker_error"]
