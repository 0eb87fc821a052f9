"""Downloading weights into a cache, the way torch.hub and huggingface_hub do it.

* The cache entry is derived from the whole URL (``<cache>/<sha256(url)[:16]>/<file name>``), so two
  URLs ending in the same file name never share an entry; a file named ``<name>-<hex>.<ext>`` whose hex
  is the expected SHA-256 prefix goes to ``<cache>/<file name>`` (torch.hub's layout), since its content
  is pinned by the hash.
* Connect and read timeouts (:data:`DOWNLOAD_TIMEOUT`, ``$SPLITATTN_DOWNLOAD_TIMEOUT``), a deadline for the
  whole download (:data:`DOWNLOAD_DEADLINE`, ``$SPLITATTN_DOWNLOAD_DEADLINE``: a server sending a byte now
  and then never trips a read timeout) and a size cap (the expected size when known, else
  :data:`MAX_DOWNLOAD_BYTES`, ``$SPLITATTN_MAX_DOWNLOAD_BYTES``): a ``Content-Length`` over the cap is
  refused before reading, a body growing past it is cut off.
* A web page (``Content-Type: text/html``, or a body starting like an HTML document: a login or error page
  answered with status 200) and a body shorter than its ``Content-Length`` are refused, never cached.
* The body goes to a temp file in the cache folder (:func:`splitattn.utils.fileio.atomic_write`), moved into
  place only once complete and, when a hash is expected, matching it; every failure (timeout, size, hash,
  HTTP error, Ctrl-C) removes it. A cached file that then does not load is moved aside
  (:func:`discard_download`), so the next call downloads it again.
* At most :data:`MAX_REDIRECTS` redirects, only to http(s) URLs, never in a loop.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urlparse

import torch

from ..errors import ConfigError, InputError, SplitAttnError, WeightsError
from ..utils.fileio import atomic_write
from ._urlopen import MAX_REDIRECTS, Deadline, open_url

log = logging.getLogger("splitattn")

DOWNLOAD_TIMEOUT = 60.0
"""Seconds to wait for the connection and for each read (``$SPLITATTN_DOWNLOAD_TIMEOUT`` overrides)."""
DOWNLOAD_DEADLINE = 3600.0
"""Seconds one whole download may take (``$SPLITATTN_DOWNLOAD_DEADLINE`` overrides)."""
MAX_DOWNLOAD_BYTES = 4 * 1024**3
"""Largest download when its size is not known in advance (``$SPLITATTN_MAX_DOWNLOAD_BYTES`` overrides)."""
_CHUNK = 1 << 16
_HASHED_NAME = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z0-9]+$")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")


class HashMismatchError(WeightsError):
    """A file (downloaded or cached) whose hash is not the expected one: never used, never routed around."""


def cache_dir() -> Path:
    """Where downloaded weights go: ``$SPLITATTN_CACHE`` or ``<torch hub dir>/checkpoints``."""
    env = os.environ.get("SPLITATTN_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def url_file_name(url: str) -> str:
    """The last path segment of ``url``, reduced to ``[A-Za-z0-9._-]`` (never ``..``, never empty)."""
    name = os.path.basename(urlparse(url).path)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:200]
    return name or "download"


def hash_prefix_in_name(url: str) -> str | None:
    """The SHA-256 prefix of a torch.hub-style file name ``<name>-<hex digits>.<ext>``, or None."""
    m = _HASHED_NAME.search(url_file_name(url))
    return m.group(1) if m else None


def cache_path(url: str, hash_prefix: str | None = None) -> Path:
    """The cache file of ``url``: torch.hub's ``<cache>/<name>`` when the name carries ``hash_prefix``,
    else ``<cache>/<sha256(url)[:16]>/<name>`` (the fragment is not part of the key)."""
    url = urldefrag(url).url
    name = url_file_name(url)
    if hash_prefix and hash_prefix_in_name(url) == hash_prefix:
        return cache_dir() / name
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _env_number(var: str, default: float, kind: type) -> Any:
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise ConfigError(f"${var} must be a positive {'integer' if kind is int else 'number'}, got {raw!r}")
    return value


def download_timeout() -> float:
    """Connect/read timeout in seconds: ``$SPLITATTN_DOWNLOAD_TIMEOUT`` or :data:`DOWNLOAD_TIMEOUT`."""
    return _env_number("SPLITATTN_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT, float)


def download_deadline() -> float:
    """Seconds a whole download may take: ``$SPLITATTN_DOWNLOAD_DEADLINE`` or :data:`DOWNLOAD_DEADLINE`."""
    return _env_number("SPLITATTN_DOWNLOAD_DEADLINE", DOWNLOAD_DEADLINE, float)


def max_download_bytes() -> int:
    """Size cap of a download of unknown size: ``$SPLITATTN_MAX_DOWNLOAD_BYTES`` or the default."""
    return _env_number("SPLITATTN_MAX_DOWNLOAD_BYTES", MAX_DOWNLOAD_BYTES, int)


def _content_length(resp: Any) -> int | None:
    try:
        value = int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _refuse_web_page(url: str, content_type: str, head: bytes) -> None:
    """WeightsError when a response is an HTML page (by its Content-Type, or its first bytes)."""
    if content_type.split(";")[0].strip().lower() in _HTML_TYPES:
        got = f"Content-Type {content_type.strip()[:60]}"
    elif head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS):
        got = f"a body starting {head.strip()[:24]!r}"
    else:
        return
    raise WeightsError(f"{url} answered with a web page ({got}), not a weights file (a login, error or "
                       "download page?): check the URL (a release asset's, not its page); nothing was cached")


def _copy_body(resp: Any, tmp: str, url: str, cap: int, length: int | None, progress: bool,
               guard: Deadline) -> str:
    """Stream ``resp`` into ``tmp``, at most ``cap`` bytes and exactly ``length`` when given.

    Returns:
        The hex SHA-256 of what was written.
    """
    h, total, head = hashlib.sha256(), 0, b""
    # read1: one socket read per call, so a slow server cannot hold one call (read() fills its 64 KiB).
    read = getattr(resp, "read1", None) or resp.read
    bar = _progress_bar(length, url) if progress else None
    if not guard.expired:  # else the headers were cut short by the deadline, not complete
        guard.received, guard.length = 0, length
    try:
        with open(tmp, "wb") as f:
            while block := _read_block(read, url, total, length):
                total += len(block)
                guard.received = total
                if total > cap:
                    raise WeightsError(f"download of {url} stopped: the body grew past {cap:,} bytes, the "
                                       "limit; set $SPLITATTN_MAX_DOWNLOAD_BYTES to allow more")
                if length is not None and total > length:  # a file:// "file" such as /dev/zero
                    raise WeightsError(f"download of {url} stopped: the body is longer than its "
                                       f"Content-Length of {length:,} bytes")
                if len(head) < 64:
                    head += block[:64 - len(head)]
                    _refuse_web_page(url, "", head)
                h.update(block)
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    if guard.expired:  # the socket was shut: the end of the body is not the server's
        raise guard.error(url)
    if length is not None and total != length:
        raise WeightsError(f"download of {url} is incomplete: got {total:,} of {length:,} bytes (the "
                           "connection closed early); try again; nothing was cached")
    return h.hexdigest()


def _read_block(read: Any, url: str, total: int, length: int | None) -> bytes:
    try:
        return read(_CHUNK)
    except http.client.IncompleteRead as e:  # a chunked body cut short
        of = f" of {length:,}" if length is not None else ""
        raise WeightsError(f"download of {url} is incomplete: the connection closed after "
                           f"{total + len(e.partial):,}{of} bytes; try again; nothing was cached") from e


def _progress_bar(total: int | None, url: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url_file_name(url))


def _fetch(url: str, dst: Path, hash_prefix: str | None, timeout: float, cap: int,
           expected_size: int | None, progress: bool, guard: Deadline) -> None:
    """Download ``url`` to ``dst`` through a temp file, checking size and hash; see :func:`download`."""
    log.info("downloading %s to %s", url, dst)
    with open_url(url, timeout, guard) as resp:
        length = _content_length(resp)
        if expected_size is not None and length is not None and length != expected_size:
            raise WeightsError(f"{url} is {length:,} bytes (Content-Length), expected {expected_size:,}: "
                               "not the expected file")
        if length is not None and length > cap:
            raise WeightsError(f"{url} is {length:,} bytes (Content-Length), over the {cap:,}-byte limit; "
                               "set $SPLITATTN_MAX_DOWNLOAD_BYTES to allow more")
        _refuse_web_page(url, resp.headers.get("Content-Type", ""), b"")

        def write(tmp: str) -> None:
            want = length if length is not None else expected_size
            digest = _copy_body(resp, tmp, url, cap, want, progress, guard)
            if hash_prefix and not digest.startswith(hash_prefix):
                got = digest[:max(len(hash_prefix), 12)]
                raise HashMismatchError(f"SHA-256 hash mismatch for {url}: expected a prefix {hash_prefix}, "
                                        f"got {got}...; the download was deleted")

        atomic_write(dst, write)  # removes its temp file on every failure, Ctrl-C included


def _check_cache_folder(dst: Path) -> None:
    """ConfigError naming the cache (and ``$SPLITATTN_CACHE``) when ``dst``'s folder cannot hold a download:
    not a network failure, so not worth a retry nor a mirror."""
    root, folder, problem = cache_dir(), dst.parent, None
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                problem = f"{p} is not a folder"
            break
    if problem is None and (dst.exists() or dst.is_symlink()) and not dst.is_file():
        problem = f"{dst} is in the way (not a regular file)"
    if problem is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problem = f"cannot create {folder} ({e.strerror or type(e).__name__})"
        else:
            if not os.access(folder, os.W_OK | os.X_OK):
                problem = f"{folder} is not writable"
    if problem:
        what = (f"$SPLITATTN_CACHE={root}" if os.environ.get("SPLITATTN_CACHE")
                else f"the download cache {root} (torch.hub's)")
        raise ConfigError(f"{what} cannot hold downloads: {problem}; point $SPLITATTN_CACHE at a writable "
                          "folder")


def download(url: str, hash_prefix: str | None = None, progress: bool = False, *,
             timeout: float | None = None, max_bytes: int | None = None,
             expected_size: int | None = None, deadline: float | None = None) -> Path:
    """Download ``url`` into :func:`cache_dir` (once) and check its SHA-256 prefix.

    A cached file is re-checked on every call when a hash is given, so a corrupt entry is reported,
    not used.

    Args:
        url: an ``http(s)://`` (or ``file://``) URL.
        hash_prefix: leading hex digits the file's SHA-256 must have.
        progress: show a progress bar (when tqdm is installed).
        timeout: seconds to wait to connect and for each read; default :func:`download_timeout`.
        max_bytes: size cap when ``expected_size`` is not given; default :func:`max_download_bytes`.
        expected_size: the exact size of the file, when known.
        deadline: seconds the whole download may take; default :func:`download_deadline`.

    Returns:
        The cached file (:func:`cache_path`).

    Raises:
        WeightsError: HTTP error, timeout, deadline, too large, redirect loop, a web page, incomplete or
            wrong hash; the message names the URL, and no partial file is left behind.
        ConfigError: the cache folder (``$SPLITATTN_CACHE``) cannot hold the file.
    """
    dst = cache_path(url, hash_prefix)
    if not dst.is_file():
        _check_cache_folder(dst)
        timeout = download_timeout() if timeout is None else timeout
        deadline = download_deadline() if deadline is None else deadline
        if not deadline > 0:
            raise InputError(f"download deadline must be a positive number of seconds, got {deadline!r}")
        if expected_size is not None:
            cap = expected_size
        else:
            cap = max_bytes if max_bytes is not None else max_download_bytes()
        with Deadline(deadline) as guard:
            try:
                _fetch(url, dst, hash_prefix, min(timeout, deadline), cap, expected_size, progress, guard)
            except (SplitAttnError, TimeoutError, urllib.error.URLError, http.client.HTTPException,
                    OSError) as e:
                if guard.expired:  # whatever broke, it broke because the deadline shut the connection
                    raise guard.error(url) from e
                if isinstance(e, SplitAttnError):
                    raise
                _network_error(url, e, timeout)
    if hash_prefix:
        digest = sha256_file(dst)
        if not digest.startswith(hash_prefix):
            raise HashMismatchError(
                f"cached weights {dst} have SHA-256 {digest[:12]}..., expected a prefix {hash_prefix}: "
                "the file is corrupt or not the release; delete it to download again"
            )
    return dst


def _network_error(url: str, e: BaseException, timeout: float) -> None:
    """Raise the WeightsError of a failed request: HTTP status, timeout, or the network's reason."""
    if isinstance(e, urllib.error.HTTPError):
        raise WeightsError(f"could not download {url}: HTTP {e.code} {e.reason}") from e
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
        raise WeightsError(f"could not download {url}: no answer within the {timeout:g} s timeout; "
                           "check the network or raise $SPLITATTN_DOWNLOAD_TIMEOUT") from e
    raise WeightsError(f"could not download {url}: {reason or type(e).__name__}. Download the file "
                       "by hand and pass its local path as pretrained=PATH") from e


