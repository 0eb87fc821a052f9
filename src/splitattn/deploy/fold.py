"""Inference folding: every BatchNorm merged into the convolution before it.

In eval mode a BatchNorm is the per-channel affine map ``y = (x - mean) * gamma / sqrt(var + eps) + beta``,
so after a convolution it can be absorbed into the conv's weight and bias:

    W' = W * s[:, None, None, None],   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)

(a grouped conv scales its output channels the same way). :func:`optimize_for_inference` does this for
the deep stem and its trailing ``bn1``, the bottleneck's ``conv1/bn1``, ``conv3/bn3`` (and ``conv2/bn2``
of the radix-0 baseline), the shortcut's ``downsample`` conv and BN, and inside every Split-Attention
conv ``conv/bn0`` and ``fc1/bn1``. Each folded BN becomes a :class:`FoldedBatchNorm` placeholder, the model
goes to channels_last, and it is eval-only: ``.train()`` raises. ``nn.BatchNorm2d``, ``nn.SyncBatchNorm``
and torchvision's ``FrozenBatchNorm2d`` fold; ``GroupNorm`` normalises with statistics of the current input
and cannot fold, so it is left in place.

:func:`fuse_activations` then turns every folded conv that is followed by a ReLU, and each block's last
conv with the residual add and ReLU after it, into a :class:`~splitattn.layers.FusedConv2d`: on CPU in fp32
these run as single prepacked oneDNN convolutions with post-ops; everywhere else they are the same ATen ops
as before. Those blocks become :class:`FusedBottleneck` and their stages :class:`FusedStage`.

Every class in the result is an ordinary module-level class, so the result deep-copies, pickles
(``torch.save``) and loads a state dict like any model, with the original's state dict keys.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Self

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import EvalOnlyError, InputError
from ..layers.drop import DropBlock2d
from ..layers.fused_conv import FusedConv2d
from ..layers.split_attn import SplitAttn
from ..models.resnest import ResNeStBottleneck
from .cpu_features import emulated_on_cpu

log = logging.getLogger("splitattn")

__all__ = [
    "EVAL_ONLY_MESSAGE", "EvalOnlyError", "FoldedBatchNorm", "FusedBottleneck", "FusedStage",
    "fold_batchnorms", "fuse_activations", "fuse_conv_bn", "is_foldable_norm", "optimize_for_inference",
]

EVAL_ONLY_MESSAGE = (
    "this model was built by splitattn.optimize_for_inference: its BatchNorms are folded into the convs, "
    "so it is eval-only; train the original model instead"
)


class _EvalOnly:
    """Mixin of the modules that folding leaves: ``train(True)`` raises :class:`EvalOnlyError`.

    ``nn.Module.train`` recurses into the children, so ``.train()`` on any model (or part of one) that
    contains such a module raises; the modules visited before it are then in training mode until ``.eval()``.
    """

    def train(self, mode: bool = True) -> Self:
        if mode:
            raise EvalOnlyError(EVAL_ONLY_MESSAGE)
        return super().train(mode)


class FoldedBatchNorm(_EvalOnly, nn.Identity):
    """The identity left where a BatchNorm was folded into the conv before it; marks the model eval-only."""


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
        raise InputError(f"cannot fold {type(bn).__name__} into a conv (only BatchNorm / FrozenBatchNorm2d)")
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.track_running_stats:
        raise InputError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.running_mean.numel() != conv.out_channels:
        raise InputError(f"BN over {bn.running_mean.numel()} channels after a conv with {conv.out_channels}")
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


def _fold(conv_parent: nn.Module, conv_name: str, bn_parent: nn.Module, bn_name: str) -> int:
    """Fold ``bn_parent.<bn_name>`` into ``conv_parent.<conv_name>`` when both are of a foldable kind."""
    conv, bn = conv_parent._modules.get(conv_name), bn_parent._modules.get(bn_name)
    if not isinstance(conv, nn.Conv2d) or not is_foldable_norm(bn):
        return 0
    conv_parent._modules[conv_name] = fuse_conv_bn(conv, bn)
    bn_parent._modules[bn_name] = FoldedBatchNorm()
    return 1


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold every ``Conv2d`` directly followed by a foldable norm inside a Sequential."""
    names = list(seq._modules)
    return sum(_fold(seq, a, seq, b) for a, b in zip(names, names[1:]))


def _stem_conv(m: nn.Module) -> tuple[nn.Module, str] | None:
    """``(parent, name)`` of the conv right before ``m.bn1`` when ``m`` is a ResNeSt or a backbone of one:
    ``m.conv1`` itself, or the last conv of the deep stem (the features_only wrapper reuses these names)."""
    stem = m._modules.get("conv1") if hasattr(m, "layer1") else None
    if isinstance(stem, nn.Sequential) and len(stem):
        return stem, list(stem._modules)[-1]
    return (m, "conv1") if isinstance(stem, nn.Conv2d) else None


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
        raise InputError("fold_batchnorms needs an eval-mode model (call model.eval() first)")
    n = 0
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            n += _fold_sequential(m)
        elif isinstance(m, SplitAttn):
            n += _fold(m, "conv", m, "bn0") + _fold(m, "fc1", m, "bn1")
        elif isinstance(m, ResNeStBottleneck):
            n += sum(_fold(m, f"conv{i}", m, f"bn{i}") for i in (1, 2, 3))
        stem = _stem_conv(m)
        if stem is not None:
            n += _fold(*stem, m, "bn1")
    return n


