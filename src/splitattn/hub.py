"""Models on the Hugging Face Hub and in local folders, the way timm distributes them.

* ``create_model("hf-hub:timm/resnest50d.in1k")`` reads the repo's ``config.json`` (and, with
  ``pretrained=True``, ``model.safetensors`` or ``pytorch_model.bin``) through ``huggingface_hub``: its
  cache (``$HF_HUB_CACHE``), its offline mode (``$HF_HUB_OFFLINE``), a revision as ``@rev``. Every file
  is checked against the hub's hash before use: the blob a cache entry links to is named by that hash
  (the SHA-256 of an LFS file, the git SHA-1 of a small one).
* ``create_model("local-dir:PATH")`` and ``pretrained=PATH`` read a folder holding ``config.json`` and
  weights, as timm's ``local-dir:`` does.
* :func:`save_pretrained` writes such a folder, which splitattn and timm both load.

``config.json`` is timm's format: ``architecture`` (timm's name, mapped to ours through the registry's
aliases), ``num_classes``, ``label_names``, ``model_args`` and ``pretrained_cfg``; splitattn adds a
``"splitattn"`` entry (registry name and architecture arguments) that timm ignores. What a file says is
validated: it never names weights to load, an unknown argument or an unbounded size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .download import hf_file, hf_weights_file
from .errors import InputError, MissingFileError, SplitAttnError, WeightsError
from .fileio import atomic_write_text
from .models.registry import (
    PRETRAINED_CFG_KEYS,
    ModelCfg,
    get_model_cfg,
    get_pretrained_cfg,
    list_models,
    resolve_name,
    short_repr,
    validate_arch_kwargs,
)

log = logging.getLogger("splitattn")

HF_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
LOCAL_WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, "pytorch_model.bin", "pytorch_model.pth", "model.pth")
SPLITATTN_KEY = "splitattn"
"""The ``config.json`` entry holding splitattn's registry name and architecture arguments."""
MAX_NUM_CLASSES = 100_000
MAX_CONFIG_BYTES = 16 * 2**20
# Keys that name weights to load: a file's values for them are never used.
_WEIGHT_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")
# The architecture name of a variant of a timm model that timm cannot build (so timm refuses it).
_OURS_ONLY = "splitattn_"
# Constructor arguments that only matter for training or initialisation (timm leaves them out too).
_TRAINING_ONLY = ("drop_rate", "drop_block_rate", "zero_init_last")
_SOURCE_PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-_]+")


@dataclass
class ModelSource:
    """What a config or weights file says about the model it describes (validated).

    Attributes:
        name: the registered model.
        variant: the name whose ``pretrained_cfg`` applies (timm's ``resnest50d`` gets timm's values).
        kwargs: architecture arguments beyond the registered ones (no ``in_chans``).
        num_classes, in_chans: the file's, or None when it does not say.
        pretrained_cfg: ``pretrained_cfg`` fields that override the registry's (timm's keys only).
        weights: the weights file to load, if any.
        origin: what it came from, for messages (``"hf-hub:timm/resnest14d.gluon_in1k"``, a path).
    """

    name: str
    variant: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int | None = None
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    origin: str = ""


# -- model names -------------------------------------------------------------------------------------
def parse_model_name(name: str) -> tuple[str | None, str]:
    """Split ``"hf-hub:owner/repo"`` / ``"local-dir:PATH"`` into ``(source, id)``; ``(None, name)`` otherwise.

    Raises:
        InputError: an unknown source prefix, an empty id, or a name that looks like a repo id or path
            without a prefix (which would otherwise load the registry model of the same base name).
    """
    if not isinstance(name, str):
        raise InputError(f"a model name must be a string, got {type(name).__name__}")
    source, sep, ident = name.partition(":")
    if not sep or not _SOURCE_PREFIX.fullmatch(source):
        if any(c in name for c in "/\\:"):
            raise InputError(f"model name {name!r} looks like a Hugging Face Hub repo id or a folder: use "
                             f"'{HF_PREFIX}{name}' or '{LOCAL_PREFIX}{name}'")
        return None, name
    source = {"hf_hub": "hf-hub"}.get(source.lower(), source.lower())
    if source not in ("hf-hub", "local-dir"):
        raise InputError(f"unknown model source {source!r} in {name!r}; use '{HF_PREFIX}owner/repo' "
                         f"or '{LOCAL_PREFIX}PATH', or a registered name (splitattn.list_models())")
    if not ident:
        raise InputError(f"model name {name!r} has nothing after '{source}:'")
    return source, ident


