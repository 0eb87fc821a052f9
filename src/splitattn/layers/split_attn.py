"""Split-Attention convolution (ResNeSt, Zhang et al. 2020, Sec. 3).

For an input of ``C_in`` channels, radix ``R`` and cardinality ``K`` the module computes

    U   = ReLU(BN0(GroupConv3x3(x)))                      # (B, R*C, H, W), radix-major
    s^k = 1/(H W) * sum_{i,j} sum_r U_r^k(i, j)           # (B, C): pooled once, summed over r
    a^k_r(c) = softmax_r(G^c_r(s^k))   if R > 1           # r-softmax inside each cardinal group
             = sigmoid(G^c(s^k))       if R == 1          # SE-like gate
    V^k(c)  = sum_r a^k_r(c) * U_r^k(c)                   # (B, C, H, W)

where ``G = fc2(ReLU(BN1(fc1(.))))`` are two 1x1 convs grouped by ``K``. "Radix-major" means that
channel block ``r`` of ``U`` holds split ``r`` of every cardinal group, so the 3x3 conv is one grouped
conv with ``K*R`` groups and the attention weights are laid out the same way.

Parameter names (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``) are those of the official
``resnest.torch`` and timm checkpoints.
"""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InputError
from .recompute import checkpoint


def check_int(name: str, value: Any, minimum: int, hint: str = "") -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``, else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return int(value)


