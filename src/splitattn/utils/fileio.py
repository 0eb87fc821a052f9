"""The one way splitattn writes files (atomically) and reads PyTorch pickles (without running code)."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import pickle
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DiskFullError, SplitAttnError

TMP_SUFFIX = ".tmp"
_PROC_STATUS = "/proc/self/status"  # Linux: holds the umask ("Umask:\t0022") without changing it


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask, read from ``/proc/self/status`` on Linux; elsewhere by setting and restoring it,
    which is process-wide and so only the fallback (another thread creating a file in between would get
    the temporary umask)."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The permissions a file written at ``path`` gets: those of the regular file it replaces, else what
    ``open()`` would give a new file (0666 less the umask)."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode) & 0o777
    except OSError:
        pass
    return 0o666 & ~_current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` all at once: a kill at any moment leaves either the old file or the new one.

    ``write(tmp)`` writes the content to a temp file in the same folder; it is then fsync'ed and
    ``os.replace``'d over ``path``, and the folder is fsync'ed so the rename is durable. The temp file
    is removed on every failure. The new file keeps the permissions of the file it replaces, or gets
    0666 less the umask when there is none (as ``open()`` would give it; ``mkstemp``'s 0600 would make
    a shared cache or model folder unreadable to others).

    Args:
        path: the destination; its folder is created.
        write: called with the temp file's path.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), _new_file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        full = _disk_full(path, e)
        if full is None:
            raise
        raise full from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _disk_full(path: Path, e: BaseException) -> DiskFullError | None:
    """A one-line error naming ``path`` and the free space when ``e`` means the disk is full."""
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or "unexpected pos" in str(e) or "No space left" in str(e)
    if not full:
        return None
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"no space left on the device writing {path} ({free} on that file system); "
                         f"the previous {path.name}, if any, is unchanged: free some space and run again")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that :func:`atomic_write` leaves behind when a process is killed mid-write."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`atomic_write` of ``torch.save(obj)``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


_DIR_SUFFIX = ".tmpdir"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, replaced: set[str]) -> None:
    """Hard-link (else copy) the entries of ``old`` into ``new``, but ``replaced`` and stale temp files."""
    for entry in os.scandir(old):
        if entry.name in replaced or (entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX)):
            continue
        dst = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(dst))


def _sync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None], replaces: Sequence[str] = ()
                     ) -> Path:
    """Write the folder ``path`` whole or not at all: a kill at any moment leaves the old folder or the new.

    ``write(tmp)`` fills a temp folder next to ``path``. The other entries of an existing ``path`` (all but
    ``replaces``) are carried over as hard links, so nothing of the user's is lost; the temp folder then
    takes ``path``'s place in one atomic exchange (``renameat2(RENAME_EXCHANGE)``, Linux) and the old
    folder is removed. A kill leaves at worst a hidden ``.NAME.*.tmpdir`` sibling, which the next call
    removes. Where the exchange is not supported the old folder is renamed aside first, so a kill between
    the two renames leaves it as ``.NAME.*.tmpdir.old`` (kept, never removed by this function).

    Args:
        path: the folder; its parent is created.
        write: called with the temp folder.
        replaces: names that ``write`` writes, not carried over from the old folder.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        NotADirectoryError: ``path`` is a file.
        DiskFullError: the file system is full (the old folder is unchanged).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{_DIR_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp: Path | None = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_DIR_SUFFIX, dir=path.parent))
    try:
        old = path.is_dir()
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if old else 0o777 & ~_current_umask())
        if old:
            _carry_over(path, tmp, set(replaces))
        write(tmp)
        _sync_tree(tmp)
        if not old:
            os.rename(tmp, path)
            tmp = None
        elif not _exchange(tmp, path):
            aside = tmp.with_name(tmp.name + ".old")
            os.rename(path, aside)
            os.rename(tmp, path)
            tmp = aside
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        full = _disk_full(path, e)
        if full is None:
            raise
        raise full from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def safe_torch_load(path: str | os.PathLike, error: type[SplitAttnError], what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain containers only, never code.

    Args:
        path: the file.
        error: the exception raised for an unreadable file (e.g. ``WeightsError``).
        what: what the file is, for the message (``"checkpoint"``).

    Raises:
        error: the file needs pickled code, or is truncated or corrupt; the message names the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError as e:
        raise error(f"{what} {path} is corrupt: it asks for more memory than this machine has") from e
    except Exception as e:  # noqa: BLE001 (a crafted file can raise anything from the unpickler)
        text = str(e)
        code = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global:?) *(?:GLOBAL )?([\w.]+)", text)
        if isinstance(e, pickle.UnpicklingError) and code:
            raise error(
                f"{what} {path} needs pickled code to load (the global {code.group(1)}), which splitattn "
                "refuses to execute; re-save it as plain tensors and containers (or safetensors)"
            ) from e
        first = text.splitlines()[0] if text else type(e).__name__
        raise error(f"{what} {path} is truncated or corrupt ({first[:200]})") from e


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_dir", "atomic_write_text",
           "remove_stale_temp_files", "safe_torch_load"]
