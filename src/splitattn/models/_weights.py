"""Reading and writing weights: official ``.pth``, timm ``.pth`` / ``.safetensors``, splitattn safetensors.

Nothing here executes pickled code: ``.pth`` files go through ``torch.load(weights_only=True)`` and a
file that needs more than tensors and plain containers is refused. A file never drives the program: the
model record a splitattn file carries (:class:`~splitattn.models._spec.ModelSpec`, metadata entry
``splitattn.model``) is validated, checked against the file's own tensors, and a malformed file raises
:class:`~splitattn.errors.WeightsError` naming it and the field. Where pretrained weights come from
(release URL, Hugging Face mirror, path) is :mod:`._pretrained`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import WeightsError
from ..utils.fileio import atomic_write, safe_torch_load
from ..utils.validation import Invalid
from ._registry import ModelCfg
from ._spec import RECORD_KEY, ModelSpec, read_spec

log = logging.getLogger("splitattn")

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def state_dict_of(obj: Any) -> dict[str, torch.Tensor]:
    """``obj`` as a state dict: string names to dense real tensors.

    Raises:
        Invalid: anything else, naming the first offending entry.
    """
    if not isinstance(obj, Mapping):
        raise Invalid("a state dict (a mapping of names to tensors)", shown=f"a {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise Invalid("a string", k, "state dict key")
        if not isinstance(v, torch.Tensor):
            raise Invalid("a tensor", shown=f"a {type(v).__name__}", field=k)
        if v.layout != torch.strided or v.is_quantized or v.is_complex():
            raise Invalid("a dense real tensor", shown=f"a {v.layout} {v.dtype} tensor", field=k)
    return dict(obj)


def read_safetensors(path: Path, what: str = "weights file",
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, or a WeightsError naming ``what`` and the file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types (and OSError, MemoryError...)
        raise WeightsError(f"{what} {path} is not a readable safetensors file ({str(e)[:200]})") from e
    return sd, meta


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file ("does not exist", "is a folder"...), or None when it can."""
    if path.is_file():
        return None
    if path.exists():
        return "is a folder" if path.is_dir() else "is not a regular file (a FIFO, socket or device)"
    return "does not exist"


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict and its metadata from any supported file.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}``, ``{"state_dict_ema": ...}`` (EMA preferred)
    and strips DDP's ``module.`` prefix (and ``_orig_mod.`` from torch.compile).

    Returns:
        ``(state_dict, metadata)``; metadata is the safetensors header metadata (empty for ``.pth``).

    Raises:
        WeightsError: the file is missing, not a regular file, truncated, corrupt, needs pickled code or
            holds anything but a mapping of names to dense tensors; the message names the file.
    """
    path = Path(path)
    if problem := file_problem(path):
        raise WeightsError(f"weights file {path} {problem}")
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path)
    else:
        obj = safe_torch_load(path, WeightsError, "weights file")
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
        try:
            sd = state_dict_of(obj)
        except Invalid as e:
            raise WeightsError(f"weights file {path}: {e}") from None
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd, meta


def classifier_rows(sd: Mapping[str, torch.Tensor], classifier: str = "fc") -> int | None:
    """The rows of the classifier weight in ``sd`` (None without one)."""
    fc = sd.get(f"{classifier}.weight")
    return int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None


@dataclass
class WeightsFile:
    """A weights file as read: its tensors and the model record it carries (None for official / timm files).

    Attributes:
        path: the file.
        state_dict: its tensors.
        spec: its record, validated and consistent with ``state_dict``.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec | None


def read_weights(path: str | os.PathLike, cfg: ModelCfg | None = None) -> WeightsFile:
    """Read a weights file and the model record it carries, checked against its tensors.

    Args:
        path: the file.
        cfg: the registered model it is meant for, whose classifier gives an old record's class count.

    Raises:
        WeightsError: the file cannot be read (see :func:`read_state_dict`), its record is malformed, or the
            record disagrees with the tensors; the message names the file and the field.
    """
    path = Path(path)
    sd, meta = read_state_dict(path)
    try:
        spec = read_spec(meta, classifier_rows(sd, cfg.classifier if cfg else "fc"))
        if spec is not None:
            spec.check_tensors(sd)
    except Invalid as e:
        raise WeightsError(f"weights file {path}: {e}") from None
    return WeightsFile(path, sd, spec)


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


