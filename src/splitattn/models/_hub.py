"""Models on the Hugging Face Hub and in local folders, the way timm distributes them.

* ``create_model("hf-hub:timm/resnest50d.in1k")`` reads the repo's ``config.json`` (and, with
  ``pretrained=True``, ``model.safetensors`` or ``pytorch_model.bin``) through ``huggingface_hub``: its
  cache (``$HF_HUB_CACHE``, its own layout), its offline mode (``$HF_HUB_OFFLINE``), a revision as
  ``@rev``. Every file is checked against the hub's hash before use.
* ``create_model("local-dir:PATH")`` and ``pretrained=PATH`` read a folder holding ``config.json`` and
  weights, as timm's ``local-dir:`` does.
* :func:`save_pretrained` writes such a folder, which splitattn and timm both load, whole or not at all.

``config.json`` is timm's format: ``architecture`` (timm's name, mapped to ours through the registry's
aliases), ``num_classes``, ``label_names``, ``model_args`` and ``pretrained_cfg``; splitattn adds its model
record (:class:`~splitattn.models._spec.ModelSpec`) as ``"splitattn"`` and the SHA-256 of the weights file
as ``"splitattn_weights_sha256"``, which timm ignores. What a file says is validated: it never names
weights to load, an unknown argument or an unbounded size, and a record that disagrees with the weights
(classes, shapes, hash) is refused naming both.

Files of the Hugging Face Hub come through :mod:`splitattn.models._hf_files`, hash-checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError, MissingFileError, SplitAttnError, WeightsError
from ..utils.fileio import atomic_write_dir
from ..utils.validation import (
    Invalid,
    boolean,
    check_fields,
    choice,
    integer,
    label_names,
    mapping_of,
    number,
    one_of,
    sequence,
    text,
)
from ._download import sha256_file
from ._hf_files import SAFE_WEIGHTS_NAME, hf_file, hf_weights_file
from ._registry import PRETRAINED_CFG_KEYS, get_model_cfg, get_pretrained_cfg, list_models, resolve_name
from ._spec import MAX_NUM_CLASSES, TRAINING_ONLY_ARGS, ModelSpec, read_spec
from ._weights import WeightsFile, read_weights, save_weights

log = logging.getLogger("splitattn")

HF_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
CONFIG_NAME = "config.json"
LOCAL_WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, "pytorch_model.bin", "pytorch_model.pth", "model.pth")
SPLITATTN_KEY = "splitattn"
"""The ``config.json`` entry holding splitattn's model record."""
SHA256_KEY = "splitattn_weights_sha256"
"""The ``config.json`` entry binding it to its weights file."""
MAX_CONFIG_BYTES = 16 * 2**20
# Keys that name weights to load: a file's values for them are never used.
_WEIGHT_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")
# The architecture name of a variant of a timm model that timm cannot build (so timm refuses it).
_OURS_ONLY = "splitattn_"
# Our global_pool names and timm's for the same function (timm's "avgmax" averages, ours concatenates).
_TIMM_POOL = {"avg": "avg", "max": "max", "avgmax": "catavgmax", "": ""}
_SOURCE_PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-_]+")


@dataclass
class ModelSource:
    """What a model name or weights file says about the model (validated).

    Attributes:
        spec: the model's record (from the file's record, a timm config, or the weights' shapes).
        variant: the name whose ``pretrained_cfg`` applies (timm's ``resnest50d`` gets timm's values).
        pretrained_cfg: ``pretrained_cfg`` fields that override the registry's (timm's keys only).
        weights: the weights to load, if any.
        origin: what it came from, for messages (``"hf-hub:timm/resnest14d.gluon_in1k"``, a path).
    """

    spec: ModelSpec
    variant: str = ""
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    weights: WeightsFile | None = None
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


