"""Per-sample seeding: a sample's random augmentation depends only on (seed, epoch, index)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index): augmentation is then the same whatever
    the number of workers, the world size, or where a resumed run restarts."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class SeededDataset(Dataset):
    """Runs ``dataset[i]`` with torch's CPU RNG, Python's ``random`` and NumPy's global RNG seeded from
    :func:`sample_seed` ``(seed, epoch, i)``, and restores the three RNG states afterwards.

    Attribute access falls through to the wrapped dataset (``classes``, ``num_classes``, ``coco``...).
    Call :meth:`set_epoch` before each epoch; DataLoader workers see it when they are started for the
    epoch (i.e. without ``persistent_workers``).

    Args:
        dataset: any map-style dataset whose randomness comes from those three RNGs.
        seed: the run's base seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = sample_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                random.seed(s)
                np.random.seed(s & 0xFFFFFFFF)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally. Read ``dataset`` from __dict__: while unpickling
        # (in a DataLoader worker) it is not set yet, and ``self.dataset`` would recurse.
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(dataset, name)


__all__ = ["SeededDataset", "sample_seed"]
