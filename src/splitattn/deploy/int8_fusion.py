"""What :func:`splitattn.quantize` adds to torchao's x86 recipe: a ResNeSt stays INT8 between its convs.

torchao's ``X86InductorQuantizer`` quantizes a tensor where a quantizable op (a conv, a linear, a pooling
after one of those) reads it. The output ``U = ReLU(conv(x))`` of a Split-Attention grouped conv
``(B, R*C, H, W)`` is read only by the attention tail (the split pooling and the weighted sum), which the
recipe leaves in float: that conv then writes ``U`` in fp32 and both tail kernels read it back in fp32, the
largest float round trip of the program (an R-times-expanded map, at every block).

:func:`x86_quantizer` returns the recipe with one addition: the output of each Split-Attention ``act0`` (the
ReLU that closes the grouped conv's ``conv -> BN -> ReLU`` pattern) gets an output observer, like the
input of any conv. After ``convert_pt2e`` that conv's dequantize -> conv -> ReLU -> quantize chain is one
oneDNN INT8 conv writing ``uint8``, and inductor fuses the dequantize of ``U`` into the loads of the two tail
kernels (pooling; r-softmax + weighted sum + the quantize for ``conv3``): ``U`` is written and read as one
byte per value instead of four, quantized once.

:func:`attention_as_linear` runs the attention MLP (``fc1``, ``fc2`` on the pooled ``(B, C, 1, 1)``
vector), which ``quantize`` leaves in fp32 by default, as linear layers: a oneDNN conv call costs tens of
microseconds on such a vector whatever its size (32 of them per ResNeSt-50 step), a pre-packed GEMM a few.

:func:`fast_int8_loads` makes the kernels that read INT8 data fast on AVX2 CPUs (inductor's 8-bit vector
loads take ATen's slow partial-load path there), for the tail and for the INT8 pools alike.
:func:`float_round_trips` and :func:`count_quant_ops` read a converted graph, for checks of that structure.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..layers.split_attn import SplitAttn

__all__ = ["attention_as_linear", "attention_mlp_convs", "count_quant_ops", "fast_int8_loads",
           "float_round_trips", "split_attn_outputs", "x86_quantizer"]

_RELU = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)
_CONV = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
_QUANT_KEY = "quantization_annotation"


def split_attn_outputs(model: nn.Module) -> set[str]:
    """Module names of the ReLU closing each Split-Attention grouped conv: the nodes whose output
    :func:`x86_quantizer` quantizes.

    Args:
        model: a float model (any module tree holding :class:`~splitattn.layers.SplitAttn` s).

    Returns:
        Names such as ``"layer1.0.conv2.act0"``; empty for a model without Split-Attention.
    """
    return {f"{name}.act0" if name else "act0" for name, m in model.named_modules()
            if isinstance(m, SplitAttn) and isinstance(m.act0, nn.ReLU)}


def attention_mlp_convs(model: nn.Module) -> list[str]:
    """Module names of the Split-Attention ``fc1`` / ``fc2`` convs (the attention MLP on the pooled vector).

    Args:
        model: a float model.

    Returns:
        Names such as ``"layer1.0.conv2.fc1"``, in module order; empty without Split-Attention.
    """
    return [f"{name}.{fc}" if name else fc for name, m in model.named_modules() if isinstance(m, SplitAttn)
            for fc in ("fc1", "fc2")]


def attention_as_linear(graph: torch.fx.GraphModule, names: Iterable[str]) -> int:
    """Rewrite each float conv of ``names`` on a ``(B, C, 1, 1)`` map as ``linear`` on ``(B, C)``.

    Inductor with freezing lowers a float linear with a constant weight to a pre-packed GEMM whose call
    costs a few microseconds, where a oneDNN conv costs tens on any input size. A conv with ``K`` groups
    becomes ``K`` linears on its channel groups, concatenated. The weights stay the graph's own constants
    (reshaped in the graph, which freezing folds), so the program reads the same tensors as before.

    Args:
        graph: a converted graph; the named convs are float (``quantize(..., attention="fp32")``), 1x1,
            stride 1, no padding, applied to a pooled vector.
        names: module names of :func:`attention_mlp_convs`.

    Returns:
        How many convs it rewrote (a conv of another shape is left as it is).
    """
    wanted, g, n = set(names), graph.graph, 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target not in _CONV or _module_path(node) not in wanted:
            continue
        if not _is_pointwise_conv(node):
            continue
        x, w, b = node.args[:3]
        groups = int(node.args[8] if node.target is torch.ops.aten.convolution.default else
                     (node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)))
        c_in, c_out = x.meta["val"].shape[1] // groups, node.meta["val"].shape[1] // groups
        before = node.prev
        with g.inserting_before(node):
            flat = g.call_function(torch.ops.aten.flatten.using_ints, (x, 1))
            weight = g.call_function(torch.ops.aten.flatten.using_ints, (w, 1))
            outs = []
            for k in range(groups):  # fc1 / fc2 are grouped by the cardinality
                xk, wk, bk = flat, weight, b
                if groups > 1:
                    xk, wk = _group(g, flat, 1, k, c_in), _group(g, weight, 0, k, c_out)
                    bk = None if b is None else _group(g, b, 0, k, c_out)
                outs.append(g.call_function(torch.ops.aten.linear.default, (xk, wk, bk)))
            y = outs[0] if groups == 1 else g.call_function(torch.ops.aten.cat.default, (outs, 1))
            y = g.call_function(torch.ops.aten.unsqueeze.default,
                                (g.call_function(torch.ops.aten.unsqueeze.default, (y, -1)), -1))
        y.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace", "val")})
        added = []
        while (before := before.next) is not node:
            added.append(before)
        _record_values(added, node)
        node.replace_all_uses_with(y)
        g.erase_node(node)
        n += 1
    if n:
        graph.recompile()
    return n


def _record_values(nodes: list[torch.fx.Node], conv: torch.fx.Node) -> None:
    """Give ``nodes`` (inserted in place of ``conv``, in order) the values (``meta["val"]``) the capture would
    have recorded, computed from their inputs' in the capture's fake mode: later passes read shapes there
    (:func:`splitattn.deploy.int8_program.linears_as_reductions`). Without a fake mode, nothing."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([a.meta.get("val") for a in conv.args if isinstance(a, torch.fx.Node)])
    if mode is None:
        return
    with mode:
        for node in nodes:
            args = torch.fx.node.map_arg(node.args, lambda a: a.meta.get("val"))
            try:
                node.meta.setdefault("val", node.target(*args, **node.kwargs))
            except Exception:  # noqa: BLE001 (an input without a value: the rest stays unrecorded)
                return