_SIZE = sequence(integer(1, 8192), 3, 3, "3 integers (C, H, W)")
_POOL = sequence(integer(1, 8192), 2, 2, "2 integers")
_TEXTS = one_of(text, sequence(text, 0, 100, "a list of strings"))
_CROP = number(0.05, 1.0)
_PRETRAINED_CHECKS = {
    "input_size": _SIZE, "test_input_size": _SIZE, "min_input_size": _SIZE,
    "pool_size": _POOL, "test_pool_size": _POOL, "crop_pct": _CROP, "test_crop_pct": _CROP,
    "interpolation": choice("bicubic", "bilinear", "nearest"),
    "crop_mode": choice("center", "squash", "border"),
    "mean": sequence(number(-1e6, 1e6), 1, 256), "std": sequence(number(0, 1e6, lo_open=True), 1, 256),
    "num_classes": integer(0, MAX_NUM_CLASSES), "label_offset": integer(0, 10), "fixed_input_size": boolean,
    "custom_load": one_of(boolean, text), "first_conv": text, "classifier": text, "architecture": text,
    "tag": text, "license": text, "description": text, "origin_url": text, "paper_name": text,
    "paper_ids": _TEXTS, "notes": _TEXTS, "label_names": label_names,
    "label_descriptions": one_of(mapping_of(text, text), label_names),
}


def clean_pretrained_cfg(pcfg: Any) -> dict[str, Any]:
    """A file's ``pretrained_cfg`` reduced to timm's keys, validated; the keys naming weights dropped.

    Raises:
        Invalid: a value of the wrong type or out of range, naming the key.
    """
    if not isinstance(pcfg, Mapping):
        raise Invalid("an object", shown=type(pcfg).__name__, field="pretrained_cfg")
    kept = {k: v for k, v in pcfg.items() if k not in _WEIGHT_SOURCE_KEYS and v is not None}
    return check_fields(_PRETRAINED_CHECKS, kept, "pretrained_cfg", known_only=False)


def _variant(arch: str) -> str:
    """The registered name or alias in an architecture name (no ``splitattn_`` prefix, no timm tag)."""
    return arch.removeprefix(_OURS_ONLY).split(".", 1)[0]


def _timm_record(raw: Mapping[str, Any], pretrained: Mapping[str, Any]) -> dict[str, Any]:
    """The record (JSON form) a timm ``config.json`` describes: ``architecture``, ``model_args``..."""
    arch = raw.get("architecture")
    if not isinstance(arch, str) or not arch or not _resolves(_variant(arch)):
        raise Invalid("a model splitattn builds (splitattn.list_models())", arch, "architecture")
    args = raw.get("model_args") or {}
    if not isinstance(args, Mapping):
        raise Invalid("an object", shown=type(args).__name__, field="model_args")
    args = {k: v for k, v in args.items()
            if k != "num_classes" and not k.endswith(("drop_rate", "drop_path_rate"))}
    if "global_pool" in args:
        ours = {timm: name for name, timm in _TIMM_POOL.items()}
        if args["global_pool"] not in ours:
            raise Invalid(f"one of timm's {list(ours)}", args["global_pool"], "model_args.global_pool")
        args["global_pool"] = ours[args["global_pool"]]
    in_chans = args.pop("in_chans", (pretrained.get("input_size") or (3,))[0])
    labels = pretrained.get("label_names")
    num_classes = pretrained.get("num_classes", get_model_cfg(_variant(arch)).num_classes)
    record = {"model_name": _variant(arch), "model_args": args, "in_chans": in_chans,
              "num_classes": num_classes}
    if isinstance(labels, tuple) and labels:
        record["label_names"] = labels
    return record


