"""ImageFolder datasets (torchvision's :class:`~torchvision.datasets.DatasetFolder`) and the one image
reader of the data package, with errors that name the folder or file at fault and say how to fix it."""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import has_file_allowed_extension

from ..errors import BadImageError, ConfigError, DataError, MissingFileError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

SKIP_HINT = "delete or replace it, or set skip_bad_images (--skip-bad-images) to skip such files"

# Resizing an image's short side to S gives S * S * (long side / short side) pixels, so a tiny PNG of
# 1 x 2,000,000 pixels asks an eval resize for gigabytes. An image whose resized size would exceed this
# many pixels (a float tensor of 768 MiB) is a bad image.
MAX_RESIZED_PIXELS = 2**26
# The short side assumed when the caller does not say (at least every classifier's eval resize).
DEFAULT_SHORT_SIDE = 512

T = TypeVar("T")

log = logging.getLogger("splitattn")


def decode_image_file(path: str | os.PathLike, decode: Callable[[Image.Image], T], what: str = "image",
                      hint: str = "delete or replace it") -> T:
    """Open ``path`` with PIL and return ``decode(image)``, run while the file is open.

    Raises:
        BadImageError: the file is missing, cannot be decoded (corrupt or truncated), or has more pixels
            than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb); the message names the file and ends
            with ``hint``.
    """
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that, then decodes the whole image anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return decode(im)
    except BadImageError:
        raise
    except FileNotFoundError as e:
        raise BadImageError(f"{what} {path} does not exist; check the dataset folder, or {hint}") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(
            f"{what} {path} is too large to decode safely ({e}); shrink it, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS if you trust the file, or {hint}"
        ) from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise BadImageError(f"cannot read {what} {path} ({e}); it is corrupt or truncated: {hint}") from e


