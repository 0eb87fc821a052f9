"""Where pretrained weights come from: ``pretrained=True`` (the release URL in the registry, SHA-256 prefix
checked, else the Hugging Face mirror timm hosts, checked against the hub's hash), a URL (downloaded into
the cache, :mod:`._download`) or a local file; a cached download that does not load is moved aside so the
next call downloads it again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MissingDependencyError, WeightsError
from ._download import (
    HashMismatchError,
    cache_dir,
    discard_download,
    download,
    hash_prefix_in_name,
    url_file_name,
)
from ._hf_files import hf_weights_file
from ._registry import ModelCfg, get_pretrained_cfg
from ._weights import WeightsFile, check_same_function, load_state_dict_into, read_weights

log = logging.getLogger("splitattn")


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


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://", "file://"))


def resolve_weights(source: str | os.PathLike | bool, cfg: ModelCfg | None, progress: bool = True) -> Path:
    """The local file of ``pretrained=source``: the release (``True``), a URL (downloaded) or a path."""
    if source is True:
        if cfg is None:
            raise WeightsError("pretrained=True needs a registered model; pass a path or URL")
        return release_weights(cfg, progress)
    if is_url(source):
        # The release file's prefix from the config, else torch.hub's <name>-<hex>.<ext> convention.
        known = cfg is not None and cfg.hash_prefix and cfg.file_name == url_file_name(source)
        return download(source, cfg.hash_prefix if known else hash_prefix_in_name(source), progress)
    return Path(source)


def read_pretrained(source: str | os.PathLike | bool, cfg: ModelCfg | None, progress: bool = True,
                    ) -> WeightsFile:
    """:func:`read_weights` of :func:`resolve_weights`; a download that does not load is moved aside."""
    path = resolve_weights(source, cfg, progress)
    try:
        return read_weights(path, cfg)
    except WeightsError as e:
        downloaded = source is True or is_url(source)
        if not downloaded or not path.resolve().is_relative_to(cache_dir().resolve()):
            raise
        moved = discard_download(path, str(e))
        raise WeightsError(f"the cached download {path} did not load ({e}); moved aside to {moved.name}, so "
                           "the next call downloads it again") from e


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | bool,
    cfg: ModelCfg | None = None,
    strict: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Load weights into ``model`` from ``True`` (the release in ``cfg``), a URL or a file.

    The model is the caller's: its classifier keeps its init when the file has another class count
    (logged), and RGB stem weights are adapted to its ``in_chans``. With ``strict=False``, missing keys
    keep their initialisation and mis-shaped ones are skipped (logged). ``cfg`` defaults to
    ``model.model_cfg``.

    Raises:
        WeightsError: unreadable file, failed download, hash mismatch, weights recorded as another
            architecture, or missing / unexpected / mis-shaped keys (the first few of each are named).
    """
    cfg = cfg if cfg is not None else getattr(model, "model_cfg", None)
    weights = read_pretrained(source, cfg, progress)
    if weights.spec is not None and cfg is not None:
        check_same_function(weights.spec, cfg.name, weights.path)
    return load_state_dict_into(model, weights, cfg, strict, new_head=True, new_stem=True)


__all__ = ["is_url", "load_pretrained", "read_pretrained", "release_weights", "resolve_weights"]
