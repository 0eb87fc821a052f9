"""The graph inductor compiles for a :class:`~splitattn.deploy.quantization.QuantizedModel`: a copy of the
converted graph, rewritten where inductor compiles another form of the same arithmetic better.

**Scales folded into the small operands** (:func:`fold_int8_scales`). A converted graph computes what lies
between two INT8 tensors in float: ``dequantize`` (``(q - z) s``), the float ops, ``quantize``
(``round(y / s') + z'``, clamped). Inductor compiles that as written: a subtract and a multiply per value
read, a multiply per value written. Where the float ops are linear in the dequantized values, the scales
can go elsewhere:

- the Split-Attention weighted sum ``quantize(sum_r dequantize(U_r) a_r)``: ``U`` is a ReLU's output
  (``z = 0``), so this is ``round(sum_r U_r (a_r s / s')) + z'``. The scales move into the ``(B, C)``
  attention weights, which go to a buffer of their own (inductor would otherwise recompute them, their
  softmax division included, at every pixel). The kernel that streams ``U`` then converts, multiplies-adds
  and rounds.
- the average pools between two quantizes (the avd pool, avg_down's pool), which keep their input's scale:
  ``round(pool(U)) + z'``.

What it accepts (:func:`_linear_in`): views, ``sum``, ``avg_pool2d``, and products (``mul``, ``addcmul``) with
exactly one factor linear in the dequantizes, all of one scale and zero point 0, at least one op not a view;
every node on the path is read only on it. The values differ from the graph's by float rounding only: an
INT8 value can move by one step where the products of the scales round differently.

**The float attention MLP as reductions** (:func:`linears_as_reductions`). ``quantize``'s fp32 attention
MLP runs as ``linear`` on the pooled ``(B, C)`` vector (``int8_fusion.attention_as_linear``), which inductor
calls as a pre-packed MKL GEMM: two library calls per block, the bias and ReLU of ``fc1`` a kernel between
them. Written as a product and a sum over ``C``, the MLP is inductor's own code, and inductor
fuses each block's pooling, MLP, r-softmax and weighted sum into one kernel (resnest50: 142 calls per step
-> 78).

The reference graph, which an INT8 file rebuilds and an uncompiled model runs, is unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import torch

from ..layers.fused_conv import MAX_REDUCTION_WIDTH

__all__ = ["PROGRAM_REWRITES", "fold_int8_scales", "linears_as_reductions", "program_graph"]

_aten = torch.ops.aten
_VIEWS = (_aten.view.default, _aten.reshape.default, _aten.permute.default, _aten.unbind.int,
          _aten.squeeze.dim, _aten.unsqueeze.default, _aten.flatten.using_ints, _aten.transpose.int,
          operator.getitem)
_LINEAR = (*_VIEWS, _aten.sum.dim_IntList, _aten.avg_pool2d.default)
_ADDCMUL = (_aten.addcmul.default, _aten.addcmul_.default)
Node = torch.fx.Node


@dataclass
class _Path:
    """What :func:`_linear_in` found between a node and the dequantizes it is linear in.

    ``weighted``: whether its values went through a product (whose other factor takes the scales), which
    every branch of a sum must agree on.
    """

    nodes: set[Node] = field(default_factory=set)
    reads: list[tuple[Node, Node]] = field(default_factory=list)  # (reader, dequantize it reads)
    factors: list[tuple[Node, int]] = field(default_factory=list)  # (product, index of its other factor)
    scale: float | None = None
    weighted: bool = False

    def merge(self, other: _Path) -> bool:
        if self.scale is not None and (other.scale != self.scale or other.weighted != self.weighted):
            return False
        self.scale, self.weighted = other.scale, other.weighted
        self.nodes |= other.nodes
        self.reads += other.reads
        self.factors += other.factors
        return True


def _decomposed(name: str) -> Any:
    """``torch.ops.quantized_decomposed.<name>.default``, or None where nothing registered it."""
    try:
        return getattr(torch.ops.quantized_decomposed, name).default
    except AttributeError:
        return None


def _calls(node: Any, target: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target is target


def _operand(reader: Node, arg: Any, dequantize: Any) -> _Path | None:
    """The path of ``reader``'s input ``arg`` if it is linear in dequantizes, else None."""
    if _calls(arg, dequantize):
        _, scale, zero_point = arg.args[:3]
        if zero_point != 0 or not isinstance(scale, float):
            return None
        return _Path(reads=[(reader, arg)], scale=scale)
    return _linear_in(arg, dequantize)


