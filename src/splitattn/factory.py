"""``create_model``: build a registered model, a Hugging Face Hub model or a saved folder, with weights.

A model name is a registered name or alias (``"resnest50"``, timm's ``"resnest50d.in1k"``),
``"hf-hub:owner/repo[@rev]"`` or ``"local-dir:PATH"`` (see :mod:`splitattn.hub`). Whatever the weights come
with (a Hub or folder ``config.json``, a splitattn file's metadata, a classifier's shape) rebuilds the model
they came from: its architecture arguments, ``in_chans`` and ``num_classes``, unless the caller gives them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .errors import InputError, WeightsError
from .hub import ModelSource, hf_source, local_dir_source, parse_model_name
from .models.features import check_out_indices, features_only_model
from .models.registry import (
    ModelCfg,
    get_model_cfg,
    get_model_class,
    get_pretrained_cfg,
    list_models,
    resolve_name,
)
from .weights import file_source, load_state_dict_into, read_state_dict, resolve_weights

_SET_BY_CREATE_MODEL = ("num_classes", "in_chans", "output_stride")
_DEFAULT_OUTPUT_STRIDE = 32


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    feature_cls: str | None = None,
    output_stride: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered ResNeSt by name, from the Hugging Face Hub or from a saved folder.

    Args:
        name: a registered name, e.g. ``"resnest50"`` or its timm alias ``"resnest50d"`` (a timm tag such as
            ``".in1k"`` is accepted; see :func:`list_models`); ``"hf-hub:timm/resnest50d.in1k"`` (a Hub repo
            in timm's format, ``@revision`` optional; needs ``huggingface_hub``); or ``"local-dir:PATH"``
            (a folder of :func:`~splitattn.hub.save_pretrained` or timm's ``save_for_hf``).
        pretrained: ``False``; ``True`` for the released weights (the release URL, else its Hugging Face
            mirror, hash-checked either way; for ``hf-hub:`` / ``local-dir:`` names, that repo's or folder's
            weights); a URL; a model folder (``config.json`` + ``model.safetensors``); or a weights file
            (official ``.pth``, timm ``.pth`` / ``.safetensors``, splitattn safetensors).
        num_classes: classifier outputs (0 = no classifier); default the weights' class count, else the
            registry's (1000). With weights of another class count the classifier weights are dropped and
            the new classifier keeps its fresh init.
        in_chans: input channels; default the weights', else 3. RGB stem weights are adapted to others.
        features_only: return the feature extractor of
            :func:`~splitattn.models.features.features_only_model` (stage outputs in ``out_indices``,
            0 = stem, 1-4 = layer1-4), as timm does.
        out_indices: with ``features_only``, the stages returned (default: the extractor's).
        feature_cls: with ``features_only``, the extractor class (``"list"``, ``"dict"``...; default list).
        output_stride: 32, 16 or 8 (dilated layer3/layer4, for dense prediction); default the file's, else 32.
        **kwargs: other :class:`~splitattn.models.ResNeSt` arguments (``drop_rate``, ``norm_layer``...);
            they take precedence over the ones a file records.

    Returns:
        The model: ``model.pretrained_cfg`` is its timm-style pretrained config (a dict, with a Hub or folder
        config's fields over the registry's), ``model.model_cfg`` its :class:`ModelCfg` and
        ``model.model_kwargs`` the architecture arguments it was built with (what
        :func:`~splitattn.hub.save_pretrained` records).

    Raises:
        InputError: an unknown model name (listing close names) or source prefix, an unknown keyword argument
            (listing the valid ones), or an invalid architecture argument (the constructor's check).
        ConfigError: ``out_indices`` outside 0..4 (before anything is downloaded).
        WeightsError: weights or a config that cannot be had or used (named, with why).
        MissingFileError: a ``local-dir:`` folder, or its ``config.json`` or weights, does not exist.
        MissingDependencyError: an ``hf-hub:`` name without ``huggingface_hub`` installed.
    """
    if features_only:
        check_out_indices(out_indices, n=5)  # before any download
    kind, ident = parse_model_name(name)
    if kind is None:  # before any download too
        _check_kwargs(resolve_name(ident), get_model_class(ident), kwargs)
    src, state = _source(kind, ident, pretrained)
    cfg = get_model_cfg(src.name)
    cls = get_model_class(src.name)
    _check_kwargs(cfg.name, cls, kwargs)
    arch = {**src.kwargs, **kwargs}
    stride = _first(output_stride, arch.pop("output_stride", None), _DEFAULT_OUTPUT_STRIDE)
    n_classes = _first(num_classes, src.num_classes, cfg.num_classes)
    chans = _first(in_chans, src.in_chans, cfg.input_size[0])
    model = cls(num_classes=n_classes, in_chans=chans, output_stride=stride, **{**cfg.arch, **arch})
    model.model_cfg = cfg
    model.model_kwargs = {**arch, "in_chans": chans,
                          **({"output_stride": stride} if stride != _DEFAULT_OUTPUT_STRIDE else {})}
    model.pretrained_cfg = _pretrained_cfg(cfg, src, chans)
    if state is not None:
        load_state_dict_into(model, *state, src.weights, cfg, headless=src.num_classes == 0)
    if features_only:
        model = features_only_model(model, out_indices=out_indices, feature_cls=feature_cls)
    return model


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://", "file://"))


