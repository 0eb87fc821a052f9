"""The radix attention weights of every Split-Attention conv, captured with forward hooks.

Each :class:`~splitattn.layers.split_attn.SplitAttn` computes, per image, a weight ``a_r(c)`` for every
split ``r`` of every output channel ``c`` (softmax over the ``R`` splits; a sigmoid gate when ``R == 1``).
:func:`attention_maps` returns them for a batch, named by module (``layer3.2.conv2``);
:class:`capture_attention` does the same around any forward of the caller's (logits and attention in one
pass); :func:`attention_summary` reduces them to the numbers ``splitattn explain`` plots.

The hooks live on each SplitAttn's ``fc2`` only while capturing and are removed afterwards (also on an
error), so the model runs as before outside the call.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..layers.split_attn import SplitAttn, radix_softmax


def split_attention_modules(model: nn.Module) -> list[tuple[str, SplitAttn]]:
    """``(qualified name, module)`` of every SplitAttn in ``model``, in registration order.

    Found by type anywhere in the module tree, so a classifier gives ``layer1.0.conv2``, a detection model
    ``backbone.body.layer1.0.conv2``.

    Raises:
        InputError: ``model`` has none (a radix-0 ResNet-D / ResNeXt baseline, or another network).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"attention_maps expects an nn.Module, got {type(model).__name__}")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, SplitAttn)]
    if not found:
        raise InputError(
            f"the {type(model).__name__} has no Split-Attention conv (a radix-0 model is a plain "
            "ResNet-D / ResNeXt): no attention to show; use a ResNeSt with radix >= 1"
        )
    return found


def _record(store: dict[str, torch.Tensor], name: str, module: SplitAttn, _fc2: nn.Module,
            _inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    """fc2 forward hook: ``(B, R*C, 1, 1)`` cardinal-major logits -> ``(B, R, C)`` weights on CPU."""
    logits = output.detach().flatten(1).float()
    weights = radix_softmax(logits, module.radix, module.cardinality)  # radix-major (B, R*C)
    store[name] = weights.view(logits.shape[0], module.radix, -1).cpu()


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[OrderedDict[str, torch.Tensor]]:
    """Record the attention of every SplitAttn of ``model`` during the forwards run inside the block.

    Yields an ordered dict, filled as the model runs: SplitAttn name -> ``(B, R, C)`` float32 CPU tensor,
    ``[b, r, c]`` = the weight of split ``r`` for output channel ``c`` (channel ``c`` is cardinal group
    ``c // (C / K)``). It sums to 1 over ``R`` when ``R > 1``; with ``R == 1`` it is the sigmoid gate in
    (0, 1). A module run twice keeps its last call. Entries follow the module order of ``model``.

    The weights are detached: the caller's forward keeps its own autograd graph and output (the hooks read
    ``fc2``'s output and change nothing). The hooks are removed on exit, also on an error.

    Raises:
        InputError: ``model`` has no SplitAttn (see :func:`split_attention_modules`).

    Example:
        >>> with capture_attention(model) as maps:
        ...     logits = model(x)
    """
    modules = split_attention_modules(model)
    store: dict[str, torch.Tensor] = {}
    maps: OrderedDict[str, torch.Tensor] = OrderedDict()
    handles = []
    try:
        for name, m in modules:
            handles.append(m.fc2.register_forward_hook(partial(_record, store, name, m)))
        yield maps
    finally:
        for h in handles:
            h.remove()
        maps.update((name, store[name]) for name, _ in modules if name in store)


def attention_maps(model: nn.Module, x: Any) -> OrderedDict[str, torch.Tensor]:
    """The radix attention weights of every Split-Attention conv of ``model`` for the batch ``x``.

    The model runs once under ``torch.no_grad()`` in its current mode (call ``model.eval()`` first for
    inference statistics: in training mode BatchNorm would use, and update, batch statistics).

    Args:
        model: a ResNeSt of any radix >= 1, a ``features_only`` backbone, a detection or segmentation model,
            or any module holding SplitAttn convs.
        x: the model's input, e.g. a ``(B, 3, H, W)`` normalised image batch.

    Returns:
        SplitAttn name (``layer3.2.conv2``) -> ``(B, R, C)`` float32 tensor on CPU, detached, in module order:
        ``[b, r, c]`` is the weight image ``b`` gives split ``r`` of output channel ``c`` (softmax over
        ``R``, or the sigmoid gate for ``R == 1``).

    Raises:
        InputError: ``model`` has no SplitAttn (radix 0: no attention to show), or the forward ran none.
    """
    with torch.no_grad(), capture_attention(model) as maps:
        model(x)
    if not maps:
        raise InputError(f"the forward of the {type(model).__name__} ran none of its Split-Attention convs; "
                         "pass an input its forward sends through the ResNeSt stages")
    return maps


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each channel's attention: ``(B, R, C) -> (B, C)``.

    Over the ``R`` splits for ``R > 1`` (0 = all weight on one split, ``log2 R`` = uniform); for the
    ``R == 1`` sigmoid gate, that of the Bernoulli ``(a, 1 - a)`` (0 = gate shut or open, 1 = at 0.5).
    """
    p = weights.double()
    if p.shape[1] == 1:
        p = torch.cat([p, 1 - p], 1)
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(1).float()


def max_entropy_bits(radix: int) -> float:
    """The largest :func:`attention_entropy`: ``log2 R`` for ``R > 1``, 1 bit for the sigmoid gate."""
    return math.log2(radix) if radix > 1 else 1.0


def attention_summary(maps: OrderedDict[str, torch.Tensor] | dict[str, torch.Tensor],
                      ) -> OrderedDict[str, dict[str, Any]]:
    """Per block, the numbers ``splitattn explain`` plots, over all images and channels of ``maps``.

    Returns:
        name -> ``{"radix": R, "channels": C, "mean": [R] mean weight of each split, "std": [R] its spread
        (standard deviation across channels and images), "entropy_bits": mean entropy,
        "max_entropy_bits": log2 R (1 for R = 1)}``; plain Python numbers, ready for JSON.
    """
    out: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for name, w in maps.items():
        r = w.shape[1]
        flat = w.transpose(0, 1).reshape(r, -1).double()  # (R, B*C)
        out[name] = {
            "radix": r,
            "channels": int(w.shape[2]),
            "mean": flat.mean(1).tolist(),
            "std": flat.std(1, correction=0).tolist(),
            "entropy_bits": float(attention_entropy(w).double().mean()),
            "max_entropy_bits": max_entropy_bits(r),
        }
    return out


__all__ = ["attention_entropy", "attention_maps", "attention_summary", "capture_attention",
           "max_entropy_bits", "split_attention_modules"]
