"""RNG states as tensors and plain containers, so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..utils.validation import short_repr


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU, CUDA), NumPy and Python RNG states, as tensors/ints/floats only."""
    py = random.getstate()
    npk, npkeys, nppos, nphas, npg = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(npk), "keys": torch.from_numpy(npkeys.astype(np.int64)), "pos": int(nppos),
                  "has_gauss": int(nphas), "gauss": float(npg)},
        "python": {"version": int(py[0]), "state": torch.tensor(py[1], dtype=torch.int64)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _tensor_problem(value: Any, name: str, dtype: torch.dtype, numel: int | None, hi: int | None = None,
                    ) -> str | None:
    want = f"a 1-D {str(dtype).replace('torch.', '')} tensor" + (f" of {numel} values" if numel else "")
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, expected {want}"
    if value.dtype != dtype or value.dim() != 1 or (numel is not None and value.numel() != numel):
        return f"{name} is a {value.dtype} tensor of shape {tuple(value.shape)}, expected {want}"
    if hi is not None and value.numel() and (int(value.min()) < 0 or int(value.max()) >= hi):
        return f"{name} holds values outside [0, {hi})"
    return None


def _int_problem(value: Any, name: str, lo: int, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return f"{name} is {short_repr(value)}, expected an integer in [{lo}, {hi}]"
    return None


def _dict_problem(value: Any, name: str, keys: tuple[str, ...]) -> str | None:
    if not isinstance(value, dict):
        return f"{name} is a {type(value).__name__}, expected a dict"
    missing = [k for k in keys if k not in value]
    return f"{name} has no {', '.join(map(repr, missing))}" if missing else None


def rng_state_problem(state: Any) -> str | None:
    """What is wrong with ``state`` as a :func:`get_rng_state` result (types, dtypes, lengths, ranges), in
    a few words naming the entry; ``None`` when :func:`set_rng_state` can restore it."""
    problem = _dict_problem(state, "it", ("torch", "numpy", "python"))
    if problem:
        return problem
    n, p = state["numpy"], state["python"]
    mt = 2**32
    checks = (
        lambda: _tensor_problem(state["torch"], "'torch'", torch.uint8, torch.get_rng_state().numel()),
        lambda: _dict_problem(n, "'numpy'", ("kind", "keys", "pos", "has_gauss", "gauss")),
        lambda: None if n["kind"] == "MT19937" else f"'numpy' kind is {short_repr(n['kind'])}, not MT19937",
        lambda: _tensor_problem(n["keys"], "'numpy' keys", torch.int64, 624, hi=mt),
        lambda: _int_problem(n["pos"], "'numpy' pos", 0, 624),
        lambda: _int_problem(n["has_gauss"], "'numpy' has_gauss", 0, 1),
        lambda: None if isinstance(n["gauss"], float | int) and not isinstance(n["gauss"], bool)
        else f"'numpy' gauss is {short_repr(n['gauss'])}, expected a number",
        lambda: _dict_problem(p, "'python'", ("version", "state")),
        lambda: _int_problem(p["version"], "'python' version", 3, 3),
        lambda: _tensor_problem(p["state"], "'python' state", torch.int64, 625, hi=mt),
        lambda: _int_problem(int(p["state"][-1]), "the last value of 'python' state", 0, 624),
        lambda: None if "cuda" not in state or (isinstance(state["cuda"], list | tuple) and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in state["cuda"]))
        else "'cuda' is not a list of uint8 tensors",
    )
    for check in checks:  # in order: each one may rely on the ones before
        problem = check()
        if problem:
            return problem
    return None


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (check it with :func:`rng_state_problem` first)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


__all__ = ["get_rng_state", "rng_state_problem", "seed_everything", "set_rng_state"]
