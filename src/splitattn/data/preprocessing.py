"""The one resolver of evaluation preprocessing (crop, crop ratio, interpolation, mean/std), as timm's
``resolve_data_config``: from a model name, a :class:`~splitattn.models.registry.ModelCfg`, a model, or
the ``eval_cfg`` dict stored in checkpoints, with keyword overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.transforms import InterpolationMode

from ..errors import ConfigError, InputError

INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}

DEFAULT_MODEL = "resnest50"


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


def _model_cfg_to_data_config(cfg: Any) -> DataConfig:
    return DataConfig(cfg.crop_size, cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std)


def _base_config(source: Any) -> DataConfig:
    from ..models.registry import ModelCfg, get_model_cfg

    if source is None:
        return _model_cfg_to_data_config(get_model_cfg(DEFAULT_MODEL))
    if isinstance(source, DataConfig):
        return source
    if isinstance(source, str):
        return _model_cfg_to_data_config(get_model_cfg(source))
    if isinstance(source, ModelCfg):
        return _model_cfg_to_data_config(source)
    if isinstance(source, Mapping):
        return DataConfig.from_dict(source)
    if hasattr(source, "pretrained_cfg"):
        return _base_config(source.pretrained_cfg)  # None (no config) -> the defaults
    if isinstance(source, nn.Module):
        return _base_config(None)
    raise InputError(f"cannot read a data config from a {type(source).__name__}; pass a model name, a "
                     "ModelCfg, a DataConfig, a dict from DataConfig.to_dict() or a model")


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
        source: ``None`` (resnest50's defaults), a model name, a ``ModelCfg``, a :class:`DataConfig`,
            a dict from :meth:`DataConfig.to_dict` (the ``eval_cfg`` of checkpoints), or a model with
            ``pretrained_cfg`` (a module without one gets the defaults).
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
    """Record ``data_cfg`` in ``model.pretrained_cfg`` (a copy of its ``ModelCfg`` with the run's input
    size, crop ratio, interpolation and mean/std), so evaluation and saved weights use it.

    Args:
        model: a model of :func:`splitattn.create_model` (its ``pretrained_cfg`` is a ``ModelCfg``).
        data_cfg: a :class:`DataConfig` or a dict from :meth:`DataConfig.to_dict`.

    Returns:
        ``model``.
    """
    from ..models.registry import ModelCfg

    base = getattr(model, "pretrained_cfg", None)
    if not isinstance(base, ModelCfg):
        raise InputError(f"{type(model).__name__} has no ModelCfg in .pretrained_cfg (got "
                         f"{type(base).__name__}); build it with splitattn.create_model")
    d = resolve_data_config(data_cfg)
    model.pretrained_cfg = dataclasses.replace(
        base, input_size=(3, d.crop_size, d.crop_size), crop_pct=d.crop_pct, interpolation=d.interpolation,
        mean=d.mean, std=d.std,
    )
    return model


__all__ = ["DataConfig", "INTERPOLATIONS", "apply_data_config", "resolve_data_config"]
