"""``create_model``: build a registered model, optionally with weights, optionally as a backbone."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from .errors import InputError
from .models.features import FeatureListNet, check_out_indices
from .models.registry import get_model_cfg, get_model_class, list_models
from .weights import load_pretrained

_SET_BY_CREATE_MODEL = ("num_classes", "in_chans", "output_stride")


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int = 1000,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    output_stride: int = 32,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered ResNeSt by name (official or timm name).

    Args:
        name: e.g. ``"resnest50"`` or its timm alias ``"resnest50d"``; see :func:`list_models`.
        pretrained: ``False``; ``True`` for the released weights (downloaded to the cache, SHA-256
            checked); a URL; or a local path to an official ``.pth``, a timm ``.pth``/``.safetensors``,
            or a splitattn safetensors file.
        num_classes: classifier outputs (0 = no classifier). With pretrained weights of another class
            count the classifier weights are dropped and the new classifier keeps its fresh init.
        in_chans: input channels; pretrained RGB stem weights are adapted.
        features_only: return a :class:`~splitattn.models.features.FeatureListNet` giving the list of
            stage outputs in ``out_indices`` (0 = stem, 1-4 = layer1-4); wrap the model in
            :class:`~splitattn.models.features.FeatureDictNet` for named outputs.
        out_indices: with ``features_only``, the stages returned (in stage order).
        output_stride: 32, 16 or 8 (dilated layer3/layer4, for dense prediction).
        **kwargs: other :class:`~splitattn.models.ResNeSt` arguments (``drop_rate``, ``norm_layer``...).

    Returns:
        The model, with its :class:`ModelCfg` as ``model.pretrained_cfg``.

    Raises:
        InputError: an unknown model name (listing close names), an unknown keyword argument (listing
            the valid ones), or an invalid architecture argument (``num_classes < 0``, ``in_chans < 1``,
            an ``output_stride`` other than 8, 16, 32...: the model constructor's check, naming it).
        ConfigError: ``out_indices`` outside 0..4.
    """
    if features_only:
        check_out_indices(out_indices)  # before any download
    cfg = get_model_cfg(name)
    cls = get_model_class(name)
    _check_kwargs(cfg.name, cls, kwargs)
    arch = {**cfg.arch, **kwargs}
    model = cls(num_classes=num_classes, in_chans=in_chans, output_stride=output_stride, **arch)
    model.pretrained_cfg = cfg
    if pretrained is not False and pretrained is not None:
        load_pretrained(model, pretrained, cfg)
    if features_only:
        model = FeatureListNet(model, out_indices)
    return model


def _check_kwargs(name: str, cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    """InputError listing the valid arguments when ``kwargs`` holds one that ``cls`` does not take."""
    valid = [p for p in inspect.signature(cls).parameters if p not in _SET_BY_CREATE_MODEL]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        close = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, valid, n=1))}
        hint = "".join(f"; did you mean {m!r} for {k!r}?" for k, m in close.items())
        raise InputError(f"unknown argument(s) {unknown} for model {name!r}{hint} (valid: "
                         f"{', '.join(valid)}; and create_model's own num_classes, in_chans, "
                         "output_stride, pretrained, features_only, out_indices)")


__all__ = ["create_model", "list_models"]
