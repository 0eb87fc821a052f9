"""Post-training static INT8 inference on x86 CPUs: torch.export + torchao's PT2E quantizer + inductor.

:func:`quantize` captures a float model with ``torch.export`` (dynamic batch axis), annotates it with
torchao's ``X86InductorQuantizer`` (weights int8 per output channel, symmetric; activations uint8 per
tensor, affine, ranges from histogram observers over the calibration batches), calibrates and converts
it. The result, a :class:`QuantizedModel`, holds the quantized program (quantize/dequantize ops around
float ops) and compiles it with inductor and its freezing (one program per batch size, called without
dynamo), which turns each dequantize -> conv -> (add) -> (ReLU) -> quantize chain into one oneDNN INT8
convolution (VNNI ``vpdpbusd``) with pre-packed weights. The Split-Attention pooling, r-softmax and
weighted sum compute in fp32 from the grouped conv's INT8 output (:mod:`splitattn.deploy.int8_fusion`): no
map goes through memory in float between two convs.

:meth:`QuantizedModel.save` writes tensors and JSON only (:mod:`splitattn.deploy.int8_format`): the program's
constants in safetensors, the float model's record, the quantization settings and each quantize op's scale
and zero point. :func:`load_quantized` rebuilds the program from the architecture (export, prepare,
convert) and binds the stored values into it, checking that it reads exactly the stored tensors: nothing
in the file is unpickled or deserialised as a program. :meth:`QuantizedModel.export_program` writes a
``torch.export`` ``.pt2`` for deployment runtimes; splitattn never loads one.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.imagefolder import IMG_EXTENSIONS, load_rgb
from ..data.preprocessing import resolve_data_config
from ..data.transforms import create_eval_transform
from ..errors import EvalOnlyError, InputError, MissingDependencyError, MissingFileError, require
from ..models._factory import build_model
from ..models._spec import ModelSpec
from ..models._weights import file_problem
from ..utils.fileio import atomic_write
from .compiled import ProgramsByBatch, capture, check_batch, compile_graph
from .cpu_features import INT8_FLAGS, cpu_flags, int8_dot_product, int8_support_problem, no_dot_product_note
from .int8_format import FORMAT, VERSION, bind_graph_state, read_int8_file, write_int8_file
from .int8_fusion import attention_as_linear, attention_mlp_convs, fast_int8_loads, x86_quantizer
from .int8_program import program_graph

__all__ = [
    "INT8_FLAGS", "QuantizedModel", "calibration_batches", "check_int8_support", "cpu_flags",
    "default_reduce_range", "int8_dot_product", "int8_support_problem", "load_quantized", "quantize",
]

log = logging.getLogger("splitattn")


def default_reduce_range(reduce_range: bool | None, remedy: str) -> bool:
    """``reduce_range`` if given, else whether this CPU lacks an int8 dot-product instruction (7-bit
    ranges keep its 16-bit sums from saturating), warning with ``remedy`` when it does."""
    if reduce_range is not None:
        return reduce_range
    if int8_dot_product():
        return False
    log.warning("%s; %s", no_dot_product_note(), remedy)
    return True


def _import_torchao() -> Any:
    """torchao's PT2E quantization modules; importing the quantizer registers its inductor passes."""
    require("torchao", "int8", "INT8 quantization (splitattn.quantize)")
    # torchao's import logs a warning of torch's pytree registry about one of its enums; not ours to fix.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
        x86 = importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    except ImportError as e:
        raise MissingDependencyError(
            f"INT8 quantization needs torchao's PT2E quantizer (torchao.quantization.pt2e), which this "
            f"torchao cannot import ({e}); pip install -U torchao"
        ) from e
    finally:
        pytree_log.setLevel(level)
    return pt2e, x86


def check_int8_support() -> tuple[Any, Any]:
    """Raise :class:`MissingDependencyError` naming what is missing for the INT8 kernels here.

    Returns:
        ``(quantize_pt2e module, x86_inductor_quantizer module)`` of torchao.
    """
    problem = int8_support_problem()
    if problem is not None:
        raise MissingDependencyError(problem)
    return _import_torchao()


def _as_images(batch: Any, index: int) -> torch.Tensor:
    """The image tensor of a calibration batch: a tensor, or the first item of a tuple/list."""
    x = batch[0] if isinstance(batch, tuple | list) and batch else batch
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point() or x.shape[0] == 0:
        what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
        raise InputError(f"calibration batch {index} is {what}; expected float images (B, C, H, W) with "
                         "B >= 1, or (images, targets) pairs as a DataLoader yields them")
    x = x.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"calibration batch {index} holds NaN or infinite values "
                         f"({int((~torch.isfinite(x)).sum())} of {x.numel()}); calibrate on real, "
                         "preprocessed images")
    return x