def _group(g: torch.fx.Graph, t: Any, dim: int, k: int, size: int) -> torch.fx.Node:
    """Group ``k`` (of ``size`` channels) of ``t`` along ``dim``, as a graph node."""
    return g.call_function(torch.ops.aten.slice.Tensor, (t, dim, k * size, (k + 1) * size))


def _is_pointwise_conv(node: torch.fx.Node) -> bool:
    """A 2D conv with a 1x1 kernel, stride 1, no padding, on a 1x1 map (shapes from the capture)."""
    x, w = node.args[0], node.args[1]
    val_x, val_w = getattr(x, "meta", {}).get("val"), getattr(w, "meta", {}).get("val")
    if val_x is None or val_w is None or val_x.dim() != 4 or tuple(val_w.shape[2:]) != (1, 1):
        return False
    if tuple(val_x.shape[2:]) != (1, 1):
        return False
    defaults = ([1, 1], [0, 0], [1, 1])
    given = node.args[3:6]
    return all(list(a) == d for a, d in zip(given, defaults)) and (
        node.target is not torch.ops.aten.convolution.default or not node.args[6])


def _module_path(node: torch.fx.Node) -> str | None:
    """The name of the innermost module a captured node comes from (its ``nn_module_stack``)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removeprefix("_export_root.") if isinstance(path, str) else None


def annotate_split_attn_outputs(graph: torch.fx.GraphModule, names: set[str], config: Any) -> int:
    """Give the ReLU nodes of ``names`` an output observer (``config``'s output activation spec).

    Args:
        graph: a captured graph the x86 recipe has annotated (each such ReLU marked as the end of a
            conv -> ReLU pattern, without an output observer).
        names: module names of :func:`split_attn_outputs`.
        config: torchao's ``QuantizationConfig`` of the recipe.

    Returns:
        How many nodes it annotated (0 where the recipe left the conv in float).
    """
    spec = getattr(config, "output_activation", None)
    if spec is None:
        return 0
    n = 0
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in _RELU or _module_path(node) not in names:
            continue
        ann = node.meta.get(_QUANT_KEY)
        # Only where the recipe quantized the conv before it (not under attention="fp32"-like configs
        # that leave the conv float) and has not placed an output observer of its own.
        if ann is None or not getattr(ann, "_is_output_of_quantized_pattern", False) or ann.output_qspec:
            continue
        ann.output_qspec = spec
        n += 1
    return n


def x86_quantizer(x86: Any, model: nn.Module, config: Any, split_outputs: bool = True) -> Any:
    """torchao's x86 quantizer that also quantizes each Split-Attention grouped conv's output.

    Args:
        x86: torchao's ``x86_inductor_quantizer`` module.
        model: the float model being quantized (for the Split-Attention module names).
        config: the global ``QuantizationConfig``.
        split_outputs: add the Split-Attention outputs (``False``: torchao's recipe as it is, which
            files written before this addition were built with).

    Returns:
        An ``X86InductorQuantizer`` (subclass) for ``prepare_pt2e``.
    """
    names = split_attn_outputs(model) if split_outputs else set()

    class _SplitAttnX86Quantizer(x86.X86InductorQuantizer):
        def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            gm = super().annotate(gm)
            annotate_split_attn_outputs(gm, names, self.global_config)
            return gm

    quantizer = _SplitAttnX86Quantizer()
    quantizer.set_global(config)
    return quantizer


def _is_target(node: Any, names: Iterable[str]) -> bool:
    target = getattr(node, "target", None)
    return getattr(node, "op", None) == "call_function" and any(
        n in str(getattr(target, "__name__", target)) for n in names)


def count_quant_ops(graph: torch.fx.GraphModule) -> dict[str, int]:
    """The per-tensor (activation) quantize and dequantize nodes of a converted graph.

    Args:
        graph: a graph of ``convert_pt2e`` (``QuantizedModel.graph_module``).

    Returns:
        ``{"quantize": n, "dequantize": m}`` (per-channel weight dequantizes are not counted).
    """
    q = sum(_is_target(n, ("quantize_per_tensor",)) and not _is_target(n, ("dequantize",))
            for n in graph.graph.nodes)
    dq = sum(_is_target(n, ("dequantize_per_tensor",)) for n in graph.graph.nodes)
    return {"quantize": q, "dequantize": dq}


def float_round_trips(graph: torch.fx.GraphModule) -> list[str]:
    """The convs of a converted graph whose output is read in float by an op other than a quantize.

    A conv whose every user is a quantize node (or a ReLU / add whose users all are) hands INT8 on: the
    compiled program writes its output in INT8. The attention MLP's ``fc2``, whose logits go to the
    r-softmax, is expected here; any other conv is a float round trip between two convs.

    Args:
        graph: a graph of ``convert_pt2e`` (``QuantizedModel.graph_module``).

    Returns:
        The conv node names, in graph order.
    """
    trips = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in _CONV:
            continue
        frontier, ok = list(node.users), True
        while frontier and ok:
            user = frontier.pop()
            if _is_target(user, ("quantize_per_tensor",)):
                continue
            if user.op == "call_function" and (user.target in _RELU or user.target in (
                    torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)):
                frontier.extend(user.users)
                continue
            ok = False
        if not ok:
            trips.append(node.name)
    return trips


# ``Vectorized<uint8_t>::loadu(ptr, 8)`` of AVX2 (ATen's vec256) fills a 32-byte stack buffer, copies the 8
# bytes into it and reloads it: a store-forwarding stall on every load (AVX-512's has a fast path for this
# count). Inductor's CPU kernels load 8-bit data 8 values at a time (one fp32 vector's worth), so every
# kernel reading INT8 (dequantize -> pool, the Split-Attention tail) ran at a fraction of memory speed.
# ``loadu_one_fourth`` is vec256's one-instruction load of the low 8 bytes (the upper lanes are undefined,
# which the fp32 conversion that follows never reads).
_LOAD8 = re.compile(
    r"^(?P<vec>at::vec::Vectorized<u?int8_t>)::loadu\((?P<ptr>.+), static_cast<int64_t>\(8\)\)$")


def _load8_line(line: str) -> str:
    m = _LOAD8.match(line)
    return f"{m['vec']}::loadu_one_fourth({m['ptr']})" if m else line


class _CacheKey:
    """A no-op post-grad pass whose uuid puts the patched code generation into the FX graph cache key."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        return None

    def uuid(self) -> str:
        return "splitattn.deploy.int8_fusion.fast_int8_loads.v1"


@contextlib.contextmanager
def fast_int8_loads() -> Iterator[None]:
    """While inductor compiles inside this context on an AVX2 CPU (256-bit vectors), its C++ kernels load
    8-bit data with one instruction (see ``_LOAD8``); elsewhere, or with an inductor whose code generation
    differs, or with a ``post_grad_custom_post_pass`` of the caller's, a no-op.

    The patch is of inductor's code generator, for the whole process while the context is open (a
    compile in another thread meanwhile gets it too); the numbers computed are the same. Used around
    each compile of a :class:`~splitattn.deploy.quantization.QuantizedModel`'s program.

    Yields:
        Nothing.
    """
    try:  # inductor's private code generator: any torch whose layout differs gets the no-op
        import torch._inductor.config as inductor_config
        from torch._inductor.codegen import cpp as cpp_codegen
        from torch._inductor.custom_graph_pass import CustomGraphPass

        kernel = cpp_codegen.CppVecKernel
        original = kernel._get_vec_load_line
        isa = cpp_codegen.cpu_vec_isa.pick_vec_isa()
        usable = bool(isa) and isa.bit_width() == 256 and not inductor_config.post_grad_custom_post_pass
    except (ImportError, AttributeError):
        usable = False
    if not usable:
        yield
        return

    def load_line(self: Any, var: str, index: Any, dtype: torch.dtype, load_mask: Any = None) -> str:
        if self.num_elems != 8 or dtype not in (torch.uint8, torch.int8):
            return original(self, var, index, dtype, load_mask)
        if load_mask is None:
            return _load8_line(original(self, var, index, dtype))
        if not load_mask.is_vec:  # one bool for all lanes (a pooling window's padding): load all or none
            line = _load8_line(original(self, var, index, dtype))
            if line.startswith("at::vec::Vectorized<"):
                return f"({load_mask} ? {line} : {self._get_vec_type(dtype)}(0))"
        return original(self, var, index, dtype, load_mask)

    key = type("_SplitAttnInt8Loads", (_CacheKey, CustomGraphPass), {})()
    kernel._get_vec_load_line = load_line
    try:
        with inductor_config.patch(post_grad_custom_post_pass=key):
            yield
    finally:
        kernel._get_vec_load_line = original
