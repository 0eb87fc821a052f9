"""Dataset constants shared by the models' configs and the data pipeline (the one definition of each).

The data layer sits below the models, which take their default normalisation from here.
"""

from __future__ import annotations

# ImageNet RGB mean and std of pixels scaled to [0, 1] (torchvision's / the paper's normalisation).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]
