"""Model registry: one :class:`ModelCfg` per named variant.

The config is the single record that ``splitattn info``, the data pipeline (crop, interpolation,
mean/std) and the weights loader (URL, SHA-256 prefix) all read.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import InputError


@dataclass(frozen=True)
class ModelCfg:
    """Architecture and pretrained metadata of a registered model.

    Attributes:
        name: registry name (the official one where there is one).
        arch: keyword arguments of the model class.
        input_size: ``(C, H, W)`` of training and evaluation.
        crop_pct: eval centre-crop ratio (crop side / resized short side).
        interpolation: ``"bicubic"`` or ``"bilinear"`` for the eval resize.
        mean, std: input normalisation.
        url: released weights; ``hash_prefix`` is the first hex digits of their SHA-256.
        top1: reported ImageNet top-1 of those weights (%).
        params: parameter count of the 1000-class model.
        gmacs: multiply-adds (1e9) at ``input_size``, batch 1.
        aliases: other names (timm's) that resolve to this model.
        source: where the weights come from.
    """

    name: str
    arch: dict[str, Any]
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    url: str = ""
    hash_prefix: str = ""
    top1: float | None = None
    params: int | None = None
    gmacs: float | None = None
    num_classes: int = 1000
    first_conv: str = "conv1.0"
    classifier: str = "fc"
    aliases: tuple[str, ...] = ()
    source: str = ""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else ""

    @property
    def crop_size(self) -> int:
        return self.input_size[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["file_name"] = self.file_name
        return d


_CFGS: dict[str, ModelCfg] = {}
_CLASSES: dict[str, type[nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_model(cfg: ModelCfg, cls: type[nn.Module]) -> ModelCfg:
    """Register ``cfg`` (and its aliases) as built by ``cls(**cfg.arch, **kwargs)``."""
    for n in (cfg.name, *cfg.aliases):
        if n in _CFGS or n in _ALIASES:
            raise ValueError(f"model name {n!r} is registered twice")
    _CFGS[cfg.name] = cfg
    _CLASSES[cfg.name] = cls
    for a in cfg.aliases:
        _ALIASES[a] = cfg.name
    return cfg


def resolve_name(name: str) -> str:
    """Canonical name for a model name or alias; a ValueError lists close names if it is unknown."""
    name = name.split(".", 1)[0]  # accept timm's "resnest50d.in1k" tags
    if name in _CFGS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    import difflib

    close = difflib.get_close_matches(name, [*_CFGS, *_ALIASES], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"unknown model {name!r}{hint} (splitattn.list_models() lists them)")


def get_model_cfg(name: str) -> ModelCfg:
    """The :class:`ModelCfg` of a model name or alias."""
    return _CFGS[resolve_name(name)]


def get_model_class(name: str) -> type[nn.Module]:
    return _CLASSES[resolve_name(name)]


def list_models(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (sorted by registration)."""
    names = list(_CFGS)
    if include_aliases:
        names += list(_ALIASES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