def _linear_in(node: Any, dequantize: Any) -> _Path | None:
    """The path from ``node`` to the dequantizes it is linear in (see the module's docstring), or None."""
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    path = _Path()
    if node.target in _LINEAR:
        found = _operand(node, node.args[0], dequantize)
        if found is None or not path.merge(found):
            return None
    elif node.target is _aten.mul.Tensor or node.target in _ADDCMUL:
        first = 1 if node.target in _ADDCMUL else 0
        sides = [_operand(node, node.args[i], dequantize) for i in (first, first + 1)]
        linear = [i for i, side in enumerate(sides) if side is not None]
        if len(linear) != 1 or not isinstance(node.args[first + 1 - linear[0]], Node):
            return None  # a product of two linear factors is not linear; a constant factor is left alone
        product = sides[linear[0]]
        if product.weighted:
            return None  # a second factor would take the scales twice
        product.weighted = True
        product.factors.append((node, first + 1 - linear[0]))
        if node.target in _ADDCMUL:  # self + t1 * t2: self must be a product too
            if len(node.args) != 3 or node.kwargs.get("value", 1) != 1:
                return None
            found = _operand(node, node.args[0], dequantize)
            if found is None or not path.merge(found):
                return None
        if not path.merge(product):
            return None
    else:
        return None
    path.nodes.add(node)
    return path


def _own_buffer() -> Any:
    """Inductor's prim that puts a value in a buffer of its own, or None (a torch without it)."""
    try:
        import torch._inductor.inductor_prims  # noqa: F401  (registers the inductor prims)

        return torch.ops.prims.inductor_force_stride_order.default
    except (ImportError, AttributeError):
        return None


def _val(node: Any) -> torch.Tensor | None:
    """The value a captured node recorded (``meta["val"]``), or None."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _contiguous_strides(node: Node) -> list[int] | None:
    """Contiguous strides for ``node``'s value (the batch size, dim 0, is in none of them), or None."""
    val = _val(node)
    if val is None or any(not isinstance(s, int) for s in val.shape[1:]):
        return None
    strides, size = [], 1
    for s in reversed(val.shape[1:]):
        strides.append(size)
        size *= s
    return [size, *strides[::-1]]


def _fold(g: torch.fx.Graph, quantize: Node, dequantize: Any) -> bool:
    """Fold the scales of the linear path into ``quantize`` (in place); whether it was one."""
    y, out_scale, out_zero, qmin, qmax, dtype = quantize.args[:6]
    path = _linear_in(y, dequantize)
    if path is None or path.scale is None or not isinstance(out_scale, float):
        return False
    if all(n.target in _VIEWS for n in path.nodes):
        return False  # a reshape between two quantizes (the classifier's flatten): no arithmetic to save
    if any(user not in path.nodes and user is not quantize for n in path.nodes for user in n.users):
        return False  # a value on the path is read elsewhere: it must keep its scale
    ratio, buffer = path.scale / out_scale, _own_buffer()
    for product, i in path.factors:
        factor = product.args[i]
        with g.inserting_before(product):
            scaled = g.call_function(_aten.mul.Tensor, (factor, ratio))
            strides = _contiguous_strides(factor)
            if buffer is not None and strides is not None:
                scaled = g.call_function(buffer, (scaled, strides))
        product.update_arg(i, scaled)
    as_float: dict[Node, Node] = {}
    for reader, dq in path.reads:
        if dq not in as_float:
            with g.inserting_after(dq):
                as_float[dq] = g.call_function(_aten._to_copy.default, (dq.args[0],),
                                               {"dtype": torch.float32})
        reader.replace_input_with(dq, as_float[dq])
    with g.inserting_before(quantize):
        if not path.weighted and ratio != 1.0:  # a pool that changes the scale
            y = g.call_function(_aten.mul.Tensor, (y, ratio))
        q = g.call_function(_aten.round.default, (y,))
        if out_zero != 0:
            q = g.call_function(_aten.add.Tensor, (q, out_zero))
        q = g.call_function(_aten.clamp.default, (q, qmin, qmax))
        q = g.call_function(_aten._to_copy.default, (q,), {"dtype": dtype})
    quantize.replace_all_uses_with(q)
    g.erase_node(quantize)
    return True


