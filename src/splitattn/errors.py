"""The project's errors: one base class, so callers (and the CLI) can tell a user's problem from a bug.

Every error splitattn raises on bad input derives from :class:`SplitAttnError` and names what is wrong
(the file, key, shape or URL) and how to fix it. The CLI prints these as one line (exit 2); any other
exception is a bug and keeps its traceback. The subclasses also derive from the built-in exception that
describes them (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SplitAttnError(Exception):
    """Base class of every error splitattn raises on bad input, files or configuration."""


class ConfigError(SplitAttnError, ValueError):
    """A configuration key or value is unknown, of the wrong type or out of range."""


class InputError(SplitAttnError, ValueError):
    """A tensor, argument or model name given to a library function is invalid."""


class MissingFileError(SplitAttnError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DataError(SplitAttnError, ValueError):
    """A dataset folder, annotation file or label map is malformed."""


class BadImageError(DataError):
    """An image file cannot be decoded (corrupt, truncated, or too large)."""


class WeightsError(SplitAttnError, ValueError):
    """A weights file that cannot be used, with a message naming the file and the problem."""


class CheckpointError(SplitAttnError, ValueError):
    """A training checkpoint is missing, truncated, corrupt, of another run, or needs pickled code."""


class TrainingDivergedError(SplitAttnError, FloatingPointError):
    """The training loss became NaN or infinite."""


class EvalOnlyError(SplitAttnError, RuntimeError):
    """``.train()`` was called on a model whose BatchNorms were folded by ``optimize_for_inference``."""


class DiskFullError(SplitAttnError, OSError):
    """A file could not be written because its file system is full (the previous file is kept)."""


class Interrupted(SplitAttnError):
    """Training was stopped by SIGINT or SIGTERM after saving a checkpoint.

    Attributes:
        exit_code: 130 for SIGINT, 143 for SIGTERM (128 + the signal number), what a shell expects.
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MissingDependencyError(SplitAttnError, ImportError):
    """An optional package needed by the requested feature is not installed."""


def worker_error(e: SplitAttnError) -> SplitAttnError:
    """``e`` with a one-line message again when a DataLoader worker re-raised it (adding a traceback)."""
    text = str(e).strip()
    if "Original Traceback" not in text:
        return e
    last = text.splitlines()[-1]
    return type(e)(last.split(": ", 1)[1] if ": " in last else last)


def require(module: str, extra: str, feature: str) -> object:
    """Import an optional dependency, or raise :class:`MissingDependencyError` saying how to install it.

    Args:
        module: the module to import (``"matplotlib.pyplot"``).
        extra: the splitattn extra that installs it (``"plot"`` -> ``pip install 'splitattn[plot]'``).
        feature: what needs it, for the message (``"splitattn plot"``).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{feature} needs the optional package '{top}', which is not installed; "
            f"pip install 'splitattn[{extra}]' (or pip install {top})"
        ) from e


__all__ = [
    "BadImageError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DiskFullError",
    "EvalOnlyError",
    "InputError",
    "Interrupted",
    "MissingDependencyError",
    "MissingFileError",
    "SplitAttnError",
    "TrainingDivergedError",
    "WeightsError",
    "require",
    "worker_error",
]