def discard_download(path: str | os.PathLike, why: str) -> Path:
    """Move a cached download that turned out not to load aside, so the next :func:`download` fetches it
    again: to ``<name>.bad`` next to it (replacing an older one, so bad copies do not pile up).

    Args:
        path: a file :func:`download` returned (under :func:`cache_dir`).
        why: what was wrong with it, for the log.

    Returns:
        Where the file now is.

    Raises:
        InputError: ``path`` is not a file in the download cache (a user's own file is never moved).
        WeightsError: it could not be moved; the message says to delete it by hand.
    """
    path = Path(path)
    root = cache_dir().resolve()
    real = path.resolve()
    if not path.is_file() or not real.is_relative_to(root):
        raise InputError(f"{path} is not a file in the download cache {root}: only cached downloads are "
                         "moved aside")
    bad = path.with_name(path.name + ".bad")
    try:
        os.replace(path, bad)
    except OSError as e:
        raise WeightsError(f"the cached download {path} did not load ({why}) and could not be moved aside "
                           f"({e.strerror or type(e).__name__}); delete it by hand") from e
    log.info("moved the cached download %s aside to %s: %s", path, bad, why)
    return bad


__all__ = ["DOWNLOAD_DEADLINE", "DOWNLOAD_TIMEOUT", "MAX_DOWNLOAD_BYTES", "MAX_REDIRECTS",
           "HashMismatchError", "cache_dir", "cache_path", "discard_download", "download",
           "download_deadline", "download_timeout", "hash_prefix_in_name", "max_download_bytes",
           "sha256_file", "url_file_name"]
