"""Model registry: one :class:`ModelCfg` per named variant, and one timm ``pretrained_cfg`` per name.

The :class:`ModelCfg` is splitattn's record (architecture, weights URL and SHA-256 prefix, paper figures,
aliases) that ``splitattn info`` and the weights loader read; ``model.model_cfg`` holds it. The
``pretrained_cfg`` (:func:`get_pretrained_cfg`) is a plain dict with timm's keys only, as timm's models
carry it in ``model.pretrained_cfg`` / ``model.default_cfg``: the data pipeline reads it, and so do
``timm.data.resolve_data_config``, ``timm.models.save_for_hf`` and the other tools written for timm. An
alias (timm's name, e.g. ``resnest50d``) gets timm's values for that name, the official name the
official ones.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..data.preprocessing import DEFAULT_DATA_CONFIG as _DEFAULT
from ..errors import ConfigError, InputError


@dataclass(frozen=True)
class ModelCfg:
    """Architecture and pretrained metadata of a registered model (``model.model_cfg``).

    The data fields (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``) are the official
    name's; what a model preprocesses with is its ``pretrained_cfg`` dict (:func:`get_pretrained_cfg`),
    where an alias has timm's values.

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


# The fields of timm's PretrainedCfg dataclass (timm.models._pretrained): timm.create_model,
# PretrainedCfg(**cfg) and save_for_hf accept a pretrained_cfg made of these keys only.
PRETRAINED_CFG_KEYS = (
    "url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag",
    "custom_load", "input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation",
    "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset", "label_names",
    "label_descriptions", "pool_size", "test_pool_size", "first_conv", "classifier", "license",
    "description", "origin_url", "paper_name", "paper_ids", "notes",
)

_CFGS: dict[str, ModelCfg] = {}
_CLASSES: dict[str, type[nn.Module]] = {}
_ALIASES: dict[str, str] = {}
_PRETRAINED: dict[str, dict[str, Any]] = {}  # registered name or alias -> its pretrained_cfg


def default_pretrained_cfg(
    input_size: tuple[int, int, int] = (3, 224, 224),
    reduction: int = 32,
    **values: Any,
) -> dict[str, Any]:
    """A timm-style ``pretrained_cfg`` dict: ResNeSt's defaults, then ``values`` (timm's keys only).

    Args:
        input_size: ``(C, H, W)``; ``pool_size`` follows from it and ``reduction`` (the output stride).
        reduction: the stride of the last feature map.
        **values: other :data:`PRETRAINED_CFG_KEYS` fields (``url``, ``interpolation``, ``crop_pct``...).

    Raises:
        ConfigError: a key timm's ``PretrainedCfg`` does not have.
    """
    unknown = sorted(set(values) - set(PRETRAINED_CFG_KEYS))
    if unknown:
        raise ConfigError(f"pretrained_cfg keys {unknown} are not fields of timm's PretrainedCfg; "
                          f"use {', '.join(PRETRAINED_CFG_KEYS)}")
    size = tuple(int(v) for v in input_size)
    cfg: dict[str, Any] = dict(
        custom_load=False, input_size=size, fixed_input_size=False, interpolation=_DEFAULT.interpolation,
        crop_pct=_DEFAULT.crop_pct, crop_mode="center", mean=_DEFAULT.mean, std=_DEFAULT.std,
        num_classes=1000,
        pool_size=tuple(math.ceil(s / reduction) for s in size[1:]), first_conv="conv1.0", classifier="fc",
    )
    cfg.update(values)
    return {k: cfg[k] for k in PRETRAINED_CFG_KEYS if k in cfg}  # in timm's field order


def _registered_pretrained_cfg(cfg: ModelCfg, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The pretrained_cfg of ``name`` (``cfg.name`` or an alias): the ModelCfg's values, then ``values``."""
    base = dict(url=cfg.url, architecture=name, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct,
                mean=cfg.mean, std=cfg.std, num_classes=cfg.num_classes, first_conv=cfg.first_conv,
                classifier=cfg.classifier)
    values = dict(values)
    return default_pretrained_cfg(values.pop("input_size", cfg.input_size), **{**base, **values})


def register_model(cfg: ModelCfg, cls: type[nn.Module],
                   pretrained_cfgs: Mapping[str, Mapping[str, Any]] | None = None) -> ModelCfg:
    """Register ``cfg`` (and its aliases) as built by ``cls(**cfg.arch, **kwargs)``.

    Args:
        cfg: the model's record.
        cls: the model class.
        pretrained_cfgs: per name (``cfg.name`` or one of ``cfg.aliases``), the ``pretrained_cfg`` values
            that differ from the ModelCfg's (timm's keys only; an alias's are timm's for that name); the
            key ``"*"`` gives values for every name.

    Raises:
        ValueError: a name registered twice, or ``pretrained_cfgs`` for a name ``cfg`` does not have.
        ConfigError: a ``pretrained_cfg`` key timm's ``PretrainedCfg`` does not have.
    """
    names = (cfg.name, *cfg.aliases)
    for n in names:
        if n in _CFGS or n in _ALIASES:
            raise ValueError(f"model name {n!r} is registered twice")
    per_name = dict(pretrained_cfgs or {})
    common = per_name.pop("*", {})
    if set(per_name) - set(names):
        raise ValueError(f"pretrained_cfgs for {sorted(set(per_name) - set(names))}, which are not "
                         f"{cfg.name!r} or its aliases {cfg.aliases}")
    pretrained = {n: _registered_pretrained_cfg(cfg, n, {**common, **per_name.get(n, {})}) for n in names}
    _CFGS[cfg.name] = cfg
    _CLASSES[cfg.name] = cls
    for a in cfg.aliases:
        _ALIASES[a] = cfg.name
    _PRETRAINED.update(pretrained)
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
    """The :class:`ModelCfg` of a model name or alias (an alias gets its model's record)."""
    return _CFGS[resolve_name(name)]


def get_pretrained_cfg(name: str) -> dict[str, Any]:
    """A fresh timm-style ``pretrained_cfg`` dict of a model name or alias (timm's tag, ``.in1k``, ignored).

    An alias gets timm's values for that name (``resnest50d``: bilinear, ``hf_hub_id``
    ``"timm/resnest50d.in1k"``...), an official name the official ones (``resnest50``: bicubic); every
    key is a field of timm's ``PretrainedCfg``, so ``timm.models.PretrainedCfg(**cfg)`` accepts it.

    Raises:
        InputError: an unknown name, listing close ones.
    """
    base = name.split(".", 1)[0] if isinstance(name, str) else name
    if base not in _PRETRAINED:
        resolve_name(name)  # raises, naming close matches
    return copy.deepcopy(_PRETRAINED[base])


def get_model_class(name: str) -> type[nn.Module]:
    return _CLASSES[resolve_name(name)]


def list_models(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (sorted by registration)."""
    names = list(_CFGS)
    if include_aliases:
        names += list(_ALIASES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
