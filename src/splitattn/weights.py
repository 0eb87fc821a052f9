"""Reading and writing weights: official ``.pth``, timm ``.pth`` / ``.safetensors``, splitattn safetensors.

Nothing here executes pickled code: ``.pth`` files go through ``torch.load(weights_only=True)`` and a
file that needs more than tensors and plain containers is refused. A file never drives the program:
the architecture its metadata records is checked (:func:`~splitattn.models.registry.validate_arch_kwargs`)
and a malformed file raises :class:`~splitattn.errors.WeightsError` naming it. Downloads
(:mod:`splitattn.download`) land in a cache directory and are checked against the release's SHA-256 prefix,
or against the Hugging Face Hub's hash for the hub's mirror of a release.

A splitattn file records the model it holds (``model_name``, ``model_kwargs``, ``classes``, and
``splitattn_cfg``), and :func:`file_source` reads it back, so ``create_model(name, pretrained=FILE)`` rebuilds
that model; a file without metadata still tells its class count and input channels by its shapes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .download import HashMismatchError, download, hash_prefix_in_name, hf_weights_file, url_file_name
from .errors import MissingDependencyError, SplitAttnError, WeightsError
from .fileio import atomic_write, safe_torch_load
from .hub import ModelSource, local_weights_file
from .models.registry import (
    ModelCfg,
    check_model_name,
    get_pretrained_cfg,
    short_repr,
    validate_arch_kwargs,
)

log = logging.getLogger("splitattn")

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def check_state_dict(obj: Any, source: str, error: type[SplitAttnError] = WeightsError,
                     ) -> dict[str, torch.Tensor]:
    """``obj`` as a state dict (string names to dense tensors), or ``error`` naming ``source``."""
    if not isinstance(obj, Mapping):
        raise error(f"{source} does not hold a state dict (a mapping of names to tensors) but a "
                    f"{type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise error(f"{source}: state dict key {short_repr(k)} is not a string")
        if not isinstance(v, torch.Tensor):
            raise error(f"{source}: state dict entry {short_repr(k)} is a {type(v).__name__}, not a tensor")
        if v.layout != torch.strided or v.is_quantized or v.is_complex():
            raise error(f"{source}: state dict entry {short_repr(k)} is a {v.layout} {v.dtype} tensor; "
                        "weights must be dense real tensors")
    return dict(obj)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types (and OSError, MemoryError...)
        raise WeightsError(f"{path} is not a readable safetensors file ({str(e)[:200]})") from e
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise WeightsError(f"{path}: safetensors metadata entry {short_repr(bad[0])} is not a string")
    return sd, meta


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict and its metadata from any supported file.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}``, ``{"state_dict_ema": ...}`` (EMA preferred)
    and strips DDP's ``module.`` prefix (and ``_orig_mod.`` from torch.compile).

    Returns:
        ``(state_dict, metadata)``; metadata is the safetensors header metadata (empty for ``.pth``).

    Raises:
        WeightsError: the file is missing, truncated, corrupt, needs pickled code or holds anything but
            a mapping of names to dense tensors; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
    else:
        obj = safe_torch_load(path, WeightsError, "weights file")
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
        sd = check_state_dict(obj, f"weights file {path}")
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd, meta


def json_metadata(meta: Mapping[str, str], key: str, path: str | os.PathLike) -> Any:
    """The JSON value of safetensors metadata entry ``key`` (None when absent).

    Raises:
        WeightsError: the entry is not valid JSON, naming the file and key.
    """
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{path}: metadata entry {key!r} is not valid JSON ({str(e)[:80]})") from e


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt RGB first-conv weights ``(O, 3, k, k)`` to ``in_chans`` channels.

    One channel sums the RGB filters; more channels repeat them, scaled by ``3 / in_chans`` so that
    the response to a grey image is unchanged.
    """
    o, i, kh, kw = weight.shape
    if in_chans == i:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(1, keepdim=True)
    else:
        reps = -(-in_chans // i)
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (i / in_chans)
    return w.to(weight.dtype)


def saved_arch(meta: Mapping[str, str], path: str | os.PathLike) -> tuple[str, dict[str, Any]] | None:
    """``(model name, architecture)`` recorded in a splitattn file's ``splitattn_cfg``, validated.

    Raises:
        WeightsError: the entry is not JSON, not an object, or names an unknown model or argument.
    """
    saved = json_metadata(meta, "splitattn_cfg", path)
    if saved is None:
        return None
    source = f"weights file {path}, metadata 'splitattn_cfg'"
    if not isinstance(saved, dict):
        raise WeightsError(f"{source}: expected a JSON object, got {type(saved).__name__}")
    name = check_model_name(saved.get("name"), source, WeightsError)
    return name, validate_arch_kwargs(name, saved.get("arch", {}), source, WeightsError)


def _check_saved_arch(meta: Mapping[str, str], cfg: Any, path: Path) -> None:
    """Refuse splitattn weights saved from a different architecture that happens to share shapes.

    resnest50_fast_2s1x64d loads shape-for-shape into resnest50 but computes another function
    (avd before the split-attention conv); our own files record the architecture, so we can tell.
    """
    saved = saved_arch(meta, path)
    if cfg is None or saved is None:
        return
    saved_name, saved_args = saved
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.arch.items()}
    if saved_args and saved_args != arch:
        diff = sorted(k for k in set(saved_args) | set(arch) if saved_args.get(k) != arch.get(k))
        raise WeightsError(
            f"{path} holds weights of {saved_name!r}, whose architecture differs from {cfg.name!r} in "
            f"{', '.join(diff)}: the shapes may match but the function does not; "
            f"use create_model({saved_name!r})"
        )


