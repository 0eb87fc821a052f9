"""``create_model``: build a registered model, a Hugging Face Hub model or a saved folder, with weights.

A model name is a registered name or alias (``"resnest50"``, timm's ``"resnest50d.in1k"``),
``"hf-hub:owner/repo[@rev]"`` or ``"local-dir:PATH"`` (see :mod:`splitattn.models._hub`). Whatever the weights
come with (a Hub or folder ``config.json``, a splitattn file's metadata, a classifier's shape) rebuilds the
model they came from: its architecture arguments, ``in_chans`` and ``num_classes``, unless the caller gives
them.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..data.preprocessing import apply_data_config
from ..errors import InputError, WeightsError
from . import resnest_cfgs  # noqa: F401  (registers the variants create_model builds)
from ._features import check_out_indices, features_only_model
from ._hub import ModelSource, hf_source, local_dir_source, parse_model_name
from ._pretrained import is_url, read_pretrained
from ._registry import (
    get_model_cfg,
    get_model_class,
    get_pretrained_cfg,
    list_models,
    resolve_name,
)
from ._spec import ModelSpec
from ._weights import WeightsFile, check_same_function, classifier_rows, load_state_dict_into

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
            (a folder of :func:`~splitattn.models._hub.save_pretrained` or timm's ``save_for_hf``).
        pretrained: ``False``; ``True`` for the released weights (the release URL, else its Hugging Face
            mirror, hash-checked either way; for ``hf-hub:`` / ``local-dir:`` names, that repo's or folder's
            weights); a URL; a model folder (``config.json`` + ``model.safetensors``); or a weights file
            (official ``.pth``, timm ``.pth`` / ``.safetensors``, splitattn safetensors).
        num_classes: classifier outputs (0 = no classifier); default the weights' class count, else the
            registry's (1000). With weights of another class count the classifier weights are dropped and
            the new classifier keeps its fresh init.
        in_chans: input channels; default the weights', else 3. RGB stem weights are adapted to others.
        features_only: return the feature extractor of
            :func:`~splitattn.models._features.features_only_model` (stage outputs in ``out_indices``,
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
        :func:`~splitattn.models._hub.save_pretrained` records).

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
    src = _source(kind, ident, pretrained)
    _check_kwargs(src.spec.model_name, get_model_class(src.spec.model_name), kwargs)
    args = {**src.spec.model_args, **kwargs}
    if output_stride is not None:
        args["output_stride"] = output_stride
    n_classes = _first(num_classes, src.spec.num_classes)
    labels = src.spec.label_names if n_classes == src.spec.num_classes else None
    spec = src.spec.replace(model_args=args, num_classes=n_classes, label_names=labels,
                            in_chans=_first(in_chans, src.spec.in_chans))
    model = build_model(spec, src.variant, src.pretrained_cfg)
    if src.weights is not None:
        load_state_dict_into(model, src.weights, model.model_cfg,
                             new_head=spec.num_classes != src.spec.num_classes,
                             new_stem=spec.in_chans != src.spec.in_chans)
    if features_only:
        model = features_only_model(model, out_indices=out_indices, feature_cls=feature_cls)
    return model


def build_model(spec: ModelSpec, variant: str = "", pretrained_cfg: Mapping[str, Any] | None = None,
                ) -> nn.Module:
    """A freshly initialised model of ``spec`` (no weights), with its record's label names and eval
    preprocessing.

    Args:
        spec: the record; its ``model_args`` may hold what a record cannot (a norm layer class).
        variant: the registered name or alias whose ``pretrained_cfg`` applies (default ``spec``'s).
        pretrained_cfg: fields over the registry's ``pretrained_cfg`` (a Hub or folder config's).

    Returns:
        The model, with ``model_cfg``, ``model_kwargs`` (what records it) and ``pretrained_cfg`` set.
    """
    cfg = get_model_cfg(spec.model_name)
    arch = dict(spec.model_args)
    stride = arch.pop("output_stride", _DEFAULT_OUTPUT_STRIDE)
    model = get_model_class(cfg.name)(num_classes=spec.num_classes, in_chans=spec.in_chans,
                                      output_stride=stride, **{**cfg.arch, **arch})
    model.model_cfg = cfg
    model.model_kwargs = {**arch, "in_chans": spec.in_chans,
                          **({"output_stride": stride} if stride != _DEFAULT_OUTPUT_STRIDE else {})}
    pcfg = {**get_pretrained_cfg(variant or cfg.name), **(pretrained_cfg or {})}
    if spec.label_names is not None:
        pcfg["label_names"] = list(spec.label_names)
    elif len(pcfg.get("label_names") or ()) != spec.num_classes:
        pcfg.pop("label_names", None)  # the weights' labels, not this classifier's
    pcfg["input_size"] = (spec.in_chans, *tuple(pcfg.get("input_size") or cfg.input_size)[1:])
    model.pretrained_cfg = pcfg
    if spec.data_config is not None:
        apply_data_config(model, spec.data_config)
    return model


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _source(kind: str | None, ident: str, pretrained: bool | str | os.PathLike | None) -> ModelSource:
    """What a parsed model name and ``pretrained`` say about the model, with the weights to load."""
    want = pretrained is not None and pretrained is not False
    folder = want and pretrained is not True and not is_url(pretrained) and Path(pretrained).is_dir()
    if kind == "hf-hub":
        return hf_source(ident, weights=pretrained is True)
    if kind == "local-dir":
        return local_dir_source(ident, weights=pretrained is True)
    name = resolve_name(ident)
    if folder:
        src = local_dir_source(pretrained, weights=True)
        if src.spec.model_name != name:
            raise WeightsError(f"{pretrained} holds a {src.spec.model_name} (its config.json), not a "
                               f"{name}; use create_model('local-dir:{pretrained}')")
        return src
    cfg = get_model_cfg(name)
    if not want:
        return ModelSource(ModelSpec(name, num_classes=cfg.num_classes, in_chans=cfg.input_size[0]), ident)
    weights = read_pretrained(pretrained, cfg)
    return ModelSource(_file_spec(weights, name), ident, weights=weights, origin=str(weights.path))


def model_from_weights(weights: WeightsFile, name: str) -> nn.Module:
    """The model ``create_model(name, pretrained=weights.path)`` gives, from a file already read."""
    model = build_model(_file_spec(weights, resolve_name(name)), name)
    return load_state_dict_into(model, weights, model.model_cfg)


def _file_spec(weights: WeightsFile, name: str) -> ModelSpec:
    """The model a bare weights file describes for ``create_model(name, pretrained=file)``: its record when it
    has one (of ``name``, or of a model computing the same function), else its shapes (classes, channels)."""
    cfg = get_model_cfg(name)
    if weights.spec is not None:
        if weights.spec.model_name == name:
            return weights.spec
        check_same_function(weights.spec, name, weights.path)
        return weights.spec.replace(model_name=name, model_args={})
    sd = weights.state_dict
    rows = classifier_rows(sd, cfg.classifier)
    conv = sd.get(f"{cfg.first_conv}.weight")
    chans = int(conv.shape[1]) if conv is not None and conv.ndim == 4 else cfg.input_size[0]
    return ModelSpec(name, num_classes=cfg.num_classes if rows is None else rows, in_chans=chans)


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


__all__ = ["build_model", "create_model", "list_models", "model_from_weights"]
