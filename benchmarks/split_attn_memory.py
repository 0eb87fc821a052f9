"""What autograd saves for one Split-Attention conv (layer1 of ResNeSt-50: 64 -> 2x64 channels, 56x56),
splitattn vs timm, and the transient peak of its forward. Run: python benchmarks/split_attn_memory.py"""

from __future__ import annotations

import torch
from timm.layers import SplitAttn as TimmSplitAttn

from harness import saved_activation_mb
from splitattn.layers import SplitAttn


def main(batch: int = 8, channels: int = 64, size: int = 56) -> None:
    torch.manual_seed(0)
    ours = SplitAttn(channels, channels, radix=2).train()
    theirs = TimmSplitAttn(channels, channels, radix=2, rd_ratio=0.25, rd_divisor=1,
                           norm_layer=torch.nn.BatchNorm2d).train()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    fmap = batch * channels * size * size * 4 / 2**20
    print(f"input map (B, C, H, W) = {fmap:.1f} MiB; radix-expanded map = {2 * fmap:.1f} MiB")
    for name, m in (("splitattn", ours), ("timm", theirs)):
        for fmt in (torch.contiguous_format, torch.channels_last):
            xi = x.detach().contiguous(memory_format=fmt).requires_grad_()
            mi = m.to(memory_format=fmt)
            saved = saved_activation_mb(lambda mi=mi, xi=xi: mi(xi))
            print(f"{name:10s} {'NCHW' if fmt == torch.contiguous_format else 'NHWC'}: "
                  f"saved for backward {saved:6.1f} MiB = {saved / fmap:.2f} input maps")


if __name__ == "__main__":
    main()