def fold_int8_scales(graph: torch.fx.GraphModule) -> int:
    """Fold the scales of ``graph``'s linear float tails (see the module's docstring), in place.

    Args:
        graph: a graph of ``convert_pt2e``, or a copy of one (:func:`program_graph`).

    Returns:
        How many quantizes it rewrote: one per Split-Attention block and per average pool between two
        quantizes.
    """
    dequantize, quantize = _decomposed("dequantize_per_tensor"), _decomposed("quantize_per_tensor")
    if dequantize is None or quantize is None:
        return 0
    g = graph.graph
    n = sum(_fold(g, node, dequantize) for node in list(g.nodes) if _calls(node, quantize))
    if n:
        g.eliminate_dead_code()
        graph.recompile()
    return n


def linears_as_reductions(graph: torch.fx.GraphModule) -> int:
    """Write each float ``linear`` of ``graph`` on a 2-D input (the fp32 attention MLP) with a weight of at
    most :data:`MAX_REDUCTION_WIDTH` in each dim as ``(x[:, None, :] * w).sum(-1) + b``, in place.

    A linear that reads a dequantize (an INT8 linear: the classifier) is oneDNN's and stays.

    Args:
        graph: a graph of ``convert_pt2e``, or a copy of one (:func:`program_graph`).

    Returns:
        How many linears it rewrote (two per Split-Attention block, times the cardinality).
    """
    dequantize, g, n = _decomposed("dequantize_per_tensor"), graph.graph, 0
    for node in list(g.nodes):
        if not _calls(node, _aten.linear.default) or _calls(node.args[0], dequantize):
            continue
        x, w = node.args[:2]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        x_val, w_val = _val(x), _val(w)
        if x_val is None or w_val is None or x_val.dim() != 2 or w_val.dim() != 2:
            continue
        if x_val.dtype != torch.float32 or any(not isinstance(d, int) or d > MAX_REDUCTION_WIDTH
                                               for d in w_val.shape):
            continue
        with g.inserting_before(node):
            product = g.call_function(_aten.mul.Tensor, (g.call_function(_aten.unsqueeze.default, (x, 1)),
                                                         g.call_function(_aten.unsqueeze.default, (w, 0))))
            y = g.call_function(_aten.sum.dim_IntList, (product, [-1]))
            if bias is not None:
                y = g.call_function(_aten.add.Tensor, (y, bias))
        node.replace_all_uses_with(y)
        g.erase_node(node)
        n += 1
    if n:
        graph.recompile()
    return n


# name -> rewrite of the compiled program's graph, in the order they apply
PROGRAM_REWRITES: dict[str, Callable[[torch.fx.GraphModule], int]] = {
    "scales": fold_int8_scales, "linears": linears_as_reductions}


def program_graph(graph: torch.fx.GraphModule,
                  rewrites: Mapping[str, Callable[[torch.fx.GraphModule], int]] = PROGRAM_REWRITES,
                  ) -> tuple[torch.fx.GraphModule, dict[str, int]]:
    """The graph inductor compiles for ``graph``: a copy with :func:`fold_int8_scales` and
    :func:`linears_as_reductions` applied.

    Args:
        graph: a graph of ``convert_pt2e`` (``QuantizedModel.graph_module``); not modified.
        rewrites: name -> rewrite, applied to the copy in order (default :data:`PROGRAM_REWRITES`; the
            benchmarks compare subsets).

    Returns:
        ``(copy, counts)``: the copy (its nodes are new, its constants ``graph``'s own) and how many nodes
        each rewrite changed, by name (``"scales"``: quantizes, ``"linears"``).
    """
    copy = torch.fx.GraphModule(graph, deepcopy(graph.graph))
    return copy, {name: rewrite(copy) for name, rewrite in rewrites.items()}