def release_weights(cfg: ModelCfg, progress: bool = True) -> Path:
    """The released weights of ``cfg``: its URL (SHA-256 prefix checked), else the Hugging Face mirror.

    The mirror is the hub repo timm hosts the same weights in (``get_pretrained_cfg(name)["hf_hub_id"]``),
    checked against the hub's hash. It is tried when the release cannot be downloaded (no network to it,
    an HTTP error, a timeout); a file whose hash is wrong is reported, not routed around.

    Raises:
        HashMismatchError: the release file (downloaded or cached) or the mirror's has the wrong hash.
        WeightsError: neither source answered; the message names both and why.
    """
    hub_id = get_pretrained_cfg(cfg.name).get("hf_hub_id")
    if not cfg.url and not hub_id:
        raise WeightsError(f"no released weights are known for {cfg.name}; pass a path or URL")
    failures = []
    if cfg.url:
        try:
            return download(cfg.url, cfg.hash_prefix or None, progress)
        except HashMismatchError:
            raise
        except WeightsError as e:
            failures.append(f"the release {cfg.url} ({e})")
    if hub_id:
        try:
            path = hf_weights_file(hub_id)
        except HashMismatchError:
            raise
        except (WeightsError, MissingDependencyError) as e:
            failures.append(f"its Hugging Face mirror hf-hub:{hub_id} ({e})")
        else:
            if failures:
                log.warning("%s: %s; loaded the Hugging Face mirror hf-hub:%s instead", cfg.name, failures[0],
                            hub_id)
            return path
    raise WeightsError(f"the weights of {cfg.name} could not be had from " + ", nor from ".join(failures)
                       + "; download them by hand and pass pretrained=PATH")


def resolve_weights(source: str | os.PathLike | bool, cfg: ModelCfg | None, progress: bool = True) -> Path:
    """The local file of ``pretrained=source``: the release (``True``), a URL (downloaded), a folder's
    weights file, or a path."""
    if source is True:
        if cfg is None:
            raise WeightsError("pretrained=True needs a registered model; pass a path or URL")
        return release_weights(cfg, progress)
    if isinstance(source, str) and source.startswith(("http://", "https://", "file://")):
        # The release file's prefix from the config, else torch.hub's <name>-<hex>.<ext> convention.
        known = cfg is not None and cfg.hash_prefix and cfg.file_name == url_file_name(source)
        return download(source, cfg.hash_prefix if known else hash_prefix_in_name(source), progress)
    path = Path(source)
    return local_weights_file(path, str(path)) if path.is_dir() else path


