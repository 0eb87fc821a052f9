"""Mixed precision: one switch (``"bf16"``, ``"fp16"``, ``"off"``) for autocast and the grad scaler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import ConfigError

AMP_MODES = ("bf16", "fp16", "off")


def _check(amp: str) -> str:
    amp = (amp or "off").lower()
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    return amp


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    """Autocast to bfloat16/float16 on ``device`` (a no-op for ``"off"``).

    fp16 is GPU-only; on CPU it is refused with a clear error (use bf16 there).
    """
    amp = _check(amp)
    device = torch.device(device)
    if amp == "off":
        yield
        return
    if amp == "fp16" and device.type == "cpu":
        raise ConfigError("--amp fp16 needs a GPU; use --amp bf16 or --amp off on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A :class:`torch.amp.GradScaler`, enabled only for fp16 (bf16 needs no loss scaling).

    A disabled scaler is still returned so the training loop and checkpoints have one code path.
    """
    amp = _check(amp)
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type != "cpu")


__all__ = ["AMP_MODES", "autocast", "make_grad_scaler"]