def _resolves(name: str) -> bool:
    try:
        resolve_name(name)
        return True
    except SplitAttnError:
        return False


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
    try:
        pretrained = clean_pretrained_cfg(raw.get("pretrained_cfg") or {})
        model_args = raw.get("model_args") if isinstance(raw.get("model_args"), Mapping) else {}
        for key, value in (("num_classes", model_args.get("num_classes")),
                           ("num_classes", raw.get("num_classes")), ("label_names", raw.get("label_names"))):
            if value is not None:
                pretrained[key] = _PRETRAINED_CHECKS[key](value)
        ours = raw.get(SPLITATTN_KEY)
        if ours is None:
            spec = ModelSpec.from_dict(_timm_record(raw, pretrained))
        elif isinstance(ours, Mapping) and "format_version" not in ours:  # splitattn 0.1's entry
            spec = read_spec({**ours, "classes": raw.get("label_names")}, pretrained.get("num_classes"),
                             encoded=False)
        else:
            spec = ModelSpec.from_dict(ours)
    except Invalid as e:
        raise WeightsError(f"{origin}: {e}") from None
    if spec is None:
        raise WeightsError(f"{origin}: {SPLITATTN_KEY!r} names no model")
    arch = raw.get("architecture")
    variant = _variant(arch) if isinstance(arch, str) and _resolves(_variant(arch)) and resolve_name(
        _variant(arch)) == spec.model_name else spec.model_name
    if spec.label_names is not None:
        pretrained["label_names"] = spec.label_names
    pretrained["num_classes"] = spec.num_classes
    return ModelSource(spec, variant, pretrained, origin=origin)


# -- sources -------------------------------------------------------------------------------------------
def _with_weights(src: ModelSource, path: Path, config: Mapping[str, Any]) -> ModelSource:
    """``src`` with its weights file, which must agree with the config's record and hash."""
    expected = config.get(SHA256_KEY)
    if expected is not None and (not isinstance(expected, str) or sha256_file(path) != expected):
        raise WeightsError(f"{src.origin}: {path.name} does not match {CONFIG_NAME} (its {SHA256_KEY} is "
                           f"{str(expected)[:16]}..., the file's SHA-256 differs): the folder is torn or was "
                           "edited; save the model again")
    weights = read_weights(path, get_model_cfg(src.spec.model_name))
    if weights.spec is not None and weights.spec.to_dict() != src.spec.to_dict():
        theirs, ours = weights.spec.to_dict(), src.spec.to_dict()
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise WeightsError(f"{src.origin}: {CONFIG_NAME} and {path.name} record different models "
                           f"({', '.join(diff)}: {CONFIG_NAME} says {str(ours.get(diff[0]))[:60]}, "
                           f"{path.name} {str(theirs.get(diff[0]))[:60]}); save the model again")
    try:
        if weights.spec is None:  # a record equal to the config's was checked against the tensors on reading
            src.spec.check_tensors(weights.state_dict)
    except Invalid as e:
        raise WeightsError(f"{src.origin}: {CONFIG_NAME} and {path.name} disagree: {CONFIG_NAME}'s {e}"
                           ) from None
    src.weights = weights
    return src


def hf_source(model_id: str, weights: bool) -> ModelSource:
    """The model of Hub repo ``model_id`` from its ``config.json``; its weights file too if ``weights``."""
    config = read_config(hf_file(model_id, CONFIG_NAME), f"{HF_PREFIX}{model_id}")
    src = parse_config(config, f"{HF_PREFIX}{model_id} ({CONFIG_NAME})")
    src.origin = f"{HF_PREFIX}{model_id}"
    src.pretrained_cfg.update(hf_hub_id=model_id, source="hf-hub")
    return _with_weights(src, hf_weights_file(model_id), config) if weights else src


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
    config = read_config(folder / CONFIG_NAME, origin)
    src = parse_config(config, f"{origin} ({CONFIG_NAME})")
    src.origin = str(folder)
    src.pretrained_cfg.update(file=str(folder), source="local-dir")
    return _with_weights(src, local_weights_file(folder, origin), config) if weights else src


# -- save_pretrained ---------------------------------------------------------------------------------
def timm_architecture(name: str) -> str | None:
    """timm's name of a registered model (``resnest50`` -> ``resnest50d``), or None when timm has none."""
    hub_id = get_pretrained_cfg(name).get("hf_hub_id") or ""
    if hub_id.startswith("timm/"):
        return hub_id.split("/", 1)[1].split(".", 1)[0]
    return None


