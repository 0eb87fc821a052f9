"""Batch samplers whose order depends only on (seed, epoch): DDP-equivalent and resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """Training batches for one rank, cut from one global permutation per epoch.

    Each epoch draws ``perm = randperm(n)`` from ``seed + epoch`` and splits it into global batches of
    ``batch_size * world_size`` (the incomplete tail is dropped). Rank ``r`` gets the ``r``-th slice of
    each global batch, so ``W`` processes with batch ``B`` see exactly the images that one process with
    batch ``W * B`` sees in each step: the DDP-averaged gradient equals the single-process one.

    :meth:`set_epoch` takes a ``start_batch`` to skip the batches a resumed run already trained on,
    without loading them.

    Args:
        num_samples: dataset length.
        batch_size: per-process batch.
        world_size, rank: the DDP layout.
        shuffle: permute (training) or keep order.
        seed: base seed of the permutation.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        gb = self.global_batch
        for i in range(self.start_batch, self.batches_per_epoch):
            start = i * gb + self.rank * self.batch_size
            yield order[start:start + self.batch_size]



__all__ = ["GlobalBatchSampler"]