# -- config.json ---------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike, origin: str) -> dict[str, Any]:
    """The JSON object in ``path``; WeightsError naming ``origin`` and the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{origin}: {path} does not exist; a model folder holds {CONFIG_NAME} and "
                               f"{SAFE_WEIGHTS_NAME} (splitattn.save_pretrained writes both)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{origin}: {path} is over {MAX_CONFIG_BYTES // 2**20} MiB; not a model config")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{origin}: {path} is not valid JSON ({str(e)[:120]})") from e
    if not isinstance(cfg, dict):
        raise WeightsError(f"{origin}: {path} holds a JSON {type(cfg).__name__}, not an object")
    return cfg


class _Bad(Exception):
    """A value outside its spec; the message says what was expected."""


def _num(lo: float, hi: float, integer: bool = False) -> Callable[[Any], Any]:
    kind = "an integer" if integer else "a number"

    def check(v: Any) -> Any:
        ok = isinstance(v, int) if integer else isinstance(v, int | float) and math.isfinite(v)
        if isinstance(v, bool) or not ok or not lo <= v <= hi:
            raise _Bad(f"{kind} in [{lo}, {hi}]")
        return v
    return check


def _seq(item: Callable[[Any], Any], lo: int, hi: int, what: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, list | tuple) or not lo <= len(v) <= hi:
            raise _Bad(what)
        try:
            return [item(x) for x in v]
        except _Bad:
            raise _Bad(what) from None
    return check


def _text(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 10_000:
        raise _Bad("a string")
    return v


def _std(v: Any) -> list[float]:
    out = _seq(_num(0.0, 1e6), 1, 256, "1 to 256 numbers")(v)
    if any(x <= 0 for x in out):
        raise _Bad("positive numbers")
    return out


def _choice(*options: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise _Bad(f"one of {list(options)}")
        return v
    return check


def _labels(v: Any) -> Any:
    if isinstance(v, Mapping):  # timm allows {class index: name} when the indices have gaps
        if len(v) > MAX_NUM_CLASSES or not all(isinstance(k, str) and k.isdigit() for k in v):
            raise _Bad("a list of names or a mapping of class indices to names")
        return {k: _text(x) for k, x in v.items()}
    return _seq(_text, 0, MAX_NUM_CLASSES, "a list of class names (strings)")(v)


_SIZE = _seq(_num(1, 8192, True), 3, 3, "3 integers (C, H, W), each in [1, 8192]")
_POOL = _seq(_num(1, 8192, True), 2, 2, "2 integers in [1, 8192]")
_PRETRAINED_SPEC: dict[str, Callable[[Any], Any]] = {
    "input_size": _SIZE, "test_input_size": _SIZE, "min_input_size": _SIZE,
    "pool_size": _POOL, "test_pool_size": _POOL,
    "crop_pct": _num(0.05, 1.0), "test_crop_pct": _num(0.05, 1.0),
    "interpolation": _choice("bicubic", "bilinear", "nearest"),
    "crop_mode": _choice("center", "squash", "border"),
    "mean": _seq(_num(-1e6, 1e6), 1, 256, "1 to 256 numbers"), "std": _std,
    "num_classes": _num(0, MAX_NUM_CLASSES, True), "label_offset": _num(0, 10, True),
    "fixed_input_size": _choice(True, False), "custom_load": lambda v: v if isinstance(v, bool) else _text(v),
    "first_conv": _text, "classifier": _text, "architecture": _text, "tag": _text, "license": _text,
    "description": _text, "origin_url": _text, "paper_name": _text,
    "paper_ids": lambda v: v if isinstance(v, str) else _seq(_text, 0, 100, "strings")(v),
    "notes": lambda v: v if isinstance(v, str) else _seq(_text, 0, 100, "strings")(v),
    "label_names": _labels,
    "label_descriptions": lambda v: {_text(k): _text(x) for k, x in v.items()} if isinstance(v, Mapping)
    else _labels(v),
}


def _valid(spec: Callable[[Any], Any], value: Any, origin: str, key: str) -> Any:
    try:
        return spec(value)
    except _Bad as e:
        raise WeightsError(f"{origin}: {key!r} must be {e}, got {short_repr(value)}") from None


def clean_pretrained_cfg(pcfg: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """A file's ``pretrained_cfg`` reduced to timm's keys, validated; the keys naming weights dropped.

    Raises:
        WeightsError: a value of the wrong type or out of range, naming ``origin`` and the key.
    """
    out = {}
    for key, value in pcfg.items():
        if key in _WEIGHT_SOURCE_KEYS or value is None or key not in _PRETRAINED_SPEC:
            continue
        out[key] = _valid(_PRETRAINED_SPEC[key], value, origin, f"pretrained_cfg.{key}")
    return out


def _architecture(arch: Any, origin: str) -> str:
    if not isinstance(arch, str) or not arch:
        raise WeightsError(f"{origin}: 'architecture' must name a model, got {short_repr(arch)}")
    try:
        return resolve_name(_variant(arch))
    except SplitAttnError as e:
        raise WeightsError(f"{origin}: 'architecture' {arch!r} is not a model splitattn builds ({e})"
                           ) from None


def _variant(arch: str) -> str:
    """The registered name or alias in an architecture name (no ``splitattn_`` prefix, no timm tag)."""
    return arch.removeprefix(_OURS_ONLY).split(".", 1)[0]


def _timm_model_args(name: str, args: Any, origin: str) -> dict[str, Any]:
    """timm's ``model_args`` as ResNeSt arguments (timm's ResNet takes the same names for these)."""
    if not isinstance(args, Mapping):
        raise WeightsError(f"{origin}: 'model_args' must be an object, got {type(args).__name__}")
    kept = {k: v for k, v in args.items()
            if k != "num_classes" and not k.endswith(("drop_rate", "drop_path_rate"))}
    return validate_arch_kwargs(name, kept, f"{origin} ('model_args')", WeightsError)


def parse_config(raw: Mapping[str, Any], origin: str) -> ModelSource:
    """The model a timm / splitattn ``config.json`` describes (see the module docstring), validated.

    Raises:
        WeightsError: an architecture splitattn does not build, an invalid argument or value, a class
            count or label list that disagrees; the message names ``origin`` and the key.
    """
    raw = dict(raw)
    if "pretrained_cfg" not in raw:  # timm's older single-dict form
        pcfg = dict(raw)
        raw = {"architecture": pcfg.pop("architecture", None), "pretrained_cfg": pcfg,
               SPLITATTN_KEY: pcfg.pop(SPLITATTN_KEY, None), "label_names": pcfg.pop("labels", None)}
    pcfg = raw.get("pretrained_cfg") or {}
    if not isinstance(pcfg, Mapping):
        raise WeightsError(f"{origin}: 'pretrained_cfg' must be an object, got {type(pcfg).__name__}")
    ours = raw.get(SPLITATTN_KEY)
    if ours is not None:
        if not isinstance(ours, Mapping):
            raise WeightsError(f"{origin}: {SPLITATTN_KEY!r} must be an object, got {type(ours).__name__}")
        name = _architecture(ours.get("model_name"), f"{origin} ({SPLITATTN_KEY}.model_name)")
        kwargs = validate_arch_kwargs(name, ours.get("model_kwargs") or {}, f"{origin} ({SPLITATTN_KEY})",
                                      WeightsError)
    else:
        name = _architecture(raw.get("architecture"), origin)
        kwargs = _timm_model_args(name, raw.get("model_args") or {}, origin)
    arch = raw.get("architecture")
    variant = _variant(arch) if isinstance(arch, str) and _resolves_to(_variant(arch), name) else name
    model_args = raw.get("model_args") if isinstance(raw.get("model_args"), Mapping) else {}
    num_classes = next((v for v in (raw.get("num_classes"), model_args.get("num_classes"),
                                    pcfg.get("num_classes")) if v is not None), None)
    if num_classes is not None:
        num_classes = _valid(_PRETRAINED_SPEC["num_classes"], num_classes, origin, "num_classes")
    pretrained = clean_pretrained_cfg(pcfg, origin)
    labels = raw.get("label_names")
    if labels is not None:
        pretrained["label_names"] = _valid(_labels, labels, origin, "label_names")
    labels = pretrained.get("label_names")
    if isinstance(labels, list) and labels and num_classes is not None and len(labels) != num_classes:
        raise WeightsError(f"{origin}: 'label_names' names {len(labels)} classes but 'num_classes' is "
                           f"{num_classes}: the config is inconsistent")
    if num_classes is not None:
        pretrained["num_classes"] = num_classes
    in_chans = kwargs.pop("in_chans", None)
    if in_chans is None and "input_size" in pretrained:
        in_chans = pretrained["input_size"][0]
    return ModelSource(name, variant, kwargs, num_classes, in_chans, pretrained, origin=origin)


def _resolves_to(variant: str, name: str) -> bool:
    try:
        return resolve_name(variant) == name
    except SplitAttnError:
        return False


# -- sources -------------------------------------------------------------------------------------------
def hf_source(model_id: str, weights: bool) -> ModelSource:
    """The model of Hub repo ``model_id`` from its ``config.json``; its weights file too if ``weights``."""
    src = parse_config(read_config(hf_file(model_id, CONFIG_NAME), f"{HF_PREFIX}{model_id}"),
                       f"{HF_PREFIX}{model_id} ({CONFIG_NAME})")
    src.origin = f"{HF_PREFIX}{model_id}"
    src.pretrained_cfg.update(hf_hub_id=model_id, source="hf-hub")
    if weights:
        src.weights = hf_weights_file(model_id)
    return src


def local_weights_file(folder: Path, origin: str) -> Path:
    """A model folder's weights: timm's preferred names, else the first ``.safetensors``/``.pth``/``.bin``."""
    for name in LOCAL_WEIGHTS_NAMES:
        if (folder / name).is_file():
            return folder / name
    for ext in (".safetensors", ".pth", ".pth.tar", ".bin"):
        found = sorted(p for p in folder.glob(f"*{ext}") if p.is_file())
        if found:
            if len(found) > 1:
                log.warning("%s: several %s files (%s); using %s", origin, ext, [p.name for p in found],
                            found[0].name)
            return found[0]
    raise MissingFileError(f"{origin}: {folder} holds no weights ({SAFE_WEIGHTS_NAME}, pytorch_model.bin, "
                           "*.safetensors, *.pth or *.bin)")


def local_dir_source(path: str | os.PathLike, weights: bool) -> ModelSource:
    """The model of a folder holding ``config.json`` (and its weights file too if ``weights``)."""
    folder = Path(path).expanduser()
    origin = f"{LOCAL_PREFIX}{path}"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        raise MissingFileError(f"{origin}: {folder} {what}; a model folder holds {CONFIG_NAME} and "
                               f"{SAFE_WEIGHTS_NAME} (splitattn.save_pretrained writes both)")
    src = parse_config(read_config(folder / CONFIG_NAME, origin), f"{origin} ({CONFIG_NAME})")
    src.origin = str(folder)
    src.pretrained_cfg.update(file=str(folder), source="local-dir")
    if weights:
        src.weights = local_weights_file(folder, origin)
    return src


# -- save_pretrained ---------------------------------------------------------------------------------
def timm_architecture(cfg: ModelCfg) -> str | None:
    """timm's name of a registered model (``resnest50`` -> ``resnest50d``), or None when timm has none."""
    hub_id = get_pretrained_cfg(cfg.name).get("hf_hub_id") or ""
    if hub_id.startswith("timm/"):
        return hub_id.split("/", 1)[1].split(".", 1)[0]
    return None


