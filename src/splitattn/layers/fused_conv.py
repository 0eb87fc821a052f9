"""A convolution with its ReLU and residual add fused in, for BN-folded inference models.

``FusedConv2d(x, residual)`` computes ``act(conv(x) + bias + residual)``. It is a plain ``nn.Conv2d``
subclass (same parameters, same state dict), so it runs anywhere a conv runs: on GPU, under autocast, in
TorchScript, ``torch.compile`` and ONNX export it is the unfused sequence of ATen ops. On CPU in fp32 without
autograd it runs as one oneDNN convolution with the add and ReLU as post-ops and the weight reordered once
into oneDNN's blocked layout (the layout its kernels want for that input shape) instead of on every call:
the same prepacking and fusion that inductor's CPU freezing pass does, in eager mode.

A 1x1 convolution (stride 1, no padding) applied to a ``(B, C, 1, 1)`` map, such as the Split-Attention MLP
on the pooled vector, runs as a matrix product (``linear``, or one batched product per group) on every
device and route: a convolution call has a fixed cost (prepared primitive, layout checks) that dwarfs
such a vector's few multiply-adds, and a GEMM call's is much smaller. Compiled for inference on the CPU
(``torch.compile`` without autograd) the product is written as a multiply and a sum, which inductor fuses
with the Split-Attention block's pooling, r-softmax and weighted sum into one kernel instead of calling a
pre-packed GEMM per product (``benchmarks/RESULTS.md`` has the measurements).
"""

# No `from __future__ import annotations`: TorchScript cannot resolve string annotations of unused methods.
import contextlib
import warnings
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["MAX_REDUCTION_WIDTH", "FusedConv2d", "exporting_for_inductor", "onednn_fast_path_available",
           "pointwise_conv_as_linear"]

_ACTIVATIONS = ("none", "relu")
# inductor's own bound for the matrix products it writes as a product and a sum on the CPU
# (torch._inductor.fx_passes.decompose_mem_bound_mm, CPU_MAX_OTHER_DIMENSION_DECOMPOSITION)
MAX_REDUCTION_WIDTH = 2048
# Whether a torch.export capture is for inductor's CPU inference program (exporting_for_inductor).
_EXPORT_FOR_INDUCTOR = False
# Input shapes per conv whose prepacked weights are kept (the reorder depends on the input shape).
_MAX_PACKED = 4


def onednn_fast_path_available() -> bool:
    """True when this PyTorch build has oneDNN with the fused (prepacked) convolution ops."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


# Newer torch warns that is_fx_tracing() is also true under torch.export and offers is_fx_symbolic_tracing();
# either way the ATen path is taken.
_is_fx_tracing = getattr(
    torch.fx._symbolic_trace, "is_fx_symbolic_tracing", torch.fx._symbolic_trace.is_fx_tracing
)


def pointwise_conv_as_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int,  # noqa: UP045
    relu: bool = False, as_reduction: bool = False,
) -> torch.Tensor:
    """``conv2d(x, weight, bias, groups=groups)`` as a GEMM, for a 1x1 kernel (stride 1, no padding) on a
    1x1 map.

    Args:
        x: ``(B, C_in, 1, 1)``, any memory format.
        weight: ``(C_out, C_in / groups, 1, 1)``.
        bias: ``(C_out,)`` or ``None``.
        groups: the conv's groups; each group is its own product (one batched call).
        relu: apply a ReLU, to the GEMM's ``(B, C_out)`` output: compiled, inductor fuses a ReLU that
            reads a linear directly into the GEMM call (oneDNN's post-op), not one behind a reshape.
        as_reduction: write the product as ``(x[:, None, :] * w).sum(-1)`` (per group), which inductor
            generates as its own loop and fuses with the ops around it (see :func:`vector_as_reduction`).

    Returns:
        ``(B, C_out, 1, 1)``, contiguous (which for a 1x1 map is also channels_last).
    """
    b = x.shape[0]
    w = weight.reshape(weight.shape[0], -1)  # (C_out, C_in / groups)
    if as_reduction:
        # (B, G, 1, C_in / G) * (G, C_out / G, C_in / G), summed over C_in / G; in x's dtype, as a GEMM under
        # autocast computes it (there x is bf16 and the weights fp32)
        w = w.to(x.dtype).view(groups, -1, w.shape[1])
        y = (x.reshape(b, groups, 1, w.shape[2]) * w).sum(-1).reshape(b, -1)
        if bias is not None:
            y = y + bias.to(x.dtype)
    elif groups == 1:
        y = F.linear(x.reshape(b, -1), w, bias)
    else:
        xg = x.reshape(b, groups, -1).transpose(0, 1)  # (G, B, C_in / G)
        wg = w.reshape(groups, -1, w.shape[1]).transpose(1, 2)  # (G, C_in / G, C_out / G)
        y = torch.bmm(xg, wg).transpose(0, 1).reshape(b, -1)
        if bias is not None:
            y = y + bias.to(y.dtype)  # under autocast bmm gives bf16, as the grouped conv does
    if relu:
        y = torch.relu(y)
    return y.view(b, -1, 1, 1)


@torch.jit.unused
def vector_as_reduction(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a 1x1 conv on the ``(B, C, 1, 1)`` map ``x`` is best written as a product and a sum: compiled
    by ``torch.compile`` for inference on the CPU (not exported, no autograd), with a weight of at most
    :data:`MAX_REDUCTION_WIDTH` in each dim.

    A pre-packed GEMM is a library call per product, and on a vector of ``B`` rows its fixed cost dwarfs
    the multiply-adds; inductor's own loop instead joins the kernel that pools the block's input and the one
    that applies the r-softmax, so the whole Split-Attention tail runs as one kernel. Eager, traced,
    scripted, exported or with autograd the GEMM stays, except in an export for inductor
    (:func:`exporting_for_inductor`; torch before 2.6, which cannot tell ``torch.export`` from
    ``torch.compile``, exports this form too: the same numbers).

    Args:
        x: ``(B, C_in, 1, 1)``.
        weight: ``(C_out, C_in / groups, 1, 1)``.

    Returns:
        ``True`` where :func:`pointwise_conv_as_linear` should take ``as_reduction=True``.
    """
    if x.device.type != "cpu" or not torch.compiler.is_compiling() or torch.is_grad_enabled():
        return False  # every eager call stops here, before the export checks
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)() and not _EXPORT_FOR_INDUCTOR
    return (not exporting and not torch.onnx.is_in_onnx_export()
            and weight.shape[0] <= MAX_REDUCTION_WIDTH and weight.shape[1] <= MAX_REDUCTION_WIDTH)


