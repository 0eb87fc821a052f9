"""The one resolver of evaluation preprocessing (crop, crop ratio, interpolation, mean/std), as timm's
``resolve_data_config``: from a model's timm-style ``pretrained_cfg`` dict (for a model name, the
registry's: ``resolve_data_config(get_pretrained_cfg(name))``), a model, a legacy ``ModelCfg``, or the
``eval_cfg`` dict stored in checkpoints, with keyword overrides.

The data layer sits below the models: nothing here imports :mod:`splitattn.models`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.transforms import InterpolationMode

from ..errors import ConfigError, InputError
from .constants import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}



def _triple(key: str, value: Any) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key} must be 3 numbers (R, G, B), got {value!r}") from e
    if len(out) != 3:
        raise ConfigError(f"{key} must be 3 numbers (R, G, B), got {len(out)}: {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class DataConfig:
    """Evaluation preprocessing: resize the short side to :attr:`resize_size`, centre-crop
    ``crop_size``, scale to [0, 1] and normalise with ``mean``/``std``.

    Values are checked (and coerced to int / float / tuples) on construction; a bad one raises
    :class:`~splitattn.errors.ConfigError` naming the key.
    """

    crop_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        try:
            crop, pct = int(self.crop_size), float(self.crop_pct)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"img_size must be an integer and crop_pct a number, got "
                              f"img_size={self.crop_size!r}, crop_pct={self.crop_pct!r}") from e
        if crop < 1 or crop != self.crop_size:
            raise ConfigError(f"img_size must be a positive integer, got {self.crop_size!r}")
        if not 0 < pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1] (crop side / resized short side), got {pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                              f"got {self.interpolation!r}")
        std = _triple("std", self.std)
        if min(std) <= 0:
            raise ConfigError(f"std must be positive, got {std}")
        for key, value in (("crop_size", crop), ("crop_pct", pct), ("mean", _triple("mean", self.mean)),
                           ("std", std)):
            object.__setattr__(self, key, value)

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop: ``round(crop_size / crop_pct)``.

        Rounding (not flooring) matters: a ratio given to three decimals (``--crop-ratio 0.889`` for
        256 / 288), or even the exact ratio in floating point, can put crop / ratio just under an
        integer, and flooring would give 287 instead of the paper's 288.
        """
        return int(round(self.crop_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the ``eval_cfg`` stored in checkpoints and weights metadata)."""
        return {"img_size": self.crop_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """Inverse of :meth:`to_dict`; also reads timm's ``input_size`` (C, H, W) for ``img_size``."""
        d = dict(d)
        if "img_size" not in d and "input_size" in d:
            d["img_size"] = d["input_size"][-1]
        missing = [k for k in ("img_size", "crop_pct", "interpolation", "mean", "std") if k not in d]
        if missing:
            raise ConfigError(f"data config {d} lacks the key(s) {missing}; it needs img_size, crop_pct, "
                              "interpolation, mean and std")
        return cls(d["img_size"], d["crop_pct"], d["interpolation"], d["mean"], d["std"])


DEFAULT_DATA_CONFIG = DataConfig(224, 0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
"""What a model without a data config preprocesses with: resnest50's (timm's defaults for ResNeSt)."""


def _is_model_cfg(cfg: Any) -> bool:
    """A legacy ``ModelCfg`` (the registry's dataclass), known by its fields: this layer cannot import it."""
    return dataclasses.is_dataclass(cfg) and not isinstance(cfg, (type, DataConfig)) and all(
        hasattr(cfg, k) for k in ("input_size", "crop_size", "crop_pct", "interpolation", "mean", "std"))


def _model_cfg_to_data_config(cfg: Any) -> DataConfig:
    return DataConfig(cfg.crop_size, cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std)


def _model_data_config(model: Any) -> DataConfig:
    """From ``model.pretrained_cfg``: a timm-style dict (keys it lacks take the defaults, as timm's
    resolver falls back to its own), a legacy ModelCfg, or none (the defaults)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if _is_model_cfg(cfg):
        return _model_cfg_to_data_config(cfg)
    if cfg is None:
        return DEFAULT_DATA_CONFIG
    if not isinstance(cfg, Mapping):
        raise InputError(f"{type(model).__name__}.pretrained_cfg must be a dict of timm's keys, got "
                         f"{type(cfg).__name__}")
    defaults = DEFAULT_DATA_CONFIG.to_dict()
    present = {k: cfg[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std")
               if cfg.get(k) is not None}
    if "input_size" in present:
        defaults.pop("img_size")
    return DataConfig.from_dict({**defaults, **present})


def _base_config(source: Any) -> DataConfig:
    if source is None:
        return DEFAULT_DATA_CONFIG
    if isinstance(source, DataConfig):
        return source
    if isinstance(source, str):
        raise InputError(f"resolve_data_config takes a model, a pretrained_cfg dict or a DataConfig, not the "
                         f"name {source!r}: for a registered model's values pass "
                         f"splitattn.get_pretrained_cfg({source!r})")
    if _is_model_cfg(source):
        return _model_cfg_to_data_config(source)
    if isinstance(source, Mapping):
        return DataConfig.from_dict(source)
    if isinstance(source, nn.Module) or hasattr(source, "pretrained_cfg"):
        return _model_data_config(source)
    raise InputError(f"cannot read a data config from a {type(source).__name__}; pass a pretrained_cfg "
                     "dict (splitattn.get_pretrained_cfg(name) for a model name), a ModelCfg, a DataConfig, "
                     "a dict from DataConfig.to_dict() or a model")


def resolve_data_config(
    source: Any = None,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataConfig:
    """The eval preprocessing of ``source``, with the keyword overrides that are not ``None``.

    Args:
        source: ``None`` (the defaults, resnest50's), a ``ModelCfg``, a :class:`DataConfig`, a dict from
            :meth:`DataConfig.to_dict` (the ``eval_cfg`` of checkpoints) or a timm-style
            ``pretrained_cfg`` dict, or a model with ``pretrained_cfg`` (a module without one gets the
            defaults).
        img_size: crop side.
        crop_pct: crop side / resized short side (e.g. 224 / 256 = 0.875).
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        mean, std: RGB normalisation of [0, 1] pixels.

    Raises:
        ConfigError: a value is out of range, naming the key.
    """
    base = _base_config(source)
    overrides = {"crop_size": img_size, "crop_pct": crop_pct, "interpolation": interpolation, "mean": mean,
                 "std": std}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def apply_data_config(model: nn.Module, data_cfg: DataConfig | Mapping[str, Any]) -> nn.Module:
    """Record ``data_cfg`` in ``model.pretrained_cfg`` (a new dict: the model's with the run's input
    size, crop ratio, interpolation and mean/std; ``pool_size`` follows the input size), so evaluation,
    saved weights and timm's tools use it.

    Args:
        model: a model with a timm-style ``pretrained_cfg`` dict (any ResNeSt; a legacy ``ModelCfg``
            there is replaced by a copy, as before).
        data_cfg: a :class:`DataConfig` or a dict from :meth:`DataConfig.to_dict`.

    Returns:
        ``model``.

    Raises:
        InputError: ``model`` has no ``pretrained_cfg``.
    """
    base = getattr(model, "pretrained_cfg", None)
    d = resolve_data_config(data_cfg)
    if _is_model_cfg(base):
        model.pretrained_cfg = dataclasses.replace(
            base, input_size=(base.input_size[0], d.crop_size, d.crop_size), crop_pct=d.crop_pct,
            interpolation=d.interpolation, mean=d.mean, std=d.std)
        return model
    if not isinstance(base, Mapping):
        raise InputError(f"{type(model).__name__} has no pretrained_cfg dict (got {type(base).__name__}); "
                         "build it with splitattn.create_model or splitattn.ResNeSt")
    cfg = dict(base)
    channels = tuple(cfg.get("input_size") or (3,))[0]
    cfg.update(input_size=(channels, d.crop_size, d.crop_size), crop_pct=d.crop_pct,
               interpolation=d.interpolation, mean=d.mean, std=d.std)
    info = getattr(model, "feature_info", None)
    if cfg.get("pool_size") is not None and info:
        reduction = info[-1]["reduction"]
        cfg["pool_size"] = (math.ceil(d.crop_size / reduction),) * 2
    model.pretrained_cfg = cfg
    return model


__all__ = ["DEFAULT_DATA_CONFIG", "DataConfig", "INTERPOLATIONS", "apply_data_config", "resolve_data_config"]