def _calibration_stream(calibration: Iterable[Any], max_batches: int | None) -> Iterator[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    shape = None
    for i, batch in enumerate(calibration):
        if max_batches is not None and i >= max_batches:
            return
        x = _as_images(batch, i)
        if shape is None:
            shape = x.shape[1:]
        elif x.shape[1:] != shape:
            raise InputError(f"calibration batch {i} has images of shape {tuple(x.shape[1:])}, batch 0 "
                             f"{tuple(shape)}: an INT8 model is built for one input size")
        yield x


def quantize(
    model: nn.Module,
    calibration: Iterable[Any],
    backend: str = "x86",
    *,
    max_batches: int | None = None,
    attention: str = "fp32",
    compile: bool = True,
    reduce_range: bool | None = None,
) -> QuantizedModel:
    """Post-training static INT8 quantization of a float classifier for x86 CPUs.

    Args:
        model: any ``(B, C, H, W) -> (B, K)`` float model that ``torch.export`` can capture: every zoo
            model (fine-tuned or not, BatchNorms folded by the quantizer), timm and torchvision CNNs. It
            is not modified (its train/eval mode is restored).
        calibration: an iterable of input batches ``(B, C, H, W)`` (float, preprocessed as for
            evaluation), or of ``(images, targets)`` pairs such as a ``DataLoader`` yields; a few hundred
            representative images are enough. All batches share one ``(C, H, W)``.
        backend: ``"x86"`` (oneDNN INT8 through inductor), the only one so far.
        max_batches: use at most this many batches of ``calibration``.
        attention: ``"fp32"`` keeps the Split-Attention MLP (``fc1``/``fc2`` on the pooled
            ``(B, C, 1, 1)`` vector) in fp32 and runs it as linear layers (pre-packed GEMMs: a oneDNN conv
            call on such a vector costs several times more, whatever its precision); ``"int8"``
            quantizes those two convs like every other. The r-softmax and the weighted sum are fp32
            either way.
        compile: compile with inductor and its freezing (the INT8 kernels); ``False`` runs
            the quantized program as it is (quantize/dequantize around fp32 ops: the same numbers
            within rounding, for checks only, slower than fp32).
        reduce_range: quantize activations to 7 bits (0..127) instead of 8, which keeps the 16-bit
            sums of CPUs without an int8 dot-product instruction from saturating. ``None``: on exactly
            those CPUs (:func:`int8_dot_product`), with a warning.

    Returns:
        An eval-only :class:`QuantizedModel`: float ``(B, C, H, W)`` in, float32 logits ``(B, K)`` out,
        for the calibration's ``(C, H, W)`` and any batch size.

    Raises:
        MissingDependencyError: torchao is missing, or (``compile=True``) this machine / torch build
            cannot run oneDNN's INT8 kernels (see :func:`int8_support_problem`).
        InputError: an unknown ``backend`` or ``attention``, an empty or malformed calibration set.
    """
    if backend != "x86":
        raise InputError(f"unknown INT8 backend {backend!r}; the one supported is 'x86' (oneDNN, inductor)")
    if attention not in ("int8", "fp32"):
        raise InputError(f"attention must be 'int8' or 'fp32', got {attention!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"quantize expects an nn.Module, got {type(model).__name__}")
    # The reference graph (compile=False) runs on any CPU; only the INT8 kernels need x86 and oneDNN.
    pt2e, x86 = check_int8_support() if compile else _import_torchao()
    reduce_range = default_reduce_range(
        reduce_range, "activations are quantized to 7 bits to keep its 16-bit sums from saturating")
    stream = _calibration_stream(calibration, max_batches)
    first = next(stream, None)
    if first is None:
        raise InputError("the calibration set is empty; pass an iterable of (B, C, H, W) image batches")
    settings = {
        "format": FORMAT, "version": VERSION, "backend": backend, "input_shape": list(first.shape[1:]),
        "calibration_images": 0, "attention": attention, "reduce_range": reduce_range,
        "model": _model_name(model), "torch": torch.__version__, "torchao": _torchao_version(),
        "int8_split": True, "attention_linear": True,
    }
    converted, settings["calibration_images"] = _convert(model, _chain(first, stream), settings, pt2e, x86)
    spec = _model_spec(model)
    return QuantizedModel(converted, settings, compile=compile, spec=spec)


def _torchao_version() -> str:
    return str(getattr(importlib.import_module("torchao"), "__version__", "unknown"))


def _model_spec(model: nn.Module) -> ModelSpec | None:
    """The record of a splitattn model with its eval preprocessing, or None (a torchvision model...)."""
    if getattr(model, "model_cfg", None) is None:
        return None

    try:
        return ModelSpec.from_model(model, data_config=resolve_data_config(model).to_dict())
    except InputError as e:  # e.g. built with a norm layer class: its file then needs load_quantized(model=)
        log.warning("the INT8 model's file will not record its architecture (%s)", e)
        return None


def _convert(model: nn.Module, batches: Iterable[torch.Tensor], settings: Mapping[str, Any], pt2e: Any,
             x86: Any) -> tuple[torch.fx.GraphModule, int]:
    """``(quantized graph of model, images observed)``: captured, prepared as ``settings`` say (``attention``,
    ``reduce_range``; ``int8_split``, ``attention_linear``: absent in older files, which rebuild without),
    observed, converted."""
    batches = iter(batches)
    first = next(batches)
    graph = capture(model, first)
    config = x86.get_default_x86_inductor_quantization_config(reduce_range=settings["reduce_range"])
    quantizer = x86_quantizer(x86, model, config, split_outputs=settings.get("int8_split", False))
    float_mlp = attention_mlp_convs(model) if settings["attention"] == "fp32" else []
    for name in float_mlp:
        quantizer.set_module_name_qconfig(name, None)
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    n_images = 0
    with torch.no_grad():
        for x in _chain(first, batches):
            prepared(x)
            n_images += x.shape[0]
        converted = pt2e.convert_pt2e(prepared)
    if float_mlp and settings.get("attention_linear", False):
        attention_as_linear(converted, float_mlp)
    return converted, n_images


def _model_name(model: nn.Module) -> str:
    cfg, pcfg = getattr(model, "model_cfg", None), getattr(model, "pretrained_cfg", None)
    name = getattr(cfg, "name", None) or (pcfg.get("architecture") if isinstance(pcfg, dict) else None)
    return str(name or type(model).__name__)


def _chain(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest


class QuantizedModel(nn.Module):
    """An eval-only INT8 classifier built by :func:`quantize` or :func:`load_quantized`.

    The first call of each new batch size compiles it (inductor with freezing: tens of seconds for a
    ResNet-50-sized model on 2 cores); a batch smaller than one already compiled runs padded to that size
    instead of compiling again. ``.train()`` raises :class:`~splitattn.errors.EvalOnlyError`.

    Args:
        graph_module: the quantized graph (quantize/dequantize ops around float ops, dynamic batch axis)
            of torchao's ``convert_pt2e``.
        info: the quantization settings :func:`quantize` recorded (``input_shape``, ``calibration_images``,
            ``attention``, ``reduce_range``, ``model``...).
        compile: run through inductor (the INT8 kernels) or the graph's reference ops as they are.
        spec: the float model's record (what :func:`load_quantized` rebuilds the program from), or None for
            a model splitattn did not build.

    Attributes:
        graph_module: the quantized reference graph.
        info: the settings; ``input_shape`` is ``[C, H, W]``.
        spec: the float model's record, or None.

    Shape:
        ``(B, C, H, W)`` float (any floating dtype, any memory format) -> ``(B, K)`` float32.
    """

    def __init__(self, graph_module: nn.Module, info: dict[str, Any], compile: bool = True,
                 spec: ModelSpec | None = None) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.spec = spec
        self.info = dict(info)
        self.compile = compile
        self._programs = ProgramsByBatch(lambda x: _compile_program(self.graph_module, x))
        self.training = False

    def train(self, mode: bool = True) -> QuantizedModel:
        """``train(False)`` / ``eval()``: no-ops (the model is eval-only); ``train(True)`` raises."""
        if mode:
            raise EvalOnlyError("this model was built by splitattn.quantize: it is an INT8 inference program "
                                "and cannot train; train the float model and quantize it again")
        return self

    def extra_repr(self) -> str:
        return (f"model={self.info.get('model')}, input_shape={tuple(self.info['input_shape'])}, "
                f"backend={self.info.get('backend')}, attention={self.info.get('attention')}, "
                f"compile={self.compile}")

    def _check(self, x: torch.Tensor) -> None:
        check_batch(x, self.info["input_shape"], "INT8 model",
                    "quantize again with calibration batches of the size you need",
                    note=" (the calibration's size)")
        if not x.is_floating_point():
            raise InputError(f"expected a floating-point input, got {x.dtype}: convert images to float and "
                             "normalise them as for the float model")
        if x.device.type != "cpu":
            raise InputError(f"INT8 models run on the CPU; got an input on {x.device}: pass x.cpu()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K)`` float32 logits."""
        self._check(x)
        x = x.to(torch.float32).contiguous()
        if not self.compile:
            with torch.no_grad():
                return self.graph_module(x)
        # Padding a smaller batch is exact: static activation scales, folded BatchNorms.
        return self._programs(x)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as tensors and JSON (:mod:`splitattn.deploy.int8_format`), atomically; load it with
        :func:`load_quantized`. The file is about a quarter of the float weights' size."""
        return write_int8_file(path, self.graph_module, self.info, self.spec)

    def export_program(self, path: str | os.PathLike) -> Path:
        """Write the quantized program as a ``torch.export`` ``.pt2`` archive, for deployment runtimes
        (``torch.export.load``, AOTInductor). splitattn never loads one: use :meth:`save` for that."""
        example = torch.zeros(2, *self.info["input_shape"])
        with torch.no_grad():
            program = torch.export.export(self.graph_module, (example,),
                                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        buf = io.BytesIO()
        torch.export.save(program, buf)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def _compile_program(graph_module: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The INT8 program of ``graph_module`` for inputs of ``x``'s shape (float32, contiguous): inductor with
    freezing (:func:`~splitattn.deploy.compiled.compile_graph`: the weights become constants, which the INT8
    convs pre-pack) and :func:`~splitattn.deploy.int8_fusion.fast_int8_loads`, on the rewritten copy of the
    graph (:func:`~splitattn.deploy.int8_program.program_graph`), called without dynamo.
    """
    return compile_graph(program_graph(graph_module)[0], x, fast_int8_loads)


def load_quantized(path: str | os.PathLike, compile: bool = True, model: nn.Module | None = None,
                   ) -> QuantizedModel:
    """Load a model written by :meth:`QuantizedModel.save`, rebuilding its program from the architecture.

    The file holds tensors and JSON only. The float model is rebuilt from its record (or is ``model``),
    captured and prepared as the settings say, and converted; the stored constants and quantization
    parameters then replace the rebuilt ones, after checking that the program reads exactly the stored
    tensors. The result computes what the saved model computed, to the bit. Rebuilding costs about what
    :func:`quantize` costs without its calibration.

    Args:
        path: the file (``.safetensors``).
        compile: as in :func:`quantize`; ``False`` needs no INT8-capable CPU.
        model: the float model of the same architecture (any weights), for a file of a model splitattn
            did not build (a torchvision ResNet...); a splitattn model's file rebuilds its own.

    Raises:
        MissingFileError: ``path`` does not exist.
        WeightsError: the file is a ``.pt2`` archive (never opened), unreadable, has invalid metadata, or
            does not fit the rebuilt program (another torch / torchao version); the message names the file.
        InputError: a file of a model splitattn did not build, without ``model``.
        MissingDependencyError: torchao is missing, or ``compile=True`` on a machine without oneDNN's INT8
            kernels (see :func:`int8_support_problem`).
    """
    path = Path(path)
    if problem := file_problem(path):
        raise MissingFileError(f"INT8 model file {path} {problem}")
    pt2e, x86 = check_int8_support() if compile else _import_torchao()
    stored = read_int8_file(path)
    settings = stored.settings
    if model is None:
        if stored.spec is None:
            raise InputError(f"INT8 model file {path} holds a {settings.get('model')}, which splitattn does "
                             "not build: pass model=<that float model> (any weights) to rebuild its program")
        model = build_model(stored.spec)
    example = torch.zeros(2, *settings["input_shape"])
    graph, _ = _convert(model, [example], settings, pt2e, x86)
    bind_graph_state(graph, stored, path)
    if compile and not settings["reduce_range"] and not int8_dot_product():
        log.warning("%s; %s was calibrated for 8-bit activations, which can saturate here: quantize the "
                    "float model on this machine (7-bit activations) if its accuracy drops",
                    no_dot_product_note(), path)
    return QuantizedModel(graph, settings, compile=compile, spec=stored.spec)


def calibration_batches(folder: str | os.PathLike, data_cfg: Any, num_images: int = 512,
                        batch_size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``num_images`` images of ``folder`` (any depth, e.g. an ImageFolder's train split), chosen at
    random with ``seed``, preprocessed with the eval transform of ``data_cfg``.

    Args:
        folder: a folder of images.
        data_cfg: what :func:`~splitattn.data.transforms.create_eval_transform` takes (model, name,
            ``DataConfig``).
        num_images: how many images.
        batch_size: images per returned batch.
        seed: which images.

    Returns:
        Batches ``(b, 3, crop, crop)`` float32, ``b <= batch_size``.

    Raises:
        MissingFileError: ``folder`` does not exist. InputError: it holds no image.
    """

    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"calibration folder {root} does not exist")
    if num_images < 1 or batch_size < 1:
        raise InputError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise InputError(f"calibration folder {root} holds no image ({', '.join(IMG_EXTENSIONS)})")
    files = random.Random(seed).sample(files, min(num_images, len(files)))
    transform = create_eval_transform(data_cfg)
    images = [transform(load_rgb(p)) for p in files]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