@contextlib.contextmanager
def exporting_for_inductor() -> Iterator[None]:
    """Inside, a ``torch.export`` capture is of the program inductor compiles for CPU inference
    (:class:`~splitattn.deploy.compiled.CompiledModel`): :func:`vector_as_reduction` then writes the pooled
    vector's 1x1 convs as reductions, as it does under ``torch.compile``. An export for other runtimes
    (ONNX, AOTInductor files, the INT8 flow) keeps the GEMMs."""
    global _EXPORT_FOR_INDUCTOR
    before, _EXPORT_FOR_INDUCTOR = _EXPORT_FOR_INDUCTOR, True
    try:
        yield
    finally:
        _EXPORT_FOR_INDUCTOR = before


def _tracing_or_compiling() -> bool:
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or _is_fx_tracing()
        or torch.onnx.is_in_onnx_export()
    )


class FusedConv2d(nn.Conv2d):
    """``act(conv(x) + bias [+ residual])`` with ``act`` in ``{"none", "relu"}``.

    Built by :meth:`from_conv` from a (BN-folded) ``nn.Conv2d``; holds the same ``weight``/``bias``.
    Prepacked oneDNN weights are a cache outside the state dict, rebuilt when the weights change
    (``load_state_dict``, ``.to()``) and dropped by ``copy.deepcopy`` and pickling.

    Args:
        activation: ``"none"`` or ``"relu"``, applied after the residual add.
        Other arguments are those of ``nn.Conv2d``.

    Shape:
        ``x``: ``(B, C_in, H, W)``; ``residual``: ``(B, C_out, H', W')``; output ``(B, C_out, H', W')`` in
        the memory format of ``x`` (of ``residual`` when it is reused).
    """

    __jit_ignored_attributes__ = ["_packed"]

    def __init__(self, *args, activation: str = "none", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise InputError("FusedConv2d needs numeric zero padding (padding_mode='zeros')")
        self.activation = activation
        self._packed: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str = "none") -> "FusedConv2d":
        """A ``FusedConv2d`` sharing ``conv``'s weight and bias tensors, with ``activation`` fused in."""
        fused = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode, activation=activation,
            device="meta",
        )
        fused.weight = conv.weight
        fused.bias = conv.bias
        return fused

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"] = {}  # oneDNN tensors have no storage to copy or pickle (deepcopy uses this too)
        return state

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, reuse_residual: bool = False
    ) -> torch.Tensor:
        """``act(conv(x) + residual)``.

        Args:
            x: ``(B, C_in, H, W)``.
            residual: optional ``(B, C_out, H', W')`` added before the activation.
            reuse_residual: the caller owns ``residual`` and it is not needed afterwards: the oneDNN
                path may then write the output into its buffer instead of allocating a new one.
        """
        if self._on_vector(x):
            reduce = False
            if not torch.jit.is_scripting():
                reduce = self._vector_as_reduction(x)
            if residual is None:
                return pointwise_conv_as_linear(x, self.weight, self.bias, self.groups,
                                                relu=self.activation == "relu", as_reduction=reduce)
            y = pointwise_conv_as_linear(x, self.weight, self.bias, self.groups, as_reduction=reduce)
        else:
            if not torch.jit.is_scripting():
                out = self._try_onednn(x, residual, reuse_residual)
                if out is not None:
                    return out
            y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        if self.activation == "relu":
            y = torch.relu(y)
        return y

    def _on_vector(self, x: torch.Tensor) -> bool:
        """Whether this is a 1x1 conv (stride 1, no padding) and ``x`` a ``(B, C, 1, 1)`` map: a GEMM then."""
        return (x.dim() == 4 and x.shape[2] == 1 and x.shape[3] == 1 and self.kernel_size[0] == 1
                and self.kernel_size[1] == 1 and self.stride[0] == 1 and self.stride[1] == 1
                and self.padding[0] == 0 and self.padding[1] == 0)

    @torch.jit.unused
    def _vector_as_reduction(self, x: torch.Tensor) -> bool:
        return vector_as_reduction(x, self.weight)

    @torch.jit.unused
    def _onednn_applies(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:  # noqa: UP045
        """Whether the oneDNN path can take this call: CPU fp32 tensors, no autograd, no autocast/tracing."""
        grad = torch.is_grad_enabled()
        for t in (x, residual):
            if t is not None and (
                t.device.type != "cpu" or t.dim() != 4 or t.dtype != torch.float32 or t.is_mkldnn
                or (grad and t.requires_grad)
            ):
                return False
        if not _ONEDNN or self.weight.dtype != torch.float32 or (grad and self.weight.requires_grad):
            return False
        autocast = torch.is_autocast_enabled("cpu")
        return torch.backends.mkldnn.enabled and not autocast and not _tracing_or_compiling()

    @torch.jit.unused
    def _try_onednn(
        self, x: torch.Tensor, residual: Optional[torch.Tensor], reuse_residual: bool  # noqa: UP045
    ) -> Optional[torch.Tensor]:  # noqa: UP045
        """The oneDNN result, or None where it does not apply (then the ATen path runs)."""
        global _ONEDNN
        if not self._onednn_applies(x, residual):
            return None
        try:
            if residual is None:
                return self._onednn_forward(x)
            return self._onednn_forward_add(x, residual, reuse_residual)
        except (RuntimeError, NotImplementedError) as err:
            # Builds whose oneDNN lacks a primitive for this case (e.g. some ARM builds) raise before
            # computing anything: switch the fast path off for the process and use the ATen ops.
            _ONEDNN = False
            warnings.warn(f"splitattn: oneDNN fused convolution unavailable ({err}); using plain convs",
                          stacklevel=2)
            return None

    @torch.jit.unused
    def _packed_weight(self, input_shape: list[int]) -> torch.Tensor:
        w, b = self.weight, self.bias
        version = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
        if self._packed.get("version") != version:  # new weights: every packed copy is stale
            self._packed = {"version": version}
        key = tuple(input_shape)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) > _MAX_PACKED:
                self._packed.pop(next(k for k in self._packed if k != "version"))
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                w.detach().contiguous().to_mkldnn(), list(self.padding), list(self.stride),
                list(self.dilation), self.groups, input_shape,
            )
            self._packed[key] = packed
        return packed

    @torch.jit.unused
    def _onednn_forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(list(x.shape)), b, list(self.padding), list(self.stride),
            list(self.dilation), self.groups, self.activation, [], "",
        )

    @torch.jit.unused
    def _onednn_forward_add(
        self, x: torch.Tensor, residual: torch.Tensor, reuse_residual: bool
    ) -> torch.Tensor:
        w = self._packed_weight(list(x.shape))
        b = None if self.bias is None else self.bias.detach()
        args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        unary = None if self.activation == "none" else self.activation
        if reuse_residual and residual.is_contiguous(memory_format=_suggest_format(x)):
            # The output is accumulated into the residual's buffer (oneDNN's "sum" post-op).
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, x, w, b, *args, "add", None, unary, [], None
            )
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, w, b, *args, "add", None, unary, [], None
        )


def _suggest_format(x: torch.Tensor) -> torch.memory_format:
    cl = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


_ONEDNN = onednn_fast_path_available()
