"""Inference programs compiled ahead of their calls: inductor with freezing, one program per batch size,
called without dynamo.

``torch.compile`` runs a compiled model behind dynamo's guards: every call checks the input, each
parameter (one guard per frozen weight) and the global state it was traced under, and a change of that
state (``torch.use_deterministic_algorithms``...) or of the batch size compiles again, up to dynamo's
recompile limit; so does any call after a strict ``torch.export``, which empties dynamo's cache. A program for
one input size needs none of that. :class:`CompiledModel` captures a float
model once with ``torch.export`` (dynamic batch axis) and hands the graph to inductor directly
(``torch._inductor.compile``) at the first call of each batch size, with its freezing: the weights become
constants, which oneDNN's convolutions pre-pack and into which the BatchNorms fold. A smaller batch runs
padded to a size already compiled. :class:`~splitattn.deploy.quantization.QuantizedModel` runs its INT8
program the same way (:class:`ProgramsByBatch`, :func:`capture`, :data:`INDUCTOR_OPTIONS`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import EvalOnlyError, InputError
from ..layers.fused_conv import exporting_for_inductor

__all__ = ["INDUCTOR_OPTIONS", "CompiledModel", "ProgramsByBatch", "capture", "check_batch",
           "compile_for_inference", "compile_graph"]

log = logging.getLogger("splitattn")

Program = Callable[[torch.Tensor], torch.Tensor]

INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": False, "size_asserts": False, "alignment_asserts": False,
                    "scalar_asserts": False}
"""How the programs compile: freezing folds the weights into oneDNN's pre-packed convs. The ``*_asserts`` are
inductor's checks, in the Python wrapper, that each oneDNN call returned the layout its lowering predicted:
two calls per conv at every step, which inductor's C++ (AOTInductor) wrapper also leaves out unless asked;
the tests compare the compiled programs with the captured graphs instead. ``cpp_wrapper=True`` (inductor's
C++ wrapper, no Python line per kernel) runs resnest50 INT8 faster at batch 1 but doubles the first call's
compile time; it is off (figures in benchmarks/RESULTS.md, ``benchmarks/int8_compile_ab.py``)."""


def capture(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``model`` in eval mode as an exported graph with a dynamic batch axis (its mode is restored).

    Args:
        model: a module ``(B, ...) -> tensor``.
        example: an input of ``model``; a batch of 1 is expanded to 2 (a batch of 1 would specialise the
            exported batch axis to 1).

    Returns:
        The unlifted graph module of the export (parameters and buffers as attributes).
    """
    if example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).clone(memory_format=torch.preserve_format)
    shapes = ({0: torch.export.Dim("batch", min=1)},)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                # Strict (dynamo) capture names every call of a module apart; the INT8 quantizer groups the
                # nodes of a non-strict capture by module, which fails on a module called several times
                # (torchvision's ResNet calls each block's one ReLU three times).
                program = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=True)
            except Exception as e:  # noqa: BLE001 (dynamo rejects some Python; the non-strict tracer may not)
                log.info("strict torch.export failed (%s); capturing the model non-strict", e)
                program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    finally:
        model.train(was_training)
    return program.module()


def compile_graph(graph: nn.Module, x: torch.Tensor, context: Callable[[], Any] = contextlib.nullcontext,
                  ) -> Program:
    """Inductor's program of ``graph`` for inputs of ``x``'s shape, strides and dtype, with
    :data:`INDUCTOR_OPTIONS` (inside ``context()``, e.g. more of inductor's config). The program skips
    dynamo: it checks nothing, so call it only with inputs like ``x``. Call under ``torch.no_grad()``.

    ``graph`` is not modified: inductor compiles a copy of its nodes over the same constants (compiling
    marks the module it is given, and a second batch size would then fail on the first one's marks).
    """
    import torch._inductor.config as inductor_config

    fresh = torch.fx.GraphModule(graph, copy.deepcopy(graph.graph))
    with inductor_config.patch(INDUCTOR_OPTIONS), context():
        return torch._inductor.compile(fresh, [x])


def check_batch(x: Any, input_size: Sequence[int], model: str, remedy: str, note: str = "") -> None:
    """Raise :class:`InputError` unless ``x`` is a ``(B, *input_size)`` tensor with ``B >= 1``: the inputs a
    program of one input size takes. The message names ``model`` (``"INT8 model"``), the size (with
    ``note``, e.g. where it comes from), what ``x`` is, and ``remedy`` besides resizing the input."""
    want = tuple(input_size)
    if not isinstance(x, torch.Tensor) or x.dim() != 1 + len(want) or tuple(x.shape[1:]) != want \
            or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"this {model} takes (B, {', '.join(map(str, want))}) inputs with B >= 1{note}, got "
                         f"{got}; resize the input, or {remedy}")