def _saved_kwargs(model: nn.Module, cfg: ModelCfg, given: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(getattr(model, "model_kwargs", {}) if given is None else given)
    for k in (*_TRAINING_ONLY, "num_classes"):
        kwargs.pop(k, None)
    kwargs["in_chans"] = model.in_chans
    source = f"save_pretrained of {cfg.name!r}"
    bad = [k for k, v in kwargs.items() if not isinstance(v, str | int | float | bool | list | tuple)]
    if bad:
        raise InputError(f"{source}: argument {bad[0]}={short_repr(kwargs[bad[0]])} cannot be written to "
                         "config.json; pass model_kwargs={...} with a serialisable value (e.g. "
                         "norm_layer='frozenbn')")
    return validate_arch_kwargs(cfg.name, kwargs, source, InputError)


def model_config(model: nn.Module, label_names: Any = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of :func:`save_pretrained` for ``model`` (see there)."""
    cfg = getattr(model, "model_cfg", None)
    if not isinstance(cfg, ModelCfg) or not hasattr(model, "fc") or not hasattr(model, "num_classes"):
        raise InputError(f"save_pretrained takes a classifier of splitattn.create_model, got a "
                         f"{type(model).__name__} without model_cfg / fc (a features_only model: save the "
                         "classifier it was made from)")
    kwargs = _saved_kwargs(model, cfg, model_kwargs)
    # timm builds the same function only for the registered architecture with these arguments; any other
    # variant must not carry a name timm knows (it would build the registered one and load these weights).
    timm_name = timm_architecture(cfg)
    if timm_name and set(kwargs) <= {"in_chans", "global_pool"} and kwargs.get("global_pool", "avg") == "avg":
        arch = timm_name
    elif cfg.name in {timm_architecture(get_model_cfg(n)) for n in list_models()}:
        arch = _OURS_ONLY + cfg.name
    else:
        arch = cfg.name
    pcfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pcfg = {k: v for k, v in pcfg.items() if k in PRETRAINED_CFG_KEYS and k not in _WEIGHT_SOURCE_KEYS
            and v is not None and k not in ("architecture", "label_names", "label_descriptions")}
    size = tuple(pcfg.get("input_size", cfg.input_size))
    pcfg.update(input_size=[model.in_chans, *size[1:]], num_classes=model.num_classes,
                first_conv=cfg.first_conv, classifier=cfg.classifier, custom_load=False)
    labels = label_names if label_names is not None else (getattr(model, "pretrained_cfg", None) or {}).get(
        "label_names")
    if labels is not None:
        labels = _valid(_labels, list(labels) if isinstance(labels, tuple) else labels, "label_names",
                        "label_names")
        if isinstance(labels, list) and len(labels) != model.num_classes:
            if label_names is not None:
                raise InputError(f"label_names has {len(labels)} names but the model {model.num_classes} "
                                 "classes")
            labels = None  # the weights' labels, not this classifier's
    config: dict[str, Any] = {"architecture": arch, "num_classes": model.num_classes,
                              "num_features": model.num_features}
    if arch == timm_name:
        config["global_pool"] = "avg"
        config["model_args"] = {"in_chans": model.in_chans, "num_classes": model.num_classes}
    if labels:
        config["label_names"] = labels
    config["pretrained_cfg"] = pcfg
    config[SPLITATTN_KEY] = {"model_name": cfg.name, "model_kwargs": kwargs}
    return json.loads(json.dumps(config))  # tuples as lists, as the file will hold them


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, label_names: Any = None,
                    model_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a folder that splitattn and timm load: ``config.json`` + ``model.safetensors``.

    ``create_model("local-dir:DIR")`` and ``create_model(name, pretrained=DIR)`` rebuild the same model
    (architecture arguments, ``in_chans``, ``num_classes``) with these weights; so does
    ``timm.create_model("local-dir:DIR")`` for the models timm has (``architecture`` is timm's name,
    e.g. ``resnest50d``; a variant timm cannot build keeps splitattn's name). Both files are written
    atomically, the weights first.

    Args:
        model: a classifier of :func:`splitattn.create_model`, ``(B, in_chans, H, W) -> (B, num_classes)``.
        directory: the folder (created).
        label_names: one name per class (default: the model's ``pretrained_cfg["label_names"]`` when its
            length matches).
        model_kwargs: the architecture arguments to record, if not those ``create_model`` was given
            (needed when one of them was not a plain value, e.g. a norm layer class).

    Returns:
        ``directory`` as a Path.

    Raises:
        InputError: not a splitattn classifier, an argument that cannot be written, or ``label_names`` of
            another length than the class count.
    """
    from .weights import save_weights

    config = model_config(model, label_names, model_kwargs)
    folder = Path(directory)
    ours = config[SPLITATTN_KEY]
    meta = {"model_name": ours["model_name"], "model_kwargs": ours["model_kwargs"]}
    if isinstance(config.get("label_names"), list):
        meta["classes"] = config["label_names"]
    save_weights(model, folder / SAFE_WEIGHTS_NAME, metadata=meta)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return folder


__all__ = ["CONFIG_NAME", "HF_PREFIX", "LOCAL_PREFIX", "SAFE_WEIGHTS_NAME", "SPLITATTN_KEY", "ModelSource",
           "clean_pretrained_cfg", "hf_source", "local_dir_source", "local_weights_file", "model_config",
           "parse_config", "parse_model_name", "read_config", "save_pretrained", "timm_architecture"]