def _fit_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, cfg: Any, name: str, path: Path,
                    strict: bool, new_head: bool, new_stem: bool) -> dict[str, torch.Tensor]:
    """``sd`` adapted to ``model``; raises on what does not fit.

    ``new_head``: the caller asked for another class count, so a classifier of other rows is dropped (the
    model's keeps its fresh init); ``new_stem``: the caller asked for other input channels, so RGB stem
    weights are adapted.
    """
    own = model.state_dict()
    # FrozenBatchNorm2d and GroupNorm keep no batch counter: drop the counters the file has.
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in own}
    first_conv = getattr(cfg, "first_conv", "conv1.0") + ".weight"
    classifier = getattr(cfg, "classifier", "fc")
    conv, ref = sd.get(first_conv), own.get(first_conv)
    if (new_stem and conv is not None and ref is not None and conv.ndim == ref.ndim == 4
            and conv.shape[1] != ref.shape[1] and conv.shape[0] == ref.shape[0]
            and conv.shape[2:] == ref.shape[2:]):
        sd[first_conv] = adapt_input_conv(conv, ref.shape[1])
        log.info("%s: adapted %s to %d input channels", name, first_conv, ref.shape[1])
    cls_keys = [k for k in sd if k.startswith(classifier + ".")]
    if new_head and any(k not in own or own[k].shape != sd[k].shape for k in cls_keys):
        for k in cls_keys:
            sd.pop(k)
        log.warning("%s: classifier weights in %s dropped (the model has %s classes)", name, path,
                 getattr(model, "num_classes", "?"))
    missing = [k for k in own if k not in sd and not (new_head and k.startswith(classifier + "."))]
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


def load_state_dict_into(model: nn.Module, weights: WeightsFile, cfg: ModelCfg | None = None,
                         strict: bool = True, new_head: bool = False, new_stem: bool = False) -> nn.Module:
    """Load ``weights`` into ``model``, adapted only as the caller asked (see :func:`_fit_state_dict`)."""
    name = getattr(cfg, "name", type(model).__name__)
    sd = _fit_state_dict(weights.state_dict, model, cfg, name, weights.path, strict, new_head, new_stem)
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into the parameters
        raise WeightsError(f"weights {weights.path} do not load into model {name} ({str(e)[:200]})") from e
    return model


def check_same_function(spec: ModelSpec, name: str, path: Path) -> None:
    """Refuse weights recorded as another architecture that happens to share shapes with ``name``.

    resnest50_fast_2s1x64d loads shape-for-shape into resnest50 but computes another function (avd before
    the split-attention conv); our own files record the architecture, so we can tell.
    """
    theirs, ours = spec.function, ModelSpec(name).function
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise WeightsError(
            f"{path} holds weights of {spec.model_name!r}, whose architecture differs from {name!r} in "
            f"{', '.join(diff)}: the shapes may match but the function does not; "
            f"use create_model({spec.model_name!r})")


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
                 spec: ModelSpec | None = None) -> Path:
    """Write ``model``'s state dict as safetensors, atomically, with its model record as metadata.

    Args:
        model: any module; a model of :func:`splitattn.create_model` also gets its record
            (:meth:`ModelSpec.from_model`), so ``create_model(name, pretrained=path)`` rebuilds it.
        path: the file.
        metadata: more entries to store, informational (strings as they are, other values as JSON).
        spec: the record to store instead of the model's own (e.g. with label names and eval preprocessing).

    Raises:
        InputError: the model's record cannot be written (see :meth:`ModelSpec.from_model`).
    """
    if spec is None and getattr(model, "model_cfg", None) is not None:
        spec = ModelSpec.from_model(model)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update(format="pt", producer="splitattn")
    if spec is not None:
        meta[RECORD_KEY] = spec.to_json()
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


__all__ = ["WeightsFile", "adapt_input_conv", "check_same_function", "file_problem", "load_state_dict_into",
           "read_safetensors", "read_state_dict", "read_weights", "save_weights", "state_dict_of"]