def _recorded(meta: Mapping[str, str], path: Path) -> tuple[str | None, dict[str, Any], list[str] | None]:
    """``(model name, architecture arguments, class names)`` a splitattn file records, validated."""
    name = meta.get("model_name")
    saved = saved_arch(meta, path)
    if name is None and saved is not None:
        name = saved[0]
    source = f"weights file {path}"
    if name is None:
        return None, {}, None
    name = check_model_name(name, source, WeightsError)
    kwargs = validate_arch_kwargs(name, json_metadata(meta, "model_kwargs", path) or {}, source, WeightsError)
    classes = json_metadata(meta, "classes", path)
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise WeightsError(f"{source}: metadata 'classes' must be a list of class names, got "
                           f"{short_repr(classes)}")
    return name, kwargs, classes


def file_source(sd: Mapping[str, torch.Tensor], meta: Mapping[str, str], path: Path, cfg: ModelCfg,
                ) -> ModelSource:
    """The model a weights file describes, for ``create_model(cfg.name, pretrained=path)``.

    A splitattn file's recorded architecture arguments and class names apply when it records this model;
    the class count is the class list's, else the classifier's rows (0 for a splitattn file without one);
    the input channels are the recorded ones, else the first conv's.

    Raises:
        WeightsError: invalid metadata, or a class list that disagrees with the classifier.
    """
    name, kwargs, classes = _recorded(meta, path)
    if name is not None and name != cfg.name:
        kwargs, classes = {}, None  # another model's file: refused by the architecture check when loading
    fc = sd.get(f"{cfg.classifier}.weight")
    rows = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None
    if classes is not None and rows is not None and len(classes) != rows:
        raise WeightsError(f"weights file {path} records {len(classes)} class names but its classifier has "
                           f"{rows} rows: the file is inconsistent")
    in_chans = kwargs.pop("in_chans", None)
    conv = sd.get(f"{cfg.first_conv}.weight")
    if in_chans is None and conv is not None and conv.ndim == 4:
        in_chans = int(conv.shape[1])
    pretrained_cfg = {"label_names": classes} if classes else {}
    num_classes = len(classes) if classes else rows
    if num_classes is None and name == cfg.name and not any(k.startswith(cfg.classifier + ".") for k in sd):
        num_classes = 0  # our own file of a model without a classifier (num_classes=0)
    return ModelSource(cfg.name, cfg.name, kwargs, num_classes, in_chans, pretrained_cfg, path, str(path))


def _fit_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, cfg: Any, name: str, path: Path,
                    strict: bool, headless: bool = False) -> dict[str, torch.Tensor]:
    """``sd`` adapted to ``model`` (counters, first conv, classifier); raises on what does not fit.

    ``headless``: the file is known to hold no classifier, so the model's keeps its fresh init."""
    own = model.state_dict()
    # FrozenBatchNorm2d and GroupNorm keep no batch counter: drop the counters the file has.
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in own}
    first_conv = getattr(cfg, "first_conv", "conv1.0") + ".weight"
    classifier = getattr(cfg, "classifier", "fc")
    conv, ref = sd.get(first_conv), own.get(first_conv)
    if (conv is not None and ref is not None and conv.ndim == ref.ndim == 4 and conv.shape[1] != ref.shape[1]
            and conv.shape[0] == ref.shape[0] and conv.shape[2:] == ref.shape[2:]):
        sd[first_conv] = adapt_input_conv(conv, ref.shape[1])
        log.info("%s: adapted %s to %d input channels", name, first_conv, ref.shape[1])
    cls_keys = [k for k in sd if k.startswith(classifier + ".")]
    if cls_keys and any(k not in own or own[k].shape != sd[k].shape for k in cls_keys):
        for k in cls_keys:
            sd.pop(k)
        log.warning("%s: classifier weights in %s dropped (the model has %s classes)", name, path,
                    getattr(model, "num_classes", "?"))
        strict_cls = False
    else:
        strict_cls = not (headless and not cls_keys)
        if not strict_cls:
            log.info("%s: %s holds no classifier; the new one keeps its initialisation", name, path)

    missing = [k for k in own if k not in sd and (strict_cls or not k.startswith(classifier + "."))]
    unexpected = [k[:80] for k in sd if k not in own]
    bad_shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or bad_shape):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        if bad_shape:
            shown = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape[:3]]
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {'; '.join(shown)})")
        raise WeightsError(f"weights {path} do not fit model {name}: " + "; ".join(parts))
    for k in bad_shape:
        log.warning("%s: %s in %s has shape %s, the model %s: not loaded", name, k, path,
                    tuple(sd.pop(k).shape), tuple(own[k].shape))
    return sd


