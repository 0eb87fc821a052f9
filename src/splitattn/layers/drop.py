"""DropBlock (Ghiasi et al., NeurIPS 2018) as used by ResNeSt on layers 3 and 4."""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def drop_block_2d(x: torch.Tensor, drop_prob: float, block_size: int = 3) -> torch.Tensor:
    """Zero out contiguous ``block_size x block_size`` regions and rescale.

    Seeds are drawn with rate ``gamma = p / b^2 * (H W) / ((H - b + 1)(W - b + 1))`` over the region
    where a whole block fits, so that the expected fraction of dropped units is ``p`` (Eq. 1 of the
    DropBlock paper); each seed is grown into a ``b x b`` block by max-pooling, and the kept units
    are scaled by ``numel / kept`` so the expected activation is unchanged.

    Args:
        x: ``(B, C, H, W)``; each (sample, channel) gets its own mask.
        drop_prob: ``p`` in ``[0, 1)``.
        block_size: ``b``, clipped to the feature size.

    Returns:
        Tensor of the same shape, dtype and memory format as ``x``.
    """
    b, c, h, w = x.shape
    bs = min(block_size, h, w)
    valid_h, valid_w = h - bs + 1, w - bs + 1
    gamma = drop_prob / (bs * bs) * (h * w) / (valid_h * valid_w)
    # Seeds only where a full block fits: the valid region, padded back to (H, W).
    seeds = torch.rand((b, c, valid_h, valid_w), dtype=x.dtype, device=x.device) < gamma
    pad_t, pad_l = (bs - 1) // 2, (bs - 1) // 2
    seeds = F.pad(seeds.to(x.dtype), (pad_l, bs - 1 - pad_l, pad_t, bs - 1 - pad_t))
    block = F.max_pool2d(seeds, kernel_size=bs, stride=1, padding=bs // 2)
    if bs % 2 == 0:
        block = block[:, :, :h, :w]
    keep = 1.0 - block
    scale = keep.numel() / keep.sum().clamp(min=1.0)
    return x * keep * scale


# A leaf of torch.fx graphs: its sizes come from the input's shape, which a Proxy does not have.
torch.fx.wrap("drop_block_2d")


class DropBlock2d(nn.Module):
    """DropBlock with a drop probability that a trainer may change during training.

    ``drop_prob`` is a plain attribute: :func:`splitattn.models.set_drop_block_prob` ramps it from
    0 to its final value as the paper's recipe does. Identity in eval mode or when ``drop_prob == 0``.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, drop_prob: float = 0.0, block_size: int = 3) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob <= 0.0:
            return x
        return drop_block_2d(x, self.drop_prob, self.block_size)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
