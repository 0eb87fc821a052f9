"""Inference folding: every BatchNorm merged into the convolution before it.

In eval mode a BatchNorm is the per-channel affine map ``y = (x - mean) * gamma / sqrt(var + eps) + beta``,
so after a convolution it can be absorbed into the conv's weight and bias:

    W' = W * s[:, None, None, None],   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

(a grouped conv scales its output channels the same way). :func:`optimize_for_inference` does this for
the deep stem and its trailing ``bn1``, the bottleneck's ``conv1/bn1``, ``conv3/bn3`` (and ``conv2/bn2``
of the radix-0 baseline), the shortcut's ``downsample`` conv and BN, and inside every Split-Attention
conv ``conv/bn0`` and ``fc1/bn1``. The BN modules become ``nn.Identity``, the model goes to channels_last,
and it is eval-only: ``.train()`` raises. ``nn.BatchNorm2d``, ``nn.SyncBatchNorm`` and torchvision's
``FrozenBatchNorm2d`` fold; ``GroupNorm`` normalises with statistics of the current input and cannot fold,
so it is left in place.

:func:`fuse_activations` then turns every folded conv that is followed by a ReLU, and each block's last
conv with the residual add and ReLU after it, into a :class:`~splitattn.layers.FusedConv2d`: on CPU in fp32
these run as single prepacked oneDNN convolutions with post-ops; everywhere else they are the same ATen ops
as before.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .layers.drop import DropBlock2d
from .layers.fused_conv import FusedConv2d
from .layers.split_attn import SplitAttn
from .models.resnest import ResNeStBottleneck

__all__ = [
    "fold_batchnorms", "fuse_activations", "fuse_conv_bn", "is_foldable_norm", "optimize_for_inference",
]


def is_foldable_norm(m: nn.Module) -> bool:
    """True for norms that are a fixed per-channel affine map in eval mode (BatchNorm, FrozenBatchNorm)."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm | FrozenBatchNorm2d)


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` such that ``bn(x) == x * s + t`` per channel in eval mode, computed in float64."""
    mean = bn.running_mean.double()
    var = bn.running_var.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = weight * torch.rsqrt(var + bn.eps)
    return scale, bias - mean * scale


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new ``Conv2d`` (with bias) equal to ``bn(conv(x))`` for the eval-mode ``bn``.

    Args:
        conv: any ``nn.Conv2d`` (grouped, strided, dilated; with or without bias).
        bn: ``BatchNorm2d``/``SyncBatchNorm``/``FrozenBatchNorm2d`` over ``conv.out_channels``.

    Returns:
        The fused conv, on the device and dtype of ``conv.weight``.
    """
    if not is_foldable_norm(bn):
        raise TypeError(f"cannot fold {type(bn).__name__} into a conv (only BatchNorm / FrozenBatchNorm2d)")
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.track_running_stats:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.running_mean.numel() != conv.out_channels:
        raise ValueError(f"BN over {bn.running_mean.numel()} channels after a conv with {conv.out_channels}")
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    w = conv.weight.double() * scale.view(-1, 1, 1, 1)
    b = conv.bias.double() * scale + shift if conv.bias is not None else shift
    fused.weight.copy_(w.to(conv.weight.dtype))
    fused.bias.copy_(b.to(conv.weight.dtype))
    return fused


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> int:
    """Fold ``parent.<bn_name>`` into ``parent.<conv_name>`` when both are of a foldable kind."""
    conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
    if not isinstance(conv, nn.Conv2d) or not is_foldable_norm(bn):
        return 0
    parent._modules[conv_name] = fuse_conv_bn(conv, bn)
    parent._modules[bn_name] = nn.Identity()
    return 1


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold every ``Conv2d`` directly followed by a foldable norm inside a Sequential."""
    names = list(seq._modules)
    return sum(_fold_pair(seq, a, b) for a, b in zip(names, names[1:]))


def fold_batchnorms(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a conv in a ResNeSt (or any Sequential).

    Args:
        model: a :class:`ResNeSt`, a ``features_only`` backbone, or any module containing them;
            must be in eval mode (the running statistics are what gets folded).

    Returns:
        The number of BatchNorms folded: 71 for resnest50 (3 in the stem, 4 in each of the 16 blocks,
        4 in the shortcuts).
    """
    if model.training:
        raise RuntimeError("fold_batchnorms needs an eval-mode model (call model.eval() first)")
    n = 0
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            n += _fold_sequential(m)
        elif isinstance(m, SplitAttn):
            n += _fold_pair(m, "conv", "bn0") + _fold_pair(m, "fc1", "bn1")
        elif isinstance(m, ResNeStBottleneck):
            n += _fold_pair(m, "conv1", "bn1") + _fold_pair(m, "conv2", "bn2") + _fold_pair(m, "conv3", "bn3")
        # The deep stem is a Sequential that ends in a conv; the model's ``bn1`` follows it. This holds
        # for ResNeSt and for the features_only wrapper, which reuses the same ``conv1``/``bn1`` names.
        stem = m._modules.get("conv1") if hasattr(m, "layer1") else None
        if isinstance(stem, nn.Sequential) and isinstance(stem[-1], nn.Conv2d) and is_foldable_norm(
            m._modules.get("bn1")
        ):
            stem[-1] = fuse_conv_bn(stem[-1], m.bn1)
            m._modules["bn1"] = nn.Identity()
            n += 1
        elif isinstance(stem, nn.Conv2d):
            n += _fold_pair(m, "conv1", "bn1")
    return n


# What may sit between a folded conv and its ReLU in an eval-only model: the folded BN's Identity and
# DropBlock (the identity in eval mode).
_PASS_THROUGH = (nn.Identity, DropBlock2d)


def _fuse_into(parent: nn.Module, conv_name: str, between: list[str], act_name: str) -> int:
    """Fuse ``parent.<act_name>`` (a ReLU) into ``parent.<conv_name>`` if only pass-throughs separate them."""
    conv, act = parent._modules.get(conv_name), parent._modules.get(act_name)
    if type(conv) is not nn.Conv2d or not isinstance(act, nn.ReLU) or conv.padding_mode != "zeros":
        return 0
    if not all(isinstance(parent._modules.get(n), _PASS_THROUGH) for n in between):
        return 0
    parent._modules[conv_name] = FusedConv2d.from_conv(conv, activation="relu")
    parent._modules[act_name] = nn.Identity()
    return 1


def _fuse_sequential(seq: nn.Sequential) -> int:
    names, n = list(seq._modules), 0
    for i, name in enumerate(names):
        j = i + 1
        while j < len(names) and isinstance(seq._modules[names[j]], _PASS_THROUGH):
            j += 1
        if j < len(names):
            n += _fuse_into(seq, name, names[i + 1 : j], names[j])
    return n


class _FusedBottleneck(ResNeStBottleneck):
    """Eval-only bottleneck whose ``conv3`` adds the shortcut and applies the ReLU itself."""

    def forward(
        self, x: torch.Tensor, may_reuse: bool = False, input_is_private: bool = False
    ) -> torch.Tensor:
        """``(B, inplanes, H, W) -> (B, 4 * planes, H', W')``.

        Args:
            x: the block input.
            may_reuse: no hook can hold an intermediate tensor of this block, so the shortcut's buffer may
                take the output when the shortcut is a fresh tensor (a downsample's output) ...
            input_is_private: ... or when it is ``x`` itself and nothing else holds ``x``.
        """
        shortcut = self.downsample(x)
        out = self.conv3_input(x)
        return self.conv3(out, shortcut, may_reuse and (input_is_private or self.fresh_shortcut))


class _FusedStage(nn.Sequential):
    """A stage of :class:`_FusedBottleneck`: when no hook is registered in it, a block may write its
    output over its shortcut: a downsample's output, or the block input that only the previous block
    produced."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        no_hooks = False
        if not torch.jit.is_scripting():
            no_hooks = self._no_hooks()
        for i, block in enumerate(self):
            x = block(x, no_hooks, i > 0)
        return x

    @torch.jit.unused
    def _no_hooks(self) -> bool:
        from torch.nn.modules import module as _m

        if _m._global_forward_hooks or _m._global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())


def fuse_activations(model: nn.Module) -> int:
    """Fuse, in place, each ReLU (and residual add) that follows a BN-folded conv into that conv.

    Turns the convs into :class:`~splitattn.layers.FusedConv2d` (same parameters and state dict), the
    ReLUs into ``nn.Identity``, and bottlenecks whose last BN is folded into blocks whose ``conv3`` computes
    ``relu(conv3(out) + shortcut)``. Convs still followed by a norm (GroupNorm) are left alone.

    Args:
        model: an eval-only model after :func:`fold_batchnorms`.

    Returns:
        The number of convs fused: 67 for resnest50 (3 stem convs, then in each of the 16 blocks conv1, the
        Split-Attention conv and its fc1, and conv3 with the residual).
    """
    n = 0
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            n += _fuse_sequential(m)
        elif isinstance(m, SplitAttn):
            n += _fuse_into(m, "conv", ["bn0", "drop"], "act0") + _fuse_into(m, "fc1", ["bn1"], "act1")
        elif isinstance(m, ResNeStBottleneck):
            n += _fuse_into(m, "conv1", ["bn1", "drop_block1"], "act1")
            n += _fuse_into(m, "conv2", ["bn2", "drop_block2"], "act2")
            # The ReLU after the residual add fuses like any other; conv3 then takes the shortcut too.
            if _fuse_into(m, "conv3", ["bn3", "drop_block3"], "act3"):
                m.fresh_shortcut = not isinstance(m.downsample, nn.Identity)
                m.__class__ = _FusedBottleneck
                n += 1
        stem = m._modules.get("conv1") if hasattr(m, "layer1") else None
        if isinstance(stem, nn.Conv2d):
            n += _fuse_into(m, "conv1", ["bn1"], "act1")
        elif isinstance(stem, nn.Sequential) and isinstance(m._modules.get("bn1"), nn.Identity):
            # The deep stem's last conv sits in the Sequential, its (folded) BN and ReLU in the model.
            last = stem[-1]
            if type(last) is nn.Conv2d and isinstance(m._modules.get("act1"), nn.ReLU):
                stem[-1] = FusedConv2d.from_conv(last, activation="relu")
                m.act1 = nn.Identity()
                n += 1
    for m in list(model.modules()):
        if type(m) is nn.Sequential and len(m) and all(isinstance(b, _FusedBottleneck) for b in m):
            m.__class__ = _FusedStage
    return n


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError(
            "this model was built by splitattn.optimize_for_inference: its BatchNorms are folded into the "
            "convs, so it is eval-only; train the original model instead"
        )
    return nn.Module.train(self, False)


_EVAL_ONLY_CLASSES: dict[type, type] = {}


def _make_eval_only(model: nn.Module) -> None:
    cls = type(model)
    if cls not in _EVAL_ONLY_CLASSES:
        _EVAL_ONLY_CLASSES[cls] = type(
            f"Inference{cls.__name__}", (cls,),
            {"train": _eval_only_train, "__module__": cls.__module__, "__doc__": cls.__doc__},
        )
    model.__class__ = _EVAL_ONLY_CLASSES[cls]
    model.eval_only = True


def optimize_for_inference(
    model: nn.Module, channels_last: bool = True, inplace: bool = False, fuse: bool = True
) -> nn.Module:
    """An eval-only copy of ``model`` with every BatchNorm folded into its conv, in channels_last.

    Outputs equal the eval-mode original within float rounding (max abs difference ~1e-5 on logits
    in fp32). The result is a module of the same class family with the same submodule names: the BNs and
    fused ReLUs are ``nn.Identity``, the fused convs :class:`~splitattn.layers.FusedConv2d` (an ``nn.Conv2d``
    with the same parameters), so ``torch.compile``, ``torch.jit.script``, autocast (AMP) and ONNX export
    work on it as on the original; ``.train()`` raises.
    A fused block may write its output into its shortcut's buffer (a downsample's output, or the block
    input inside a stage); it does so only while no forward hook is registered in that stage.

    Args:
        model: a :class:`ResNeSt` (any zoo variant, incl. radix 1 and cardinality > 1), a
            ``features_only`` backbone, or a module containing them. GroupNorm layers stay as they are.
        channels_last: convert parameters to channels_last (the fast layout for cuDNN and oneDNN);
            feed inputs with ``x.contiguous(memory_format=torch.channels_last)`` for best speed.
        inplace: fold into ``model`` itself instead of a deep copy.
        fuse: also fuse the ReLUs and residual adds into the convs (:func:`fuse_activations`). On CPU in
            fp32 the fused convs run as prepacked oneDNN primitives: their reordered weights (one copy of the
            conv weights per input shape, at most 4 shapes) are cached on first use.

    Returns:
        The folded model in eval mode, on the device and dtype of ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference expects an nn.Module, got {type(model).__name__}")
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    fold_batchnorms(out)
    if fuse:
        fuse_activations(out)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(False)
    if not getattr(out, "eval_only", False):
        _make_eval_only(out)
    return out