def _source(kind: str | None, ident: str, pretrained: bool | str | os.PathLike | None,
            ) -> tuple[ModelSource, tuple[dict, dict] | None]:
    """What a parsed model name and ``pretrained`` say about the model, and the weights to load as
    ``(state dict, metadata)``."""
    want = pretrained is not None and pretrained is not False
    folder = want and pretrained is not True and not _is_url(pretrained) and Path(pretrained).is_dir()
    if kind == "hf-hub":
        src = hf_source(ident, weights=pretrained is True)
    elif kind == "local-dir":
        src = local_dir_source(ident, weights=pretrained is True)
    elif folder:
        src = local_dir_source(pretrained, weights=True)
        if src.name != resolve_name(ident):
            raise WeightsError(f"{pretrained} holds a {src.name} (its config.json), not a "
                               f"{resolve_name(ident)}; use create_model('local-dir:{pretrained}')")
    else:
        src = ModelSource(resolve_name(ident), ident)
    if not want:
        return src, None
    cfg = get_model_cfg(src.name)
    if src.weights is None:
        src.weights = resolve_weights(pretrained, cfg)
    sd, meta = read_state_dict(src.weights)
    if kind is None and not folder:  # a bare file: its metadata (or shapes) describe the model
        src = dataclasses.replace(file_source(sd, meta, src.weights, cfg), variant=ident)
    return src, (sd, meta)


def _pretrained_cfg(cfg: ModelCfg, src: ModelSource, in_chans: int) -> dict[str, Any]:
    """The registry's pretrained config with a Hub / folder / file config's fields over it, as timm does."""
    pcfg = {**get_pretrained_cfg(src.variant or cfg.name), **src.pretrained_cfg}
    size = tuple(pcfg.get("input_size") or cfg.input_size)
    pcfg["input_size"] = (in_chans, *size[1:])
    return pcfg


def _check_kwargs(name: str, cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    """InputError listing the valid arguments when ``kwargs`` holds one that ``cls`` does not take."""
    valid = [p for p in inspect.signature(cls).parameters if p not in _SET_BY_CREATE_MODEL]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        close = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, valid, n=1))}
        hint = "".join(f"; did you mean {m!r} for {k!r}?" for k, m in close.items())
        raise InputError(f"unknown argument(s) {unknown} for model {name!r}{hint} (valid: "
                         f"{', '.join(valid)}; and create_model's own num_classes, in_chans, "
                         "output_stride, pretrained, features_only, out_indices, feature_cls)")


__all__ = ["create_model", "list_models"]