class ProgramsByBatch(dict[int, Program]):
    """Compiled programs of one graph by batch size: calling it runs ``x`` through the program of its batch
    size, compiled on first use by ``compile_fn(x)``, or through a larger one on ``x`` padded with zeros
    (each image of an eval-mode CNN is computed on its own).

    Args:
        compile_fn: ``x -> program`` for inputs of ``x``'s shape.
    """

    def __init__(self, compile_fn: Callable[[torch.Tensor], Program]) -> None:
        super().__init__()
        self.compile_fn = compile_fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` -> the program's ``(B, ...)`` output, without autograd."""
        b = x.shape[0]
        pad_to = min((s for s in self if s > b), default=None)
        if b not in self and pad_to is not None:
            x = torch.cat([x, x.new_zeros(pad_to - b, *x.shape[1:])])
        with torch.no_grad():
            program = self.get(x.shape[0])
            if program is None:
                program = self[x.shape[0]] = self.compile_fn(x)
            return program(x)[:b]


def _float_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if len(dtypes) > 1:
        raise InputError(f"the model holds floating tensors of several dtypes ({sorted(map(str, dtypes))}); "
                         "convert it to one (model.to(torch.bfloat16), or optimize_for_inference(dtype=...))")
    return dtypes.pop() if dtypes else torch.float32


def _device(model: nn.Module) -> torch.device:
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise InputError(f"the model's tensors are on several devices ({sorted(map(str, devices))}); "
                         "move it to one with model.to(device)")
    return devices.pop() if devices else torch.device("cpu")


class CompiledModel(nn.Module):
    """An eval-only float model compiled by inductor with freezing, for one input size, built by
    :func:`compile_for_inference`.

    The first call of each new batch size compiles (tens of seconds for a ResNet-50-sized model on 2
    cores); a smaller batch runs padded to a size already compiled. The weights are those of the model when
    it was captured. ``.train()`` raises :class:`~splitattn.errors.EvalOnlyError`.

    Args:
        graph_module: the model as :func:`capture` exports it (dynamic batch axis).
        input_size: ``(C, H, W)``.
        dtype: the model's floating dtype, which inputs must have.
        memory_format: the layout the programs are compiled for (inputs are converted to it).
        device: the model's device.

    Attributes:
        graph_module: the captured graph.
        input_size, dtype, memory_format, device: as given.

    Shape:
        ``(B, C, H, W)`` of ``dtype`` on ``device`` -> the model's output ``(B, ...)``.
    """

    def __init__(self, graph_module: nn.Module, input_size: Sequence[int], dtype: torch.dtype,
                 memory_format: torch.memory_format, device: torch.device) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.input_size = tuple(int(d) for d in input_size)
        self.dtype, self.memory_format, self.device = dtype, memory_format, torch.device(device)
        self._programs = ProgramsByBatch(lambda x: compile_graph(self.graph_module, x))
        self.training = False

    def train(self, mode: bool = True) -> CompiledModel:
        """``train(False)`` / ``eval()``: no-ops (the model is eval-only); ``train(True)`` raises."""
        if mode:
            raise EvalOnlyError("this model was built by splitattn.compile_for_inference: it is an inference "
                                "program and cannot train; train the float model and compile it again")
        return self

    def extra_repr(self) -> str:
        fmt = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        return (f"input_size={self.input_size}, dtype={str(self.dtype).removeprefix('torch.')}, "
                f"memory_format={fmt}, device={self.device}, compiled_batch_sizes={sorted(self._programs)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> the model's output for ``x``."""
        check_batch(x, self.input_size, "compiled model", "compile the model again for the size you need")
        if x.dtype != self.dtype:
            raise InputError(f"this compiled model takes {self.dtype} inputs (the model's dtype), got "
                             f"{x.dtype}: convert them with x.to({self.dtype})")
        if x.device != self.device:
            raise InputError(f"this compiled model runs on {self.device}; got an input on {x.device}: pass "
                             f"x.to('{self.device}')")
        return self._programs(x.contiguous(memory_format=self.memory_format))


def compile_for_inference(model: nn.Module, input_size: Sequence[int] | None = None, *,
                          channels_last: bool = True) -> CompiledModel:
    """``model`` captured once and compiled by inductor with freezing at the first call of each batch size,
    called without dynamo: the fast route for a fixed input size on the CPU (in bf16 where the CPU has
    AVX512-BF16 or AMX), and on a GPU.

    For a splitattn model, compile the output of
    :func:`~splitattn.deploy.fold.optimize_for_inference`: its Split-Attention MLP is then written as
    products and sums, which inductor fuses with the block's pooling, r-softmax and weighted sum into one
    kernel on the CPU. Any module ``torch.export`` captures (timm, torchvision) compiles as it is.

    Args:
        model: an eval-mode float module ``(B, C, H, W) -> (B, ...)``, all of one floating dtype and on one
            device (its train/eval mode is restored). Inputs must have its dtype.
        input_size: ``(C, H, W)``; ``None``: the ``input_size`` of the model's ``pretrained_cfg``.
        channels_last: compile for channels_last inputs (the fast layout for oneDNN and cuDNN; others are
            converted), else for contiguous ones.

    Returns:
        A :class:`CompiledModel`; the first call of each batch size compiles.

    Raises:
        InputError: not a module, no ``input_size`` to be found, a malformed one, mixed dtypes or devices.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"compile_for_inference expects an nn.Module, got {type(model).__name__}")
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None)
        input_size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if input_size is None:
            raise InputError(f"{type(model).__name__} has no pretrained_cfg['input_size']: pass "
                             "input_size=(C, H, W)")
    if len(input_size) != 3 or not all(isinstance(d, int) and d > 0 for d in input_size):
        raise InputError(f"input_size must be (C, H, W) positive integers, got {tuple(input_size)!r}")
    dtype, device = _float_dtype(model), _device(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    example = torch.zeros(2, *input_size, dtype=dtype, device=device).contiguous(memory_format=fmt)
    with exporting_for_inductor():
        graph = capture(model, example)
    # The export shares the model's tensors; a copy keeps later changes to the model out of the programs
    # compiled for new batch sizes.
    return CompiledModel(copy.deepcopy(graph), input_size, dtype, fmt, device)
