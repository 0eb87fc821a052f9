"""Reading and writing weights: official ``.pth``, timm ``.pth`` / ``.safetensors``, splitattn safetensors.

Nothing here executes pickled code: ``.pth`` files go through ``torch.load(weights_only=True)`` and a
file that needs more than tensors and plain containers is refused. A file never drives the program:
the architecture its metadata records is checked (:func:`~splitattn.models.registry.validate_arch_kwargs`)
and a malformed file raises :class:`~splitattn.errors.WeightsError` naming it. Downloads
(:mod:`splitattn.download`) land in a cache directory and are checked against the release's SHA-256 prefix.
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

from .download import download, hash_prefix_in_name, url_file_name
from .errors import SplitAttnError, WeightsError
from .fileio import atomic_write, safe_torch_load
from .models.registry import check_model_name, short_repr, validate_arch_kwargs

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


def _resolve_source(source: str | os.PathLike | bool, cfg: Any, name: str, progress: bool) -> Path:
    """The local file of ``pretrained=source``: the release (``True``), a URL (downloaded) or a path."""
    if source is True:
        if cfg is None or not cfg.url:
            raise WeightsError(f"no released weights are known for {name}; pass a path or URL")
        return download(cfg.url, cfg.hash_prefix or None, progress)
    if isinstance(source, str) and source.startswith(("http://", "https://", "file://")):
        # The release file's prefix from the config, else torch.hub's <name>-<hex>.<ext> convention.
        known = cfg is not None and cfg.hash_prefix and cfg.file_name == url_file_name(source)
        return download(source, cfg.hash_prefix if known else hash_prefix_in_name(source), progress)
    return Path(source)


def _fit_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, cfg: Any, name: str, path: Path,
                    strict: bool) -> dict[str, torch.Tensor]:
    """``sd`` adapted to ``model`` (counters, first conv, classifier); raises on what does not fit."""
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
        strict_cls = True

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


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | bool,
    cfg: Any = None,
    strict: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Load weights into ``model`` from ``True`` (the release URL in ``cfg``), a URL or a path.

    The classifier is dropped when ``model.num_classes`` differs from the checkpoint's (logged), and the
    first conv is adapted when ``model.in_chans`` differs. With ``strict=False``, missing keys keep their
    initialisation and mis-shaped ones are skipped (logged).

    Raises:
        WeightsError: unreadable file, failed download, hash mismatch, or missing / unexpected /
            mis-shaped keys (the first few of each are named, with the model).
    """
    name = getattr(cfg, "name", type(model).__name__)
    path = _resolve_source(source, cfg, name, progress)
    sd, meta = read_state_dict(path)
    _check_saved_arch(meta, cfg, path)
    sd = _fit_state_dict(sd, model, cfg, name, path, strict)
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into the parameters
        raise WeightsError(f"weights {path} do not load into model {name} ({str(e)[:200]})") from e
    return model


def save_weights(
    model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict as safetensors, atomically, with its config as metadata.

    The metadata holds ``splitattn_cfg`` (the model's registry record as JSON) when the model has one,
    plus any string-convertible ``metadata`` given.
    """
    meta = {"format": "pt", "producer": "splitattn"}
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None:
        meta["splitattn_cfg"] = json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg, default=str)
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, default=str)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
