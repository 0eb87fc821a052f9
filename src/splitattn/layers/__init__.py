"""Reusable layers: Split-Attention conv, DropBlock, norm choice, fused inference conv, recompute."""

from .drop import DropBlock2d, drop_block_2d
from .fused_conv import FusedConv2d
from .norm import FrozenBatchNorm2d, get_norm_layer, group_norm
from .recompute import checkpoint
from .split_attn import SplitAttn, radix_softmax, radix_weighted_sum

__all__ = [
    "DropBlock2d",
    "FrozenBatchNorm2d",
    "FusedConv2d",
    "SplitAttn",
    "checkpoint",
    "drop_block_2d",
    "get_norm_layer",
    "group_norm",
    "radix_softmax",
    "radix_weighted_sum",
]