def model_config(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """The ``config.json`` of :func:`save_pretrained` for ``model`` and its record (see there)."""
    cfg = get_model_cfg(spec.model_name)
    args = {k: v for k, v in spec.model_args.items() if k not in TRAINING_ONLY_ARGS}
    # timm builds the same function only for the registered architecture with these arguments; any other
    # variant must not carry a name timm knows (it would build the registered one and load these weights).
    timm_name = timm_architecture(cfg.name)
    if timm_name and set(args) <= {"global_pool"}:
        arch = timm_name
    elif cfg.name in {timm_architecture(n) for n in list_models()}:
        arch = _OURS_ONLY + cfg.name
    else:
        arch = cfg.name
    pcfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pcfg = {k: v for k, v in pcfg.items() if k in PRETRAINED_CFG_KEYS and k not in _WEIGHT_SOURCE_KEYS
            and v is not None and k not in ("architecture", "label_names", "label_descriptions")}
    size = tuple(pcfg.get("input_size", cfg.input_size))
    pcfg.update(input_size=[spec.in_chans, *size[1:]], num_classes=spec.num_classes,
                first_conv=cfg.first_conv, classifier=cfg.classifier, custom_load=False)
    config: dict[str, Any] = {"architecture": arch, "num_classes": spec.num_classes,
                              "num_features": model.num_features}
    if arch == timm_name:
        pool = args.get("global_pool", "avg")
        config["global_pool"] = _TIMM_POOL[pool]
        config["model_args"] = {"in_chans": spec.in_chans, "num_classes": spec.num_classes,
                                **({"global_pool": _TIMM_POOL[pool]} if pool != "avg" else {})}
    if spec.label_names:
        config["label_names"] = list(spec.label_names)
    config["pretrained_cfg"] = pcfg
    config[SPLITATTN_KEY] = spec.to_dict()
    return json.loads(json.dumps(config))  # tuples as lists, as the file will hold them


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, label_names: Any = None,
                    model_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a folder that splitattn and timm load: ``config.json`` + ``model.safetensors``.

    ``create_model("local-dir:DIR")`` and ``create_model(name, pretrained=DIR)`` rebuild the same model
    (architecture arguments, ``in_chans``, ``num_classes``, label names) with these weights; so does
    ``timm.create_model("local-dir:DIR")`` for the models timm has (``architecture`` is timm's name,
    e.g. ``resnest50d``; a variant timm cannot build keeps splitattn's name). The folder is written whole
    or not at all (:func:`~splitattn.utils.fileio.atomic_write_dir`: a kill at any moment leaves the old
    folder or the new one; other files in it are kept), and ``config.json`` records the weights' SHA-256,
    which loading checks.

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
    if not hasattr(model, "fc") or not hasattr(model, "num_features"):
        raise InputError(f"save_pretrained takes a classifier of splitattn.create_model, got a "
                         f"{type(model).__name__} without fc / num_features (a features_only model: save the "
                         "classifier it was made from)")
    spec = ModelSpec.from_model(model, label_names, model_kwargs=model_kwargs)
    config = model_config(model, spec)

    def write(folder: Path) -> None:
        weights = save_weights(model, folder / SAFE_WEIGHTS_NAME, spec=spec)
        config[SHA256_KEY] = sha256_file(weights)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(directory, write, replaces=(CONFIG_NAME, SAFE_WEIGHTS_NAME))


__all__ = ["CONFIG_NAME", "HF_PREFIX", "LOCAL_PREFIX", "SAFE_WEIGHTS_NAME", "SHA256_KEY", "SPLITATTN_KEY",
           "ModelSource", "clean_pretrained_cfg", "hf_source", "local_dir_source", "local_weights_file",
           "model_config", "parse_config", "parse_model_name", "read_config", "save_pretrained",
           "timm_architecture"]
