"""What a ResNeSt takes as input: :func:`check_input` names the problem with a tensor before it reaches a
conv (rank, channels, empty batch, size, dtype, a batch of 1 that a norm cannot take) and how to fix it."""

# No `from __future__ import annotations`, as in .resnest: the models' forwards are traced and scripted.
import torch
from torch import nn

from ..errors import InputError
from ..layers.split_attn import batch_stats_attention_norm, is_tracing

__all__ = ["MIN_INPUT_SIZE", "check_input", "stem_dtype"]

MIN_INPUT_SIZE = 32


def _refuse_batch_of_one(batch_stats: bool | nn.Module) -> None:
    """InputError for a batch of 1 if a norm would normalise the 1x1 split-attention vector by batch stats."""
    if isinstance(batch_stats, nn.Module):
        name = batch_stats_attention_norm(batch_stats)
        if name is None:
            return
        norm = batch_stats.get_submodule(name)
        mode = "in training mode" if norm.training else "without running statistics"
        where = f"{name} ({type(norm).__name__} {mode}) normalises"
    elif batch_stats:
        where = "BatchNorm normalises"
    else:
        return
    raise InputError(
        f"a batch of 1 cannot be normalised: {where} the 1x1 split-attention vector with batch statistics "
        "and needs more than 1 value per channel; use a batch of at least 2, call model.eval() for "
        "inference, freeze the BatchNorms (timm.layers.freeze_batch_norm_2d, torchvision's "
        "FrozenBatchNorm2d, or .eval() on the BatchNorm modules), or build the model with "
        "norm_layer='groupnorm' or 'frozenbn'"
    )


@torch.jit.unused
def check_input(x: torch.Tensor, in_chans: int | None, batch_stats: bool | nn.Module,
                weight_dtype: torch.dtype | None = None) -> None:
    """Validate a ResNeSt input ``(B, in_chans, H, W)`` from its shape and dtype (no device sync).

    ``in_chans``: the channels the stem conv takes (:func:`~.timm_api.stem_in_chans`; ``None``: not checked).
    ``batch_stats``: the module ``x`` runs through (a ResNeSt, a feature extractor): a batch of 1 is
    refused when one of its Split-Attention norms would normalise the 1x1 attention vector with batch
    statistics (BatchNorm in training mode; frozen or eval-mode BatchNorm does not), decided now and only
    for a batch of 1; or that answer as a bool. ``weight_dtype``: the first conv's dtype; a floating input
    of another dtype is refused unless autocast (which casts all but float64) is on for its device. Nothing
    is checked under torch.fx symbolic tracing or torch.jit.trace (see :func:`is_tracing`).

    Raises:
        InputError: naming the problem (rank, channels, empty batch, size, dtype, a batch of 1 that a norm
            cannot take) and the fix.
    """
    if is_tracing():
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise InputError(f"expected a 4D input (B, {in_chans}, H, W), got shape {shape}{hint}")
    if in_chans is not None and x.shape[1] != in_chans:
        raise InputError(
            f"expected {in_chans} input channels, got {x.shape[1]} (shape {shape}): convert "
            f"the image, or create the model with in_chans={x.shape[1]}"
        )
    if x.shape[0] == 0:
        raise InputError(f"the input batch is empty (shape {shape}); call the model with 1 or more images")
    if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:
        raise InputError(
            f"input {x.shape[2]}x{x.shape[3]} is too small: ResNeSt downsamples by 32 and needs at least "
            f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels; resize or pad the image"
        )
    if not x.is_floating_point():
        raise InputError(
            f"expected a floating-point input, got {x.dtype}: convert images to float in [0, 1] and "
            "normalise them with the model's mean/std (splitattn.data.create_eval_transform does both)"
        )
    # Autocast casts every floating input but float64 to its dtype.
    autocast = x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type)
    if weight_dtype is not None and x.dtype != weight_dtype and not autocast:
        raise InputError(
            f"input dtype {x.dtype} does not match the model's {weight_dtype} weights: convert the input "
            f"with x.to({weight_dtype}), or the model with model.to({x.dtype})"
            + ("" if x.dtype == torch.float64 else ", or run it under torch.autocast")
        )
    if x.shape[0] == 1:
        _refuse_batch_of_one(batch_stats)


def stem_dtype(conv1: nn.Module) -> torch.dtype:
    """The dtype of the first conv of a ResNeSt stem (``conv1``, or ``conv1[0]`` for the deep stem)."""
    first = conv1[0] if isinstance(conv1, nn.Sequential) else conv1
    return first.weight.dtype
