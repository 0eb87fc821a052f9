"""The model record: what every file splitattn writes says about the model it holds.

A :class:`ModelSpec` names a registered model, the architecture arguments it was built with beyond the
registered ones, its class count and names, its input channels and its eval preprocessing. Training
checkpoints, safetensors weights (metadata), ``save_pretrained``'s ``config.json`` and INT8 model files
all carry it in one JSON form (:meth:`ModelSpec.to_dict`), and every loader reads it back through
:func:`read_spec` and :meth:`ModelSpec.from_dict`, the one validator: nothing a file says can name weights
to load, an argument the constructor does not take, a value out of range or a model without bound.

The architecture arguments a record may hold, with their types, come from the model class's signature;
their ranges from :data:`ARG_RANGES`. Validation raises :class:`~splitattn.utils.validation.Invalid`; the
loader that read the file turns it into its own error naming the file.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..layers.norm import norm_name
from ..utils.validation import (
    Check,
    Invalid,
    boolean,
    check_fields,
    choice,
    integer,
    number,
    sequence,
    text,
)
from ._registry import get_model_cfg, get_model_class, resolve_name

FORMAT_VERSION = 1
RECORD_KEY = "splitattn.model"
"""Where the record lives: a safetensors metadata entry and a checkpoint entry (a JSON string)."""
MAX_RECORD_BYTES = 4 * 2**20
MAX_NUM_CLASSES = 100_000
MAX_IMAGE_SIDE = 8192
"""Largest eval resize a record may ask for (the released models use at most 448)."""
MAX_ARCH_PARAMS = 1_000_000_000


def _norm(v: Any) -> str:
    try:
        return norm_name(v)
    except (ConfigError, TypeError) as e:
        raise Invalid(f"a norm name ({e})", v) from None


_RATE = number(0.0, 1.0, hi_open=True)
# The ranges of the constructor's arguments a record may set. Upper bounds are far above the released
# models (and the parameter count is capped too), so a file cannot make loading it allocate without limit.
# Booleans need no entry: their type comes from the signature. An argument with neither (a callable) cannot
# be stored.
ARG_RANGES: dict[str, Check] = {
    "layers": sequence(integer(1, 64), 4, 4, "a list of 4 stage depths"),
    "radix": integer(0, 8),
    "cardinality": integer(1, 64),
    "base_width": integer(1, 256),
    "stem_width": integer(1, 256),
    "output_stride": choice(8, 16, 32),
    "drop_rate": _RATE,
    "drop_block_rate": _RATE,
    "norm_layer": _norm,
    "global_pool": choice("avg", "max", "avgmax", ""),
}
TRAINING_ONLY_ARGS = ("drop_rate", "drop_block_rate", "zero_init_last")
"""Arguments that change training or initialisation, not the function of a trained model."""
# Record fields of their own, not architecture arguments.
_OWN_FIELDS = ("num_classes", "in_chans")
_SIZE_ARGS = {"layers", "radix", "cardinality", "base_width", "stem_width", "deep_stem"}


def arg_checks(cls: type[nn.Module]) -> dict[str, Check]:
    """The architecture arguments of ``cls`` a record may hold, each with its check."""
    checks = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in _OWN_FIELDS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if name in ARG_RANGES:
            checks[name] = ARG_RANGES[name]
        elif p.annotation in (bool, "bool"):
            checks[name] = boolean
    return checks


def check_model_args(name: str, args: Any, field_name: str = "model_args") -> dict[str, Any]:
    """``args`` checked as architecture arguments of registered model ``name``, normalised.

    Raises:
        Invalid: an unknown key (naming the allowed ones), a value of the wrong type or out of range, or
            arguments that do not build ``name`` or build one of over :data:`MAX_ARCH_PARAMS` parameters.
    """
    cls = get_model_class(name)
    out = check_fields(arg_checks(cls), args, field_name)
    if "layers" in out:
        out["layers"] = list(out["layers"])
    registered = get_model_cfg(name).arch
    # Only a size other than the registered one can be large (and building costs time, even on meta).
    if any(k in _SIZE_ARGS and json.dumps(v) != json.dumps(registered.get(k)) for k, v in out.items()):
        try:
            with torch.device("meta"):  # shapes only: no memory, no init cost beyond the module tree
                model = cls(**{**registered, **out})
        except (InputError, ValueError, RuntimeError) as e:  # e.g. a group width the radix does not divide
            raise Invalid(f"arguments that build a {name} ({str(e)[:200]})", dict(args), field_name) from None
        n = sum(p.numel() for p in model.parameters())
        if n > MAX_ARCH_PARAMS:
            raise Invalid(f"arguments of a model of at most {MAX_ARCH_PARAMS / 1e6:,.0f}M parameters",
                          field=field_name, shown=f"{n / 1e6:,.0f}M parameters")
    return out


def _model_name(v: Any) -> str:
    if not isinstance(v, str):
        raise Invalid("a registered model name", v)
    try:
        return resolve_name(v)
    except InputError as e:
        raise Invalid(f"a registered model name ({str(e)[:200]})", v) from None


def _data_config(v: Any) -> dict[str, Any]:
    out = check_fields({
        "img_size": integer(1, MAX_IMAGE_SIDE),
        "crop_pct": number(0.0, 1.0, lo_open=True),
        "interpolation": choice("bicubic", "bilinear", "nearest"),
        "mean": sequence(number(-1e6, 1e6), 3, 3, "3 numbers (R, G, B)"),
        "std": sequence(number(0.0, 1e6, lo_open=True), 3, 3, "3 positive numbers (R, G, B)"),
    }, v)
    missing = [k for k in ("img_size", "crop_pct", "interpolation", "mean", "std") if k not in out]
    if missing:
        raise Invalid(f"an eval data config with img_size, crop_pct, interpolation, mean and std (no "
                      f"{', '.join(missing)})", v)
    if out["img_size"] / out["crop_pct"] > MAX_IMAGE_SIDE:
        raise Invalid(f"a resize (img_size / crop_pct) of at most {MAX_IMAGE_SIDE} px", v)
    return {**out, "mean": list(out["mean"]), "std": list(out["std"])}


_FIELDS: dict[str, Check] = {
    "format_version": integer(1, 1_000_000),
    "model_name": _model_name,
    "model_args": lambda v: v,  # checked once the model is known
    "num_classes": integer(0, MAX_NUM_CLASSES),
    "in_chans": integer(1, 256),
    "label_names": sequence(text, 1, MAX_NUM_CLASSES, "a list of class names (strings)"),
    "data_config": _data_config,
}


@dataclass(frozen=True)
class ModelSpec:
    """The record of a model: enough to rebuild it (without weights) and to use it.

    Attributes:
        model_name: the registered name (canonical, not an alias).
        model_args: constructor arguments beyond the registered ones (JSON values, depths as a list).
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        label_names: one name per class, or None.
        data_config: the eval preprocessing as :meth:`~splitattn.data.DataConfig.to_dict` gives it, or None.
    """

    model_name: str
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000
    in_chans: int = 3
    label_names: tuple[str, ...] | None = None
    data_config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON form (what files carry)."""
        d: dict[str, Any] = {"format_version": FORMAT_VERSION, "model_name": self.model_name,
                             "model_args": dict(self.model_args), "num_classes": self.num_classes,
                             "in_chans": self.in_chans}
        if self.label_names is not None:
            d["label_names"] = list(self.label_names)
        if self.data_config is not None:
            d["data_config"] = dict(self.data_config)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """The record in ``raw`` (its JSON form), validated.

        Raises:
            Invalid: a missing, unknown or invalid field, a format newer than this splitattn reads, or
                label names that disagree with ``num_classes``; ``e.field`` names the field.
        """
        d = check_fields(_FIELDS, raw)
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise Invalid(f"at most {FORMAT_VERSION} (this file was written by a newer splitattn: upgrade "
                          "splitattn to read it)", version, "format_version")
        for key in ("model_name", "num_classes"):
            if key not in d:
                raise Invalid("present", shown="nothing", field=key)
        args = check_model_args(d["model_name"], d.get("model_args", {}))
        labels = d.get("label_names")
        if labels is not None and len(labels) != d["num_classes"]:
            raise Invalid(f"{d['num_classes']} names, one per class (num_classes)",
                          shown=f"{len(labels)} names", field="label_names")
        return cls(d["model_name"], args, d["num_classes"], d.get("in_chans", 3), labels,
                   d.get("data_config"))

    @classmethod
    def from_json(cls, raw: Any) -> ModelSpec:
        """:meth:`from_dict` of a JSON string of at most :data:`MAX_RECORD_BYTES`."""
        if not isinstance(raw, str | bytes) or len(raw) > MAX_RECORD_BYTES:
            raise Invalid(f"a JSON string of at most {MAX_RECORD_BYTES // 2**20} MiB",
                          shown=f"a {type(raw).__name__} of {len(raw) if hasattr(raw, '__len__') else '?'}",
                          field=RECORD_KEY)
        try:
            return cls.from_dict(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise Invalid("valid JSON", shown=f"{str(e)[:80]}", field=RECORD_KEY) from None

    @classmethod
    def from_model(cls, model: nn.Module, label_names: Any = None,
                   data_config: Mapping[str, Any] | None = None,
                   model_kwargs: Mapping[str, Any] | None = None) -> ModelSpec:
        """The record of a model of :func:`splitattn.create_model` (its ``model_cfg`` and ``model_kwargs``).

        Args:
            model: the model.
            label_names: one name per class (default: its ``pretrained_cfg``'s, when of its class count).
            data_config: its eval preprocessing (:meth:`~splitattn.data.DataConfig.to_dict`), if recorded.
            model_kwargs: the architecture arguments to record instead of ``model.model_kwargs``.

        Raises:
            InputError: not such a model, or an argument that cannot be written (e.g. a norm layer class).
        """
        cfg = getattr(model, "model_cfg", None)
        if cfg is None or not hasattr(model, "num_classes") or not hasattr(model, "in_chans"):
            raise InputError(f"a {type(model).__name__} has no splitattn model record (model_cfg, "
                             "num_classes, in_chans): build it with splitattn.create_model (a features_only "
                             "model: save "
                             "the classifier it was made from)")
        given = getattr(model, "model_kwargs", None) if model_kwargs is None else model_kwargs
        args = {k: v for k, v in (given or {}).items() if k not in _OWN_FIELDS}
        pcfg = getattr(model, "pretrained_cfg", None)
        known = pcfg.get("label_names") if isinstance(pcfg, Mapping) else None
        if label_names is None and isinstance(known, list | tuple):
            label_names = known
            if len(label_names) != model.num_classes:
                label_names = None  # the weights' labels, not this classifier's
        raw = {"model_name": cfg.name, "model_args": args, "num_classes": int(model.num_classes),
               "in_chans": int(model.in_chans)}
        if label_names is not None:
            raw["label_names"] = list(label_names)
        if data_config is not None:
            raw["data_config"] = dict(data_config)
        try:
            return cls.from_dict(json.loads(json.dumps(raw)))
        except (TypeError, ValueError) as e:  # Invalid is a ValueError; TypeError: not JSON
            raise InputError(f"the record of this {cfg.name} cannot be written ({str(e)[:200]}); build the "
                             "model with plain arguments (e.g. norm_layer='frozenbn'), or pass label names "
                             "of the class count") from None

    @property
    def arch(self) -> dict[str, Any]:
        """All constructor arguments but the record's own fields: the registered ones, then ``model_args``."""
        return {**get_model_cfg(self.model_name).arch, **self.model_args}

    @property
    def function(self) -> dict[str, Any]:
        """What decides the function a trained model computes: every architecture argument (the constructor's
        defaults, the registered ones, ``model_args``; not :data:`TRAINING_ONLY_ARGS`), as JSON values."""
        cls = get_model_class(self.model_name)
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if k in arg_checks(cls)}
        full = {**defaults, **self.arch}
        return json.loads(json.dumps({k: v for k, v in full.items() if k not in TRAINING_ONLY_ARGS},
                                     default=str))

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def check_tensors(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Refuse a state dict whose classifier or first conv disagrees with the record.

        Raises:
            Invalid: naming the record field and the tensor (``num_classes`` 10 vs ``fc.weight`` (5, 512)).
        """
        cfg = get_model_cfg(self.model_name)
        fc = sd.get(f"{cfg.classifier}.weight")
        rows = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 0
        if rows != self.num_classes or (fc is not None and fc.ndim != 2):
            shape = tuple(fc.shape) if fc is not None else "absent"
            raise Invalid(f"the rows of {cfg.classifier}.weight {shape}", self.num_classes, "num_classes")
        conv = sd.get(f"{cfg.first_conv}.weight")
        if conv is not None and (conv.ndim != 4 or conv.shape[1] != self.in_chans):
            raise Invalid(f"the input channels of {cfg.first_conv}.weight {tuple(conv.shape)}", self.in_chans,
                          "in_chans")


_LEGACY_KEYS = ("model_name", "model_kwargs", "classes", "eval_cfg", "splitattn_cfg")


def _legacy_dict(entries: Mapping[str, Any], classifier_rows: int | None, encoded: bool,
                 ) -> dict[str, Any] | None:
    """The record of a file of splitattn 0.1, which wrote its fields as separate entries (JSON strings in
    safetensors metadata: ``encoded``)."""
    def value(key: str) -> Any:
        v = entries.get(key)
        if encoded and isinstance(v, str) and key != "model_name":
            try:
                return json.loads(v)
            except (json.JSONDecodeError, RecursionError):
                raise Invalid("valid JSON", shown=short(v), field=key) from None
        return v

    def short(v: str) -> str:
        return repr(v[:60])

    name = value("model_name")
    registry_cfg = value("splitattn_cfg")
    if name is None and isinstance(registry_cfg, Mapping):
        name = registry_cfg.get("name")
    if name is None:
        return None
    kwargs = value("model_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise Invalid("an object of architecture arguments", kwargs, "model_kwargs")
    args = {k: v for k, v in kwargs.items() if k != "in_chans"}
    classes = value("classes")
    num_classes = len(classes) if isinstance(classes, list) else classifier_rows
    out = {"model_name": name, "model_args": args, "num_classes": 0 if num_classes is None else num_classes,
           "in_chans": kwargs.get("in_chans", 3)}
    if classes is not None:
        out["label_names"] = classes
    if value("eval_cfg") is not None:
        out["data_config"] = value("eval_cfg")
    return out


def read_spec(entries: Mapping[str, Any], classifier_rows: int | None = None, encoded: bool = True,
              ) -> ModelSpec | None:
    """The record a file holds: the :data:`RECORD_KEY` entry, or the separate entries of splitattn 0.1 files.

    Args:
        entries: safetensors metadata (strings) or a checkpoint's top-level dict.
        classifier_rows: the file's classifier rows, the class count of an old file without a class list.
        encoded: an old file's entries are JSON strings (safetensors metadata), not values (a checkpoint).

    Returns:
        The validated record, or None when the file has none (an official or timm file).

    Raises:
        Invalid: the record is malformed; ``e.field`` names the field.
    """
    raw = entries.get(RECORD_KEY)
    if raw is not None:
        return ModelSpec.from_json(raw)
    legacy = _legacy_dict(entries, classifier_rows, encoded)
    return None if legacy is None else ModelSpec.from_dict(legacy)


__all__ = ["ARG_RANGES", "FORMAT_VERSION", "MAX_IMAGE_SIDE", "RECORD_KEY", "TRAINING_ONLY_ARGS", "ModelSpec",
           "arg_checks", "check_model_args", "read_spec"]