# What may sit between a folded conv and its ReLU in an eval-only model: the folded BN's placeholder, an
# Identity and DropBlock (the identity in eval mode).
_PASS_THROUGH = (nn.Identity, DropBlock2d)


def _fuse(
    conv_parent: nn.Module, conv_name: str, parent: nn.Module, between: list[str], act_name: str
) -> int:
    """Fuse ``parent.<act_name>`` (a ReLU) into ``conv_parent.<conv_name>`` if only pass-throughs
    (``parent.<between>``) separate them."""
    conv, act = conv_parent._modules.get(conv_name), parent._modules.get(act_name)
    if not _convertible(conv) or not isinstance(act, nn.ReLU):
        return 0
    if not all(isinstance(parent._modules.get(n), _PASS_THROUGH) for n in between):
        return 0
    conv_parent._modules[conv_name] = FusedConv2d.from_conv(conv, activation="relu")
    parent._modules[act_name] = nn.Identity()
    return 1


def _as_fused(parent: nn.Module, name: str) -> None:
    """Make ``parent.<name>``, if :func:`_convertible`, a ``FusedConv2d`` without an activation (same
    parameters and outputs; its fast paths, such as a GEMM on a 1x1 map, apply)."""
    conv = parent._modules.get(name)
    if _convertible(conv):
        parent._modules[name] = FusedConv2d.from_conv(conv, activation="none")


def _convertible(conv: nn.Module | None) -> bool:
    """A plain ``nn.Conv2d`` with numeric zero padding: what ``FusedConv2d.from_conv`` takes."""
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _fuse_sequential(seq: nn.Sequential) -> int:
    names, n = list(seq._modules), 0
    for i, name in enumerate(names):
        j = i + 1
        while j < len(names) and isinstance(seq._modules[names[j]], _PASS_THROUGH):
            j += 1
        if j < len(names):
            n += _fuse(seq, name, seq, names[i + 1 : j], names[j])
    return n


class FusedBottleneck(_EvalOnly, ResNeStBottleneck):
    """Eval-only bottleneck whose ``conv3`` (a :class:`FusedConv2d`) adds the shortcut and applies the ReLU.

    Built by :func:`fuse_activations` from a folded :class:`ResNeStBottleneck`, whose submodules it takes
    over under the same names (same state dict keys). ``bn3``, ``drop_block3`` and ``act3`` stay as
    pass-throughs that ``forward`` no longer calls.

    Shape:
        ``(B, inplanes, H, W) -> (B, 4 * planes, H', W')``.
    """

    def __init__(self, block: ResNeStBottleneck) -> None:
        if type(block.conv3) is not FusedConv2d:
            raise InputError(
                "FusedBottleneck needs a block whose conv3 is a FusedConv2d (built by fuse_activations)"
            )
        # Not ResNeStBottleneck.__init__: the block's (folded) submodules are taken over, not rebuilt.
        nn.Module.__init__(self)
        for name, child in block._modules.items():
            self.add_module(name, child)
        self.radix = block.radix
        self.grad_checkpointing = False
        # A downsample's output is a fresh tensor that only this block holds.
        self.fresh_shortcut = not isinstance(self.downsample, nn.Identity)
        self.eval()

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


class FusedStage(_EvalOnly, nn.Sequential):
    """A stage of :class:`FusedBottleneck`: when no hook is registered in it, a block may write its
    output over its shortcut: a downsample's output, or the block input that only the previous block
    produced.

    Args:
        blocks: the stage's blocks by name (``"0"``, ``"1"``...: the names of the stage it replaces).
    """

    def __init__(self, blocks: Mapping[str, FusedBottleneck]) -> None:
        if not blocks or not all(isinstance(b, FusedBottleneck) for b in blocks.values()):
            raise InputError("FusedStage needs one or more FusedBottleneck blocks")
        super().__init__(OrderedDict(blocks))
        self.eval()

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


def _fused_block(m: nn.Module) -> FusedBottleneck | None:
    """``m`` as a :class:`FusedBottleneck` if it is a bottleneck whose residual add and ReLU fuse into
    its conv3."""
    if not isinstance(m, ResNeStBottleneck) or isinstance(m, FusedBottleneck):
        return None
    # The ReLU after the residual add fuses like any other; conv3 then takes the shortcut too.
    return FusedBottleneck(m) if _fuse(m, "conv3", m, ["bn3", "drop_block3"], "act3") else None