def load_state_dict_into(model: nn.Module, sd: dict[str, torch.Tensor], meta: Mapping[str, str], path: Path,
                         cfg: ModelCfg | None = None, strict: bool = True, headless: bool = False,
                         ) -> nn.Module:
    """Load a state dict read from ``path`` into ``model``, adapted as :func:`load_pretrained` says
    (``headless``: the file is known to have no classifier, e.g. a splitattn file of ``num_classes=0``)."""
    name = getattr(cfg, "name", type(model).__name__)
    _check_saved_arch(meta, cfg, path)
    sd = _fit_state_dict(sd, model, cfg, name, path, strict, headless)
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into the parameters
        raise WeightsError(f"weights {path} do not load into model {name} ({str(e)[:200]})") from e
    return model


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | bool,
    cfg: ModelCfg | None = None,
    strict: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Load weights into ``model`` from ``True`` (the release in ``cfg``), a URL, a file or a model folder.

    The classifier is dropped when ``model.num_classes`` differs from the checkpoint's (logged), and the
    first conv is adapted when ``model.in_chans`` differs. With ``strict=False``, missing keys keep their
    initialisation and mis-shaped ones are skipped (logged). ``cfg`` defaults to ``model.model_cfg``.

    Raises:
        WeightsError: unreadable file, failed download, hash mismatch, or missing / unexpected /
            mis-shaped keys (the first few of each are named, with the model).
    """
    cfg = cfg if cfg is not None else getattr(model, "model_cfg", None)
    path = resolve_weights(source, cfg, progress)
    sd, meta = read_state_dict(path)
    return load_state_dict_into(model, sd, meta, path, cfg, strict)


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, str | int | float | bool) or value is None


def save_weights(
    model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict as safetensors, atomically, with what rebuilds it as metadata.

    The metadata holds ``splitattn_cfg`` (the model's registry record as JSON), ``model_name`` and
    ``model_kwargs`` (the architecture arguments ``create_model`` was given, ``in_chans`` included) when
    the model has them, plus any ``metadata`` given (strings as they are, other values as JSON), which
    takes precedence. ``create_model(name, pretrained=path)`` then rebuilds the same model.
    """
    meta = {"format": "pt", "producer": "splitattn"}
    cfg = getattr(model, "model_cfg", None)
    if cfg is None and isinstance(getattr(model, "pretrained_cfg", None), ModelCfg):
        cfg = model.pretrained_cfg
    if cfg is not None:
        meta["splitattn_cfg"] = json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg, default=str)
        meta["model_name"] = cfg.name
    kwargs = getattr(model, "model_kwargs", None)
    if isinstance(kwargs, Mapping) and all(_plain(v) for v in kwargs.values()):
        meta["model_kwargs"] = json.dumps(dict(kwargs))
    elif kwargs:
        log.warning("%s: model_kwargs %s are not all plain values; not recorded in the file", path, kwargs)
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, default=str)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
