"""Files of the Hugging Face Hub, through ``huggingface_hub`` (an optional dependency), hash-checked.

Its cache (``$HF_HUB_CACHE``), offline mode (``$HF_HUB_OFFLINE``) and revisions (``owner/repo@rev``) are
honoured. Each file is checked against the hub's etag before use: the cache names a file's blob after it
(the SHA-256 of an LFS file, the git SHA-1 of a small one), so a cached file altered since its download is
refused. :mod:`splitattn.models._hub` reads model folders (``config.json`` and weights) through these.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, WeightsError, require
from ._download import HashMismatchError, sha256_file

SAFE_WEIGHTS_NAME = "model.safetensors"
HF_WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, "pytorch_model.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


def hf_split(model_id: str) -> tuple[str, str | None]:
    """``"owner/repo@rev"`` -> ``("owner/repo", "rev")``; no ``@`` gives revision None (``main``)."""
    parts = model_id.split("@")
    if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
        raise InputError(f"hf-hub:{model_id}: expected 'owner/repo' or 'owner/repo@revision'")
    return parts[0], parts[1] if len(parts) == 2 else None


def _hf() -> Any:
    """huggingface_hub, with the submodules used here imported (the package loads them lazily)."""
    feature = "loading models from the Hugging Face Hub (hf-hub:)"
    for sub in ("constants", "errors"):
        require(f"huggingface_hub.{sub}", "hub", feature)
    return require("huggingface_hub", "hub", feature)


def hf_offline() -> bool:
    """Whether Hugging Face Hub offline mode is on (``$HF_HUB_OFFLINE``, read now, not only at import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in ("1", "ON", "YES", "TRUE") or bool(_hf().constants.is_offline_mode())


def hf_cache_dir() -> str:
    """The Hugging Face Hub cache: ``$HF_HUB_CACHE`` as set now, else huggingface_hub's default."""
    return os.environ.get("HF_HUB_CACHE") or _hf().constants.HF_HUB_CACHE


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file (``sha1(b"blob <size>\\0" + content)``): a non-LFS file's hub etag."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _expected_etag(path: Path, repo_id: str, filename: str, label: str) -> str:
    """The hub's etag of a downloaded file: the name of the cache blob it links to, else asked of the hub."""
    real = path.resolve()
    if real.parent.name == "blobs":
        return real.name
    commit = path.parent.name  # snapshots/<commit>/<file> when the cache holds copies (no symlinks)
    if hf_offline():
        raise WeightsError(f"{label}: cannot check {path}: the cache keeps no hash for it (a copy, not a "
                           "link to a blob) and HF_HUB_OFFLINE is set; load it once online, or pass the "
                           "file you trust as pretrained=PATH")
    hub = _hf()
    try:
        meta = hub.get_hf_file_metadata(hub.hf_hub_url(repo_id, filename, revision=commit))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{label}: could not get the hash of {filename} from the hub ({e})") from e
    return meta.etag or ""


def verify_hf_file(path: str | os.PathLike, repo_id: str, filename: str, label: str) -> Path:
    """Check a Hub file against the hub's etag: SHA-256 for an LFS file, git SHA-1 for a small one.

    Raises:
        WeightsError: the content does not hash to the etag (naming the file and both hashes), or the
            etag is neither kind of hash.
    """
    path = Path(path)
    etag = _expected_etag(path, repo_id, filename, label)
    if _SHA256.fullmatch(etag):
        algo, actual = "SHA-256", sha256_file(path)
    elif _GIT_SHA1.fullmatch(etag):
        algo, actual = "git SHA-1", git_blob_sha1(path)
    else:
        raise WeightsError(f"{label}: the hub's etag of {filename} ({etag[:80]!r}) is not a hash, so "
                           f"{path} cannot be checked")
    if actual != etag:
        raise HashMismatchError(
            f"{label}: {filename} in the Hugging Face cache ({path.resolve()}) has {algo} {actual[:16]}..., "
            f"but the hub's is {etag[:16]}...: the file is corrupt or was altered; delete it (hf cache "
            "delete, or remove that file) so it is downloaded again"
        )
    return path


def _hf_download(model_id: str, filename: str) -> Path:
    """``hf_hub_download`` of one file (cache first, honouring offline mode); WeightsError when it fails."""
    hub = _hf()
    repo_id, revision = hf_split(model_id)
    offline = hf_offline()
    cache = hf_cache_dir()
    try:
        return Path(hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                        local_files_only=offline))
    except (OSError, ValueError, hub.errors.EntryNotFoundError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if offline:
            fix = (f"HF_HUB_OFFLINE is set and the Hugging Face cache ({cache}) does not hold it: "
                   "download it once online, or unset HF_HUB_OFFLINE")
        else:
            fix = "check the repo id and revision, the network, and `hf auth login` for a gated repo"
        raise WeightsError(f"hf-hub:{model_id}: could not get {filename} ({type(e).__name__}: "
                           f"{reason}); {fix}") from e


def hf_file(model_id: str, filename: str) -> Path:
    """``filename`` of Hub repo ``model_id`` (``owner/repo[@rev]``) from the cache or the hub, hash-checked.

    Raises:
        MissingDependencyError: huggingface_hub is not installed.
        WeightsError: the repo, revision or file cannot be had (offline and not cached, not found,
            gated, no network), or the hash does not match; the message names the id and the file.
    """
    path = _hf_download(model_id, filename)
    return verify_hf_file(path, hf_split(model_id)[0], filename, f"hf-hub:{model_id}")


def hf_weights_file(model_id: str) -> Path:
    """Hub repo ``model_id``'s weights: ``model.safetensors``, else ``pytorch_model.bin``; hash-checked."""
    errors = []
    for name in HF_WEIGHTS_NAMES:
        try:
            path = _hf_download(model_id, name)
        except WeightsError as e:
            errors.append(str(e))
            # The next name only if this one is absent: a failing network would fail (slowly) again.
            if not (hf_offline() or isinstance(e.__cause__, _hf().errors.RemoteEntryNotFoundError)):
                break
            continue
        return verify_hf_file(path, hf_split(model_id)[0], name, f"hf-hub:{model_id}")
    raise WeightsError(f"hf-hub:{model_id}: no weights splitattn can read: " + " | ".join(errors))


__all__ = ["HF_WEIGHTS_NAMES", "SAFE_WEIGHTS_NAME", "git_blob_sha1", "hf_cache_dir", "hf_file", "hf_offline",
           "hf_split", "hf_weights_file", "verify_hf_file"]
