"""Reading and writing weights: official ``.pth``, timm ``.pth`` / ``.safetensors``, splitattn safetensors.

Nothing here executes pickled code: ``.pth`` files go through ``torch.load(weights_only=True)`` and a
file that needs more than tensors and plain containers is refused. Downloads land in a cache
directory and are checked against the SHA-256 prefix of the release (the torch.hub convention).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import WeightsError
from .fileio import atomic_write, safe_torch_load

log = logging.getLogger("splitattn")

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def cache_dir() -> Path:
    """Where downloaded weights go: ``$SPLITATTN_CACHE`` or ``<torch hub dir>/checkpoints``."""
    env = os.environ.get("SPLITATTN_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, hash_prefix: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` into :func:`cache_dir` (once) and check its SHA-256 prefix.

    A cached file is re-checked on every call, so a corrupt cache entry is reported, not used.

    Raises:
        WeightsError: the download failed, or the file's hash does not start with ``hash_prefix``.
    """
    name = os.path.basename(urlparse(url).path) or "weights"
    dst = cache_dir() / name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, dst)
        try:
            # Writes to a temp file and moves it into place only after the hash matched.
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=progress)
        except RuntimeError as e:
            raise WeightsError(f"downloaded {url} but its hash is wrong: {e}") from e
        except OSError as e:
            raise WeightsError(
                f"could not download {url}: {e}. Download the file by hand and pass its local path "
                "as pretrained=PATH"
            ) from e
    if hash_prefix:
        digest = sha256_file(dst)
        if not digest.startswith(hash_prefix):
            raise WeightsError(
                f"cached weights {dst} have SHA-256 {digest[:12]}..., expected a prefix {hash_prefix}: "
                "the file is corrupt or not the release; delete it to download again"
            )
    return dst


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict and its metadata from any supported file.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}``, ``{"state_dict_ema": ...}`` (EMA preferred)
    and strips DDP's ``module.`` prefix (and ``_orig_mod.`` from torch.compile).

    Returns:
        ``(state_dict, metadata)``; metadata is the safetensors header metadata (empty for ``.pth``).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e
    else:
        obj = safe_torch_load(path, WeightsError, "weights file")
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
        sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd, meta


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


def _check_saved_arch(meta: Mapping[str, str], cfg: Any, path: Path) -> None:
    """Refuse splitattn weights saved from a different architecture that happens to share shapes.

    resnest50_fast_2s1x64d loads shape-for-shape into resnest50 but computes another function
    (avd before the split-attention conv); our own files record the architecture, so we can tell.
    """
    if cfg is None or "splitattn_cfg" not in meta:
        return
    saved = json.loads(meta["splitattn_cfg"])
    saved_arch = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.get("arch", {}).items()}
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.arch.items()}
    if saved_arch and saved_arch != arch:
        diff = sorted(k for k in set(saved_arch) | set(arch) if saved_arch.get(k) != arch.get(k))
        raise WeightsError(
            f"{path} holds weights of {saved.get('name')!r}, whose architecture differs from {cfg.name!r} in "
            f"{', '.join(diff)}: the shapes may match but the function does not; "
            f"use create_model({saved.get('name')!r})"
        )


def _url_hash_prefix(url: str, cfg: Any) -> str | None:
    """The SHA-256 prefix a URL's file must have: the config's for the release file, else the torch.hub
    convention of a file named ``<name>-<hex digits>.<ext>``; None when nothing is known."""
    name = os.path.basename(urlparse(url).path)
    if cfg is not None and cfg.hash_prefix and cfg.file_name == name:
        return cfg.hash_prefix
    m = re.search(r"-([a-f0-9]{8,64})\.[a-z]+$", name)
    return m.group(1) if m else None


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | bool,
    cfg: Any = None,
    strict: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Load weights into ``model`` from ``True`` (the release URL in ``cfg``), a URL or a path.

    The classifier is dropped when ``model.num_classes`` differs from the checkpoint's (logged), and the
    first conv is adapted when ``model.in_chans`` differs.

    Raises:
        WeightsError: unreadable file, hash mismatch, or missing / unexpected / mis-shaped keys
            (the first few of each are named, with the model).
    """
    name = getattr(cfg, "name", type(model).__name__)
    if source is True:
        if cfg is None or not cfg.url:
            raise WeightsError(f"no released weights are known for {name}; pass a path or URL")
        path = download(cfg.url, cfg.hash_prefix or None, progress)
    elif isinstance(source, str) and source.startswith(("http://", "https://", "file://")):
        path = download(source, _url_hash_prefix(source, cfg), progress)
    else:
        path = Path(source)
    sd, meta = read_state_dict(path)
    _check_saved_arch(meta, cfg, path)

    own = model.state_dict()
    # FrozenBatchNorm2d and GroupNorm keep no batch counter: drop the counters the file has.
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in own}
    first_conv = getattr(cfg, "first_conv", "conv1.0") + ".weight"
    classifier = getattr(cfg, "classifier", "fc")
    if first_conv in sd and first_conv in own and sd[first_conv].shape[1] != own[first_conv].shape[1]:
        sd[first_conv] = adapt_input_conv(sd[first_conv], own[first_conv].shape[1])
        log.info("%s: adapted %s to %d input channels", name, first_conv, own[first_conv].shape[1])
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
    unexpected = [k for k in sd if k not in own]
    bad_shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own
                 and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or bad_shape):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {'; '.join(bad_shape[:3])})")
        raise WeightsError(f"weights {path} do not fit model {name}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
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