def _fused_stage(m: nn.Module) -> FusedStage | None:
    if type(m) is nn.Sequential and len(m) and all(isinstance(b, FusedBottleneck) for b in m):
        return FusedStage(m._modules)
    return None


def _replace_children(model: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every submodule ``m`` of ``model`` (not ``model`` itself) for which ``convert(m)`` is not
    None by that module; a module held by several parents is converted once. Returns the count."""
    done: dict[int, nn.Module | None] = {}
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in done:
                done[id(child)] = convert(child)
            if done[id(child)] is not None:
                parent._modules[name] = done[id(child)]
    return sum(new is not None for new in done.values())


def fuse_activations(model: nn.Module) -> int:
    """Fuse, in place, each ReLU (and residual add) that follows a BN-folded conv into that conv.

    Turns the convs into :class:`~splitattn.layers.FusedConv2d` (same parameters and state dict), the
    ReLUs into ``nn.Identity``, and bottlenecks whose last BN is folded into :class:`FusedBottleneck`
    whose ``conv3`` computes ``relu(conv3(out) + shortcut)`` (a stage of those into a :class:`FusedStage`).
    Convs still followed by a norm (GroupNorm) are left alone, and so is ``model`` itself when it is a
    bottleneck (only its parent could swap it). The rest of each Split-Attention MLP (``fc2``, and ``fc1``
    before a GroupNorm) becomes an activation-free ``FusedConv2d``, which runs on the pooled vector as a
    GEMM.

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
            n += _fuse(m, "conv", m, ["bn0", "drop"], "act0") + _fuse(m, "fc1", m, ["bn1"], "act1")
            for fc in ("fc1", "fc2"):  # what is left of the MLP: a FusedConv2d runs it as a GEMM
                _as_fused(m, fc)
        elif isinstance(m, ResNeStBottleneck):
            n += _fuse(m, "conv1", m, ["bn1", "drop_block1"], "act1")
            n += _fuse(m, "conv2", m, ["bn2", "drop_block2"], "act2")
        stem = _stem_conv(m)
        if stem is not None:
            # The deep stem's last conv sits in the Sequential, its (folded) BN and ReLU in the model.
            n += _fuse(*stem, m, ["bn1"], "act1")
    n += _replace_children(model, _fused_block)
    _replace_children(model, _fused_stage)
    return n


def optimize_for_inference(
    model: nn.Module, channels_last: bool = True, inplace: bool = False, fuse: bool = True,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """An eval-only copy of ``model`` with every BatchNorm folded into its conv, in channels_last.

    Outputs equal the eval-mode original within float rounding (max abs difference ~1e-5 on logits
    in fp32). The result is a module of the same class with the same submodule names and state dict keys:
    the BNs are :class:`FoldedBatchNorm`, the fused ReLUs ``nn.Identity``, the fused convs
    :class:`~splitattn.layers.FusedConv2d` (an ``nn.Conv2d`` with the same parameters), the fused blocks
    and stages :class:`FusedBottleneck` and :class:`FusedStage`. ``torch.compile``, ``torch.jit.script``,
    autocast (AMP), ONNX export, ``copy.deepcopy`` and ``torch.save`` work on it as on the original.
    ``.train()`` raises :class:`EvalOnlyError` (a model with no BatchNorm, GroupNorm everywhere, has
    nothing folded: it is only converted to channels_last with ``requires_grad`` off, and may still train).
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
            conv weights per input shape, at most 4 shapes) are cached on first use; the cache is not part
            of the state dict and is dropped by ``copy.deepcopy`` and pickling.
        dtype: convert the folded model's parameters to this floating dtype, e.g. ``torch.bfloat16``
            (the BatchNorms are folded in float64 first, then rounded once). Feed it inputs of that
            dtype (``x.to(torch.bfloat16)``); it returns logits of that dtype. On CPUs with AVX512-BF16
            or AMX, bf16 convolutions run on oneDNN's bf16 kernels (fp32 accumulation); where oneDNN
            refuses the dtype (AVX2 only: :func:`~splitattn.deploy.cpu_features.emulated_on_cpu`), ATen
            emulates them, several times slower than fp32, and a warning says so. ``None`` keeps the
            dtype of ``model``.

    Returns:
        The folded model in eval mode, on the device of ``model``, in ``dtype`` (default: the dtype of
        ``model``).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"optimize_for_inference expects an nn.Module, got {type(model).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    fold_batchnorms(out)
    if fuse:
        fuse_activations(out)
    if dtype is not None:
        out = out.to(dtype)
        if any(p.device.type == "cpu" for p in out.parameters()) and emulated_on_cpu(dtype):
            log.warning("this CPU has no %s convolutions of its own (oneDNN refuses them: its check needs "
                        "AVX-512 or AVX-NE-CONVERT): ATen emulates them, several times slower than "
                        "optimize_for_inference in fp32 (benchmarks/RESULTS.md); use fp32, or INT8 with "
                        "splitattn.quantize", str(dtype).removeprefix("torch."))
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(False)
    return out
