"""Evaluation preprocessing read from a model's config (crop size, crop ratio, interpolation, mean/std)."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..models.registry import ModelCfg, get_model_cfg

_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
           "nearest": InterpolationMode.NEAREST}


def resolve_eval_cfg(model_or_cfg: Any, img_size: int | None = None, crop_pct: float | None = None,
                     ) -> dict[str, Any]:
    """Crop size, resize size, interpolation and mean/std for evaluation.

    Args:
        model_or_cfg: a model name, a :class:`ModelCfg`, or a model with ``pretrained_cfg``.
        img_size: crop side (default: the config's).
        crop_pct: crop side / resized short side (default: the config's, e.g. 224/256 = 0.875).

    Returns:
        dict with ``crop_size``, ``resize_size`` (= round(crop / crop_pct)), ``interpolation``,
        ``mean``, ``std``. Rounding (not flooring) matters: a ratio given to three decimals
        (``--crop-ratio 0.889`` for 256 / 288), or even the exact ratio in floating point, can put
        crop / ratio just under an integer, and flooring would give 287 instead of the paper's 288.
    """
    if isinstance(model_or_cfg, str):
        cfg = get_model_cfg(model_or_cfg)
    elif isinstance(model_or_cfg, ModelCfg):
        cfg = model_or_cfg
    else:
        cfg = getattr(model_or_cfg, "pretrained_cfg", None) or get_model_cfg("resnest50")
    crop = int(img_size or cfg.crop_size)
    pct = float(crop_pct or cfg.crop_pct)
    if not 0 < pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {pct}")
    return dict(crop_size=crop, resize_size=int(round(crop / pct)), interpolation=cfg.interpolation,
                mean=tuple(cfg.mean), std=tuple(cfg.std))


def create_eval_transform(model_or_cfg: Any, img_size: int | None = None,
                          crop_pct: float | None = None) -> T.Compose:
    """PIL image or uint8 tensor -> normalised float tensor ``(3, crop, crop)``.

    Resize the short side to ``round(crop / crop_pct)`` with the config's interpolation, centre-crop
    ``crop``, scale to [0, 1], normalise with mean/std (the paper's eval protocol).
    """
    e = resolve_eval_cfg(model_or_cfg, img_size, crop_pct)
    return T.Compose([
        T.ToImage(),
        T.Resize(e["resize_size"], interpolation=_INTERP[e["interpolation"]], antialias=True),
        T.CenterCrop(e["crop_size"]),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(e["mean"], e["std"]),
    ])