def check_rate(name: str, value: Any) -> float:
    """``value`` if it is a probability in [0, 1), else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise InputError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


@torch.jit.unused
def is_tracing() -> bool:
    """Whether ``torch.fx`` symbolic tracing or ``torch.jit.trace`` is recording the current call.

    There tensors are Proxies without values, or values the trace would freeze into constants, so input
    checks are skipped. ``torch.compile`` and ``torch.export`` are not counted: they see real or fake
    tensors with (symbolic) shapes, and the checks run there.
    """
    if torch.compiler.is_compiling():
        return False
    return torch.jit.is_tracing() or torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def uses_batch_stats(module: nn.Module) -> bool:
    """Whether a BatchNorm in ``module`` (``module`` included) normalises with batch statistics in its next
    forward, as ``_BatchNorm.forward`` decides: in training mode, or in any mode without running statistics.

    FrozenBatchNorm2d (torchvision's, timm's) and eval-mode BatchNorm use stored statistics: ``False``.
    """
    return any(
        isinstance(m, _BatchNorm) and (m.training or (m.running_mean is None and m.running_var is None))
        for m in module.modules()
    )


def batch_stats_attention_norm(module: nn.Module) -> str | None:
    """The name of the first Split-Attention ``bn1`` in ``module`` that would normalise its
    ``(B, inter, 1, 1)`` attention vector with batch statistics (see :func:`uses_batch_stats`), or ``None``.

    That is the one norm a batch of 1 cannot pass: it has a single value per channel to normalise.
    """
    for name, m in module.named_modules():
        if isinstance(m, SplitAttn) and uses_batch_stats(m.bn1):
            return f"{name}.bn1" if name else "bn1"
    return None


def radix_softmax(logits: torch.Tensor, radix: int, cardinality: int) -> torch.Tensor:
    """r-softmax of the attention logits, returned in radix-major order.

    Args:
        logits: ``(B, R*C)`` output of ``fc2``; fc2 is grouped by cardinality, so its channels are
            cardinal-major ``(K, R, C/K)``.
        radix: ``R``. With ``R == 1`` the gate is a sigmoid.
        cardinality: ``K``.

    Returns:
        ``(B, R*C)`` attention weights, radix-major ``(R, K, C/K)``, summing to 1 over ``R``.
    """
    batch = logits.shape[0]
    if radix > 1:
        x = logits.view(batch, cardinality, radix, -1).transpose(1, 2)
        # (The dtype test after the compile test: torch.fx symbolic tracing cannot branch on a dtype.)
        if _compiled_inference() and (logits.dtype == torch.bfloat16 or logits.dtype == torch.float16):
            # exp(x - logsumexp(x)): inductor stores these weights once, radix-major, and the weighted sum
            # reads them as vectors. From a bf16 / fp16 softmax (computed in fp32) it keeps exp(x - max) with
            # the radix innermost and divides at every pixel in a scalar loop. From fp32 logits (the INT8
            # programs) its softmax kernels are vectorised already. fp32 inside, as softmax.
            xf = x.float()
            return torch.exp(xf - torch.logsumexp(xf, 1, keepdim=True)).to(logits.dtype).reshape(batch, -1)
        return F.softmax(x, dim=1).reshape(batch, -1)
    return torch.sigmoid(logits)


def _compiled_inference() -> bool:
    """Under ``torch.compile`` / ``torch.export`` without autograd: where :class:`SplitAttn` uses the
    forms that inductor lowers best. Not under autograd: compiled with attention recompute
    (``set_grad_checkpointing("attn")``), the row-wise pooling gave wrong gradients."""
    return torch.compiler.is_compiling() and not torch.is_grad_enabled()


class SplitAttn(nn.Module):
    """Split-Attention 3x3 convolution: the ``conv2`` of a ResNeSt bottleneck.

    Args:
        in_channels: input channels (the bottleneck's group width ``gw``).
        out_channels: output channels (``gw`` in ResNeSt).
        kernel_size, stride, padding, dilation: of the grouped conv.
        groups: cardinality ``K``.
        radix: ``R >= 1``.
        reduction: channel reduction of ``fc1``: ``inter = max(in_channels * R // reduction, min_inter)``.
        min_inter: the smallest attention width (32 in ResNeSt).
        norm_layer: callable ``(num_channels) -> nn.Module``.
        attn_norm_layer: norm of the pooled ``(B, inter, 1, 1)`` vector (``bn1``); defaults to
            ``norm_layer``. GroupNorm needs one group here (a LayerNorm over the vector): with one value
            per channel, a group of 1-2 channels has nothing to normalise over.
        drop_block: optional DropBlock applied after ``bn0`` (ResNeSt places it there).

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H', W')``.

    Raises:
        InputError: naming the argument, for a size, stride or radix below 1, or a width that the
            ``K * R`` groups of the conv (``K`` groups of ``fc1`` / ``fc2``) do not divide.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction: int = 4,
        min_inter: int = 32,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        attn_norm_layer: Callable[[int], nn.Module] | None = None,
        drop_block: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation),
                            ("groups", groups), ("reduction", reduction), ("min_inter", min_inter)):
            check_int(f"SplitAttn {name}", value, 1)
        check_int("SplitAttn padding", padding, 0)
        check_int("SplitAttn radix", radix, 1, " (radix 0 is a plain grouped conv, not a SplitAttn)")
        inter = max(in_channels * radix // reduction, min_inter)
        # The grouped conv has groups * radix groups, fc1 and fc2 have `groups`: every width must divide.
        for what, channels, g in (("in_channels", in_channels, groups * radix),
                                  ("out_channels", out_channels, groups),
                                  ("attention width max(in_channels * radix // reduction, min_inter)", inter,
                                   groups)):
            if channels % g:
                raise InputError(
                    f"SplitAttn {what} = {channels} is not divisible by {g} (cardinality {groups}"
                    f"{f' x radix {radix}' if g != groups else ''}); choose a cardinality / radix / width "
                    "that divides it"
                )
        self.radix = radix
        self.cardinality = groups
        self.out_channels = out_channels
        self.conv = nn.Conv2d(
            in_channels, out_channels * radix, kernel_size, stride, padding, dilation,
            groups=groups * radix, bias=False,
        )
        self.bn0 = norm_layer(out_channels * radix)
        self.drop = drop_block if drop_block is not None else nn.Identity()
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, inter, 1, groups=groups)
        self.bn1 = (attn_norm_layer or norm_layer)(inter)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(inter, out_channels * radix, 1, groups=groups)
        # Set by ResNeSt.set_grad_checkpointing("attn"): keep only the conv output for backward and
        # recompute BN0 -> ReLU -> attention -> weighted sum there.
        self.recompute = False

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights for the radix-expanded map.

        Args:
            x: ``(B, R*C, H, W)`` activated output of the grouped conv.

        Returns:
            ``(B, R*C)`` radix-major weights (softmax over R, or sigmoid at R=1).
        """
        b, _, h, w = x.shape
        # Pool the expanded map once and sum the R pooled vectors: the mean is linear, so this equals
        # pooling the sum of the splits without materialising that (B, C, H, W) sum. Sum, then divide the
        # small vector: the backward of a sum is a broadcast view, that of a mean a materialised map.
        if _compiled_inference():
            # The INT8 and bf16 programs: inductor vectorises a sum over (H, W) of a channels_last map along
            # C and walks the whole map once per vector of channels; row by row it reads each row once.
            gap = x.sum(3).sum(2, keepdim=True).unsqueeze(3)
        else:
            gap = x.sum((2, 3), keepdim=True)
        if self.radix > 1:
            gap = gap.view(b, self.radix, self.out_channels, 1, 1).sum(1)
        gap = self.act1(self.bn1(self.fc1(gap / (h * w))))
        return radix_softmax(self.fc2(gap).flatten(1), self.radix, self.cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H', W')``; a channels_last input gives a channels_last output."""
        x = self.conv(x)
        if self.recompute and self.training and not torch.jit.is_scripting():
            return self._checkpointed_tail(x)
        return self.tail(x)

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the grouped conv: ``(B, R*C, H, W)`` conv output -> ``(B, C, H, W)``."""
        x = self.act0(self.drop(self.bn0(x)))
        return radix_weighted_sum(x, self.attention(x), self.radix)

    @torch.jit.unused
    def forward_pooled(self, x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
        """``pool(self(x))`` for inference, with the splits pooled before the attention-weighted sum.

        The weights are constant over space and the pool is linear, so ``pool(sum_r a_r U_r) =
        sum_r a_r pool(U_r)`` (equal up to fp32 rounding): the weighted sum runs at the pooled resolution,
        and a compiled program fuses the pool, the weighted sum and (INT8) the next quantize into one pass
        over ``U`` with no full-resolution float map in between. A ResNeSt block with the avd pool after
        its SplitAttn (``avd_last``) calls this in eval mode.

        Args:
            x: ``(B, C_in, H, W)``.
            pool: an average pool (``(B, R*C, H, W) -> (B, R*C, H', W')``).

        Returns:
            ``(B, C_out, H', W')``.
        """
        u = self.act0(self.drop(self.bn0(self.conv(x))))
        return radix_weighted_sum(pool(u), self.attention(u), self.radix)

    @torch.jit.unused
    def _checkpointed_tail(self, x: torch.Tensor) -> torch.Tensor:
        # A traced graph records one plain forward; checkpointing needs a real autograd graph.
        if is_tracing() or not x.requires_grad:
            return self.tail(x)
        return checkpoint(self.tail, x, modules=(self,))


def radix_weighted_sum(x: torch.Tensor, attn: torch.Tensor, radix: int) -> torch.Tensor:
    """``sum_r attn_r * x_r`` over the radix-major splits of ``x``.

    With gradients it runs as :class:`_RadixWeightedSum` (a backward that writes ``grad_x`` once, in
    ``x``'s memory format), which supports double backward and ``torch.func`` transforms; under
    ``torch.jit.trace`` and TorchScript it is the same computation in plain ops, which those can save.
    ``torch.fx`` keeps it as one leaf call, so a traced module runs this same code.

    Args:
        x: ``(B, R*C, H, W)`` radix-expanded map, NCHW or channels_last.
        attn: ``(B, R*C)`` radix-major weights.
        radix: ``R``.

    Returns:
        ``(B, C, H, W)`` in the memory format of ``x`` (no copy back to NCHW).
    """
    if torch.jit.is_scripting():
        return _radix_weighted_sum(x, attn, radix)
    return _eager_weighted_sum(x, attn, radix)


# A leaf of torch.fx graphs: the call is recorded as is, not traced into (its branches read requires_grad).
torch.fx.wrap("radix_weighted_sum")


@torch.jit.unused
def _eager_weighted_sum(x: torch.Tensor, attn: torch.Tensor, radix: int) -> torch.Tensor:
    # torch.jit.trace would record the Function as a Python op that a saved module cannot hold.
    if (
        radix > 1
        and not torch.jit.is_tracing()
        and torch.is_grad_enabled()
        and (x.requires_grad or attn.requires_grad)
    ):
        return _RadixWeightedSum.apply(x, attn, radix)
    return _radix_weighted_sum(x, attn, radix)


def _is_channels_last(x: torch.Tensor) -> bool:
    # x.is_contiguous(memory_format=torch.channels_last), in a form that vmap's batched tensors answer.
    return x.permute(0, 2, 3, 1).is_contiguous()


def _radix_weighted_sum(x: torch.Tensor, attn: torch.Tensor, radix: int) -> torch.Tensor:
    b, rc, h, w = x.shape
    if radix == 1:
        return x * attn.view(b, rc, 1, 1)
    c = rc // radix
    # Views only: splitting the channel dim keeps a channels_last tensor channels_last.
    xs = x.view(b, radix, c, h, w)
    a = attn.view(b, radix, c, 1, 1)
    if radix == 2:
        # x0 * a0 + x1 * a1 as mul + fused multiply-add: 5 C-sized passes instead of the 7 of
        # (x * a).sum(1), which writes and re-reads the R-times-larger product. The add goes into the
        # product's fresh buffer (nothing saves it): one allocation less, 16% faster at layer1 on CPU.
        # unbind, not indexing: under autograd (jit.trace) its backward stacks the two gradients once
        # instead of zero-filling a full-size gradient per split.
        x01 = xs.unbind(1)
        a01 = a.unbind(1)
        return (x01[0] * a01[0]).addcmul_(x01[1], a01[1])
    if _is_channels_last(x):
        # Reduce over R in the NHWC view, where (R, C) are the innermost dims, so the result is
        # channels_last without a copy.
        nhwc = x.permute(0, 2, 3, 1).view(b, h, w, radix, c)
        return (nhwc * attn.view(b, 1, 1, radix, c)).sum(3).permute(0, 3, 1, 2)
    return (xs * a).sum(1)


def _weighted_sum_backward(grad: torch.Tensor, x: torch.Tensor, attn: torch.Tensor, radix: int,
                           needs_x: bool, needs_attn: bool,
                           ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x, grad_attn)`` of :func:`radix_weighted_sum` for the output gradient ``grad`` (B, C, H, W).

    Differentiable ops only (double backward differentiates through them) and no memory-format query
    that vmap's batched tensors refuse (``jacrev`` and ``vmap(grad(...))`` run this batched).
    """
    b, rc, h, w = x.shape
    c = rc // radix
    nhwc = _is_channels_last(x)
    if nhwc:
        # NHWC views: (B, H, W, R, C) for x and its gradient, (B, H, W, 1, C) for the output's.
        g = grad.permute(0, 2, 3, 1).contiguous().unsqueeze(3)
        xv = x.permute(0, 2, 3, 1).reshape(b, h, w, radix, c)
        av = attn.view(b, 1, 1, radix, c)
        hw_dims = (1, 2)
    else:
        g = grad.contiguous().unsqueeze(1)  # (B, 1, C, H, W)
        xv = x.reshape(b, radix, c, h, w)
        av = attn.view(b, radix, c, 1, 1)
        hw_dims = (3, 4)
    grad_x = grad_attn = None
    if needs_x:
        gx = g * av  # written once, contiguous in x's layout
        grad_x = gx.permute(0, 3, 4, 1, 2).reshape(b, rc, h, w) if nhwc else gx.reshape(b, rc, h, w)
    if needs_attn:
        grad_attn = (xv * g).sum(hw_dims).reshape(b, rc)
    return grad_x, grad_attn


class _RadixWeightedSum(torch.autograd.Function):
    """The weighted sum with a hand-written backward.

    Autograd's own backward of ``x0 * a0 + x1 * a1`` on views of ``x`` zero-fills a full ``(B, R*C, H, W)``
    gradient per split, copies into it and adds them up; this backward writes ``grad_x`` once
    (``grad_x_r = g * a_r``, in ``x``'s memory format) and reduces ``grad_a_r = sum_hw g * x_r`` directly.
    It saves the same two tensors as autograd would (``x``, which the preceding ReLU saves anyway, and ``a``).
    The backward is itself made of differentiable ops (gradient penalties, ``torch.func.jacrev``/
    ``hessian``), and the ``setup_context`` form with a vmap rule lets ``torch.func`` transform it.
    """

    @staticmethod
    def forward(x: torch.Tensor, attn: torch.Tensor, radix: int) -> torch.Tensor:
        return _radix_weighted_sum(x, attn, radix)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, attn, radix = inputs
        ctx.save_for_backward(x, attn)
        ctx.radix = radix

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, attn = ctx.saved_tensors
        grad_x, grad_attn = _weighted_sum_backward(grad, x, attn, ctx.radix, *ctx.needs_input_grad[:2])
        return grad_x, grad_attn, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, attn: torch.Tensor, radix: int,
             ) -> tuple[torch.Tensor, int]:
        """vmap rule: the sum is per sample, so the vmapped dim folds into the batch dim."""
        n = info.batch_size
        x_dim, attn_dim, _ = in_dims
        x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(n, *x.shape)
        attn = attn.movedim(attn_dim, 0) if attn_dim is not None else attn.expand(n, *attn.shape)
        out = _RadixWeightedSum.apply(x.flatten(0, 1), attn.flatten(0, 1), radix)
        return out.unflatten(0, (n, -1)), 0


__all__ = ["SplitAttn", "batch_stats_attention_norm", "check_int", "check_rate", "is_tracing",
           "radix_softmax", "radix_weighted_sum", "uses_batch_stats"]