def _to_rgb8(im: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel. 16-bit (and 32-bit integer) greyscale is scaled from 0..65535 and
    float greyscale from 0..1, where PIL's ``convert`` would clip every value above 255 to white."""
    if im.mode.startswith("I") or im.mode == "F":
        scale = 255.0 if im.mode == "F" else 255.0 / 65535.0
        arr = np.asarray(im, dtype=np.float64) * scale
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def check_resizable(path: str | os.PathLike, size: tuple[int, int], short_side: int,
                    hint: str = "delete or replace it") -> None:
    """Raise :class:`BadImageError` when an image of ``size`` (width, height), resized so that its short
    side is ``short_side``, would have more than :data:`MAX_RESIZED_PIXELS` pixels (an extreme aspect
    ratio, or an empty image)."""
    w, h = size
    short, long = min(w, h), max(w, h)
    limit = MAX_RESIZED_PIXELS
    if short >= 1 and short_side * math.ceil(long * short_side / short) <= limit:
        return
    ratio = f"aspect ratio {long / short:.0f}:1" if short else "no pixels"
    raise BadImageError(
        f"image {path} is {w} x {h} pixels ({ratio}): resized to a short side of {short_side} it would have "
        f"more than {limit} pixels (splitattn.data.imagefolder.MAX_RESIZED_PIXELS); crop it, or {hint}"
    )


def load_rgb(path: str | os.PathLike, hint: str = "delete or replace it",
             short_side: int | None = DEFAULT_SHORT_SIDE) -> Image.Image:
    """Decode ``path`` fully as an 8-bit RGB PIL image.

    Args:
        path: the image file.
        hint: what to do about a bad file, ending the error message.
        short_side: the short side the caller's transform resizes the image to (the largest, for a
            random resize); an image that would then exceed :data:`MAX_RESIZED_PIXELS` is a bad image,
            rejected before it is decoded. ``None`` skips this check.

    Raises:
        BadImageError: naming the file, when it is missing, corrupt, truncated or too large, or its
            resized size would be.
    """
    def decode(im: Image.Image) -> Image.Image:
        if short_side is not None:
            check_resizable(path, im.size, short_side, hint)
        return _to_rgb8(im)

    return decode_image_file(path, decode, "image", hint)


def transform_short_side(transform: Any) -> int | None:
    """The largest short side ``transform`` resizes images to: its ``max_short_side`` attribute (set by
    :func:`~splitattn.data.transforms.create_eval_transform` and the segmentation transforms), else
    ``None`` (unknown)."""
    side = getattr(transform, "max_short_side", None)
    return side if isinstance(side, int) and not isinstance(side, bool) and side > 0 else None


def find_image_classes(root: str | os.PathLike, what: str = "dataset") -> tuple[list[str], dict[str, int]]:
    """Sorted class folders of an ImageFolder (hidden folders skipped) and their indices.

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: ``root`` has no class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{what} folder {root} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{what} folder {root} has no class sub-folders; put the images of each class in "
                        f"{root}/<class_name>/ (ImageFolder layout)")
    return classes, {c: i for i, c in enumerate(classes)}


def _nested(a: Path, b: Path) -> bool:
    """Whether one of two folders is the other or inside it."""
    return a.is_relative_to(b) or b.is_relative_to(a)


def _walk_class_folder(top: str, roots: list[Path], skipped: list[str]) -> list[tuple[str, list[str]]]:
    """``(folder, file names)`` of ``top`` and its sub-folders, each real folder once.

    A linked folder is followed only when its target is outside every folder of ``roots`` and does not
    contain one (the class folders and the link targets already followed, which then joins them): a link
    back to an ancestor, to a folder already scanned or into another class folder is appended to
    ``skipped`` (as ``"link -> target"``) instead, so loops end and no image counts twice or under
    another class.
    """
    out: list[tuple[str, list[str]]] = []
    stack = [top]
    while stack:
        for folder, dirs, files in os.walk(stack.pop()):  # does not follow links: handled below
            out.append((folder, files))
            for name in dirs:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    continue
                real = Path(os.path.realpath(path))
                if any(_nested(real, r) for r in roots):
                    skipped.append(f"{path} -> {real}")
                else:
                    roots.append(real)
                    stack.append(path)
    return out


def make_image_samples(root: str | os.PathLike, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """``(path, class_index)`` of every image under ``root/<class>/`` (any depth), in torchvision's
    ``make_dataset`` order (classes, then folders, then files sorted), with :data:`IMG_EXTENSIONS`.

    Linked folders are followed once each, and not when they lead back to an ancestor, to a folder
    already scanned or into another class folder (one warning names the links skipped).

    Raises:
        DataError: a class folder without images, or a class folder that is a link to (or into) another.
    """
    folders = {c: os.path.join(str(root), c) for c in sorted(class_to_idx)}
    roots = _class_folder_roots(folders)
    skipped: list[str] = []
    samples = []
    for cls, folder in folders.items():
        for sub, files in sorted(_walk_class_folder(folder, roots, skipped), key=lambda t: t[0]):
            samples += [(os.path.join(sub, f), class_to_idx[cls]) for f in sorted(files)
                        if has_file_allowed_extension(f, IMG_EXTENSIONS)]
    if skipped:
        log.warning("skipped %d linked folder(s) under %s that lead back to a folder already scanned or "
                    "into another class folder (their images are read once, through their real path): %s",
                    len(skipped), root, ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    found = {t for _, t in samples}
    for name, idx in class_to_idx.items():
        if idx not in found:
            raise DataError(
                f"class folder {Path(root) / name} has no images (extensions {', '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    return samples


def _class_folder_roots(folders: dict[str, str]) -> list[Path]:
    """The real paths of the class folders; DataError when one is (inside) another through a link."""
    reals = {c: Path(os.path.realpath(f)) for c, f in folders.items()}
    # Sorted by path components, the folders inside a folder come right after it: comparing neighbours
    # finds any nesting without comparing every pair.
    order = sorted(reals, key=lambda c: reals[c].parts)
    for a, b in zip(order, order[1:]):
        if reals[b].is_relative_to(reals[a]):
            raise DataError(
                f"class folders {folders[a]} and {folders[b]} are the same folder or one holds the other "
                f"(through a link: {reals[a]}, {reals[b]}), so their images would count under two classes; "
                "replace the link by a folder of its own images"
            )
    return list(reals.values())


def scan_image_folder(root: str | os.PathLike, what: str = "dataset",
                      ) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folder names) and ``(path, class_index)`` samples of an ImageFolder.

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: no class folders, or a class folder without images.
    """
    classes, class_to_idx = find_image_classes(root, what)
    return classes, make_image_samples(root, class_to_idx)


def resolve_split_dirs(data: str | os.PathLike | None) -> tuple[Path, Path]:
    """``DIR`` -> ``(DIR/train, DIR/val)`` with clear errors when either is missing."""
    if data is None:
        raise ConfigError("no data folder given; pass --data DIR holding train/ and val/ "
                          "(ImageFolder layout)")
    root = Path(data)
    if not root.is_dir():
        raise MissingFileError(f"data folder {root} does not exist; pass --data DIR holding train/ and val/")
    train, val = root / "train", root / "val"
    if not train.is_dir():
        raise MissingFileError(f"data folder {root} has no train/ sub-folder; expected "
                               f"{train}/<class>/<image> and {val}/<class>/<image>")
    if not val.is_dir():
        raise MissingFileError(f"data folder {root} has no val/ sub-folder; expected {val}/<class>/<image> "
                               "with the same class folders as train/")
    return train, val


def check_same_classes(train_classes: Sequence[str], val_classes: Sequence[str], train_dir: str | os.PathLike,
                       val_dir: str | os.PathLike) -> None:
    """Raise :class:`DataError` listing the differences when the two class lists differ."""
    if list(train_classes) != list(val_classes):
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise DataError(
            f"the class folders of {val_dir} differ from those of {train_dir}: "
            f"only in train: {only_t[:10] or 'none'}, only in val: {only_v[:10] or 'none'}; "
            "make both hold the same class sub-folders"
        )


class ImageFolderDataset(DatasetFolder):
    """An ImageFolder (``root/<class>/<image>``) returning ``(transform(image), class_index)``.

    torchvision's ``DatasetFolder`` (same class order and sample list) with errors naming the folder
    or file at fault, hidden folders skipped, and unreadable images optionally skipped. Wrap it in
    :class:`~splitattn.data.seeded.SeededDataset` for reproducible augmentation.

    Args:
        root: folder of class folders.
        transform: PIL image -> tensor (e.g. ``(3, H, W)``); ``None`` returns the PIL image.
        classes: expected class names (the train classes) for a val split; a mismatch is an error.
        skip_bad_images: return ``None`` for an unreadable file instead of raising (the loader's
            :func:`collate_skip_bad` drops and counts them).
        what: ``"train"``/``"val"``, used in error messages.

    Attributes:
        classes, class_to_idx, samples (``[(path, class_index)]``), targets.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 classes: Sequence[str] | None = None, skip_bad_images: bool = False,
                 what: str = "dataset") -> None:
        self.what = what  # read by find_classes, which DatasetFolder.__init__ calls
        # A partial of a module-level function (not a lambda) so the dataset pickles to DataLoader workers.
        loader = functools.partial(load_rgb, hint=SKIP_HINT,
                                   short_side=transform_short_side(transform) or DEFAULT_SHORT_SIDE)
        super().__init__(str(root), loader=loader, extensions=IMG_EXTENSIONS, transform=transform)
        if classes is not None:
            check_same_classes(classes, self.classes, "train", root)
        self.skip_bad_images = skip_bad_images

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return find_image_classes(directory, self.what)

    @staticmethod
    def make_dataset(directory: str | os.PathLike, class_to_idx: dict[str, int], extensions: Any = None,
                     is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        return make_image_samples(directory, class_to_idx)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        return read_or_skip(super().__getitem__, index, self.skip_bad_images)


def read_or_skip(read: Callable[[int], T], index: int, skip: bool) -> T | None:
    """``read(index)``; when ``skip``, ``None`` instead of a :class:`BadImageError` (logged, naming the
    file), for the collate functions to drop and count."""
    try:
        return read(index)
    except BadImageError as e:
        if not skip:
            raise
        log.warning("skipped: %s", e)
        return None


def drop_skipped(batch: Sequence[T | None]) -> tuple[list[T], int]:
    """The items of ``batch`` that are not ``None`` (unreadable, skipped), and how many were."""
    good = [b for b in batch if b is not None]
    return good, len(batch) - len(good)


def collate_skip_bad(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; returns ``(images (B, 3, H, W), targets (B,), n_skipped)``, with
    ``B = 0`` (images ``(0, 3, 0, 0)``) when no sample could be read."""
    good, n_bad = drop_skipped(batch)
    if not good:
        return torch.zeros(0, 3, 0, 0), torch.zeros(0, dtype=torch.long), n_bad
    x = torch.stack([g[0] for g in good])
    y = torch.tensor([g[1] for g in good], dtype=torch.long)
    return x, y, n_bad


__all__ = ["DEFAULT_SHORT_SIDE", "IMG_EXTENSIONS", "MAX_RESIZED_PIXELS", "SKIP_HINT", "ImageFolderDataset",
           "check_resizable", "check_same_classes", "collate_skip_bad", "decode_image_file", "drop_skipped",
           "find_image_classes", "load_rgb", "make_image_samples", "read_or_skip", "resolve_split_dirs",
           "scan_image_folder", "transform_short_side"]
