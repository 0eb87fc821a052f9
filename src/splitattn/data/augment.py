"""The paper's training augmentation (torchvision transforms v2) and batch-level MixUp."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..errors import ConfigError
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .preprocessing import INTERPOLATIONS

# PCA of ImageNet RGB pixels (AlexNet, Krizhevsky et al. 2012), as used by GluonCV/ResNeSt's Lighting.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class PCALighting(nn.Module):
    """AlexNet-style PCA lighting noise: add ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, std)``.

    Not in torchvision. Acts on float images in [0, 1], shape ``(..., 3, H, W)``; one ``alpha`` per call.
    """

    def __init__(self, alphastd: float = 0.1, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC) -> None:
        super().__init__()
        self.alphastd = float(alphastd)
        self.register_buffer("eigval", torch.tensor(eigval), persistent=False)
        self.register_buffer("eigvec", torch.tensor(eigvec), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.view(3, 1, 1).to(img.dtype)

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}"


_AA = {"imagenet": T.AutoAugmentPolicy.IMAGENET, "cifar10": T.AutoAugmentPolicy.CIFAR10,
       "svhn": T.AutoAugmentPolicy.SVHN}


def create_train_transform(
    img_size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = "imagenet",
    color_jitter: float = 0.4,
    pca_lighting: float = 0.1,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """PIL image -> normalised ``(3, img_size, img_size)`` float tensor, the paper's ImageNet recipe.

    RandomResizedCrop -> horizontal flip -> AutoAugment (policy) -> ColorJitter(b, c, s) -> [0, 1]
    float -> PCA lighting -> Normalize. Any step is dropped by setting its strength to 0/``None``.
    """
    if auto_augment and auto_augment.lower() not in _AA:
        raise ConfigError(f"auto_augment must be one of {sorted(_AA)} or null, got {auto_augment!r}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    interp = INTERPOLATIONS[interpolation]
    ops: list[nn.Module] = [
        T.ToImage(),
        T.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=interp,
                            antialias=True),
    ]
    if hflip > 0:
        ops.append(T.RandomHorizontalFlip(hflip))
    if auto_augment:
        ops.append(T.AutoAugment(_AA[auto_augment.lower()], interpolation=InterpolationMode.BILINEAR))
    if color_jitter > 0:
        ops.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    ops.append(T.ToDtype(torch.float32, scale=True))
    if pca_lighting > 0:
        ops.append(PCALighting(pca_lighting))
    ops.append(T.Normalize(tuple(mean), tuple(std)))
    return T.Compose(ops)


def create_mixup(alpha: float, num_classes: int) -> T.MixUp | None:
    """torchvision's batch MixUp (``lam ~ Beta(alpha, alpha)``, soft one-hot targets), or ``None``.

    Call as ``images, targets = mixup(images, labels)``: ``targets`` becomes ``(B, num_classes)``.
    """
    if alpha <= 0:
        return None
    return T.MixUp(alpha=alpha, num_classes=num_classes)


__all__ = ["PCALighting", "create_mixup", "create_train_transform"]
