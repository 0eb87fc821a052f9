"""Activation checkpointing that leaves BatchNorm's running statistics alone.

``torch.utils.checkpoint`` re-runs the forward during backward. A BatchNorm in training mode inside it
would then update its running mean and variance (and ``num_batches_tracked``) a second time with the
same batch, so a checkpointed model would not train like the plain one. :func:`checkpoint` restores
those buffers after the recomputation, so checkpointing changes memory and time only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


def _norm_buffers(modules: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    bufs: list[torch.Tensor] = []
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                bufs += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return bufs


@contextlib.contextmanager
def _keep_buffers(bufs: list[torch.Tensor]) -> Iterator[None]:
    saved = [b.clone() for b in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in zip(bufs, saved):
                b.copy_(v)


def checkpoint(fn: Callable[..., Any], *args: Any, modules: tuple[nn.Module, ...] = ()) -> Any:
    """``fn(*args)`` saving only ``args`` for backward and recomputing the rest there.

    Args:
        fn: the function to checkpoint (typically a module or a bound method).
        args: its tensor inputs; these are what is kept for backward.
        modules: the modules whose BatchNorm buffers ``fn`` updates (``fn`` itself if it is a module);
            their running statistics are put back after the backward's recomputation.

    Returns:
        ``fn(*args)``. The RNG state is replayed, so DropBlock / dropout masks match the forward.
    """
    if isinstance(fn, nn.Module) and not modules:
        modules = (fn,)
    bufs = _norm_buffers(modules)
    if not bufs or torch.compiler.is_compiling():
        # Under torch.compile the recomputation is done by the partitioner on a functional graph and
        # does not repeat buffer updates; dynamo only accepts the default context there.
        return _torch_checkpoint(fn, *args, use_reentrant=False)
    return _torch_checkpoint(
        fn, *args, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _keep_buffers(bufs)),
    )
