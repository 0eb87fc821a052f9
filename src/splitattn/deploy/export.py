"""Export to ONNX (dynamic batch axis) and TorchScript, with a numerical check against PyTorch.

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) when this torch
still ships it: ~3 s for resnest14d against ~20 s for the dynamo exporter, with the same graph; the dynamo
exporter (``dynamo=True``, needs onnxscript) is used otherwise or on request. Either way the batch axis
is dynamic: a model exported at batch 2 runs at any batch size in onnxruntime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, require
from ..utils.fileio import atomic_write
from .fold import optimize_for_inference
from .quantization import default_reduce_range

log = logging.getLogger("splitattn")

__all__ = ["export_onnx", "export_onnx_int8", "export_torchscript", "onnx_max_abs_diff", "onnx_predict",
           "torchscript_max_abs_diff"]

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _example_input(model: nn.Module, batch_size: int, image_size: int | tuple[int, int]) -> torch.Tensor:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, getattr(model, "in_chans", 3), h, w, generator=gen)
    return x.to(device=p.device, dtype=p.dtype)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 2,
    opset: int = 17,
    dynamo: bool | None = None,
) -> Path:
    """Write ``model`` (put in eval mode) as ONNX with a dynamic batch axis.

    Args:
        model: a classifier ``(B, C, H, W) -> (B, num_classes)``, or any single-output module.
        path: output ``.onnx`` file.
        image_size: spatial size of the example input (fixed in the graph; the batch is dynamic).
        batch_size: batch of the example input (use >= 2 so no dimension is specialised to 1).
        opset: ONNX opset.
        dynamo: ``False`` the TorchScript-based exporter, ``True`` the dynamo exporter, ``None`` the
            TorchScript one if available, else dynamo.

    Returns:
        The written path. Input name ``"input"``, output name ``"output"``, axis 0 named ``"batch"``.
    """
    model = model.eval()
    x = _example_input(model, batch_size, image_size)
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about the Python input checks (shape comparisons) it records as constants.
            warnings.simplefilter("ignore")
            if not dynamo:
                try:
                    torch.onnx.export(
                        model, (x,), tmp, dynamo=False,
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **common,
                    )
                    return
                except (TypeError, RuntimeError) as e:  # legacy exporter removed from this torch
                    if dynamo is False:
                        raise
                    log.info("TorchScript ONNX exporter unavailable (%s); using the dynamo exporter", e)
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False, **common
            )
            program.save(tmp)

    return atomic_write(path, write)


class _CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over image batches: ``get_next()`` -> feed or None."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        x = next(self._it, None)
        if x is None:
            return None
        if isinstance(x, tuple | list):
            x = x[0]
        return {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()}


def export_onnx_int8(
    model: nn.Module,
    path: str | os.PathLike,
    calibration: Iterable[torch.Tensor],
    image_size: int | tuple[int, int] = 224,
    opset: int = 17,
    method: str = "minmax",
    reduce_range: bool | None = None,
) -> Path:
    """Write ``model`` as a statically quantized INT8 ONNX model (QDQ format) for onnxruntime.

    The float model is exported (:func:`export_onnx`, BatchNorms folded first), pre-processed by
    onnxruntime (shape inference, graph optimisation) and quantized with
    ``onnxruntime.quantization.quantize_static``: weights int8 per output channel (symmetric),
    activations uint8 per tensor (affine), ranges from the calibration batches. That is the scheme of
    :func:`splitattn.quantize`; onnxruntime's x86 kernels use VNNI where the CPU has it.

    Args:
        model: a float classifier ``(B, C, H, W) -> (B, K)``.
        path: output ``.onnx`` file (dynamic batch axis, input ``"input"``, output ``"output"``).
        calibration: batches ``(B, C, H, W)`` preprocessed as for evaluation (or ``(images, targets)``).
        image_size: the calibration images' size.
        opset: ONNX opset of the float export (quantization needs >= 13).
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (onnxruntime's ``CalibrationMethod``).
        reduce_range: 7-bit weights, which onnxruntime advises for CPUs without an int8 dot-product
            instruction (VNNI), whose 16-bit intermediate sums saturate otherwise. ``None``: when this
            CPU lacks one (:func:`splitattn.deploy.quantization.default_reduce_range`), with a warning;
            pass it for the CPU the model will run on.

    Returns:
        The written path.
    """

    ort_quant: Any = require("onnxruntime.quantization", "export", "INT8 ONNX export")
    methods = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
    if method not in methods:
        raise InputError(f"method must be one of {sorted(methods)}, got {method!r}")

    reduce_range = default_reduce_range(
        reduce_range, "the INT8 ONNX model gets 7-bit weights so that onnxruntime's kernels do not saturate "
        "here; pass reduce_range=False (--no-reduce-range) for a VNNI machine")
    folded = optimize_for_inference(model, channels_last=False, fuse=False)
    with tempfile.TemporaryDirectory(prefix="splitattn-onnx-int8-") as tmp_dir:
        fp32 = Path(tmp_dir) / "fp32.onnx"
        prepared = Path(tmp_dir) / "prepared.onnx"
        export_onnx(folded, fp32, image_size=image_size, batch_size=2, opset=opset)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(prepared))

        def write(tmp: str) -> None:
            # onnxruntime's quantizer logs every bias copy on the root logger and prints its calibration
            # progress; neither says anything the caller needs.
            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.WARNING))
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    ort_quant.quantize_static(
                        str(prepared), tmp, _CalibrationReader(calibration),
                        quant_format=ort_quant.QuantFormat.QDQ, per_channel=True,
                        activation_type=ort_quant.QuantType.QUInt8, weight_type=ort_quant.QuantType.QInt8,
                        calibrate_method=getattr(ort_quant.CalibrationMethod, methods[method]),
                        reduce_range=reduce_range,
                    )
            finally:
                root.setLevel(level)

        return atomic_write(path, write)


def onnx_predict(path: str | os.PathLike, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """Logits of the ONNX model at ``path`` for the batch ``x`` ``(B, C, H, W)``, run by onnxruntime (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.detach().float().cpu().contiguous().numpy()})[0]
    return torch.from_numpy(out)


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``torch.jit.script(model.eval())`` to ``path`` (any batch size, any image size >= 32).

    Args:
        model: a scriptable module (every splitattn model, folded or not).
        path: output ``.pt`` file, loadable with ``torch.jit.load`` without splitattn installed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(model.eval())
    return atomic_write(path, lambda tmp: scripted.save(tmp))


def onnx_max_abs_diff(
    model: nn.Module, path: str | os.PathLike, batch_size: int = 3, image_size: int | tuple[int, int] = 224
) -> float:
    """Max |onnxruntime(CPU) - model| on a random batch (another size than the export's, to test the
    dynamic axis).

    Args:
        model: the PyTorch model that was exported.
        path: the ``.onnx`` file.
        batch_size: batch to run (``B``); the input is ``(B, C, image_size, image_size)``.
        image_size: the size the model was exported at.
    """
    import onnxruntime as ort

    model = model.eval()
    x = _example_input(model, batch_size, image_size)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.float().cpu().numpy()})[0]
    with torch.no_grad():
        ref = model(x).float().cpu()
    if tuple(got.shape) != tuple(ref.shape):
        raise ValueError(f"onnxruntime output {got.shape} != PyTorch {tuple(ref.shape)}")
    return float((torch.from_numpy(got) - ref).abs().max())


def torchscript_max_abs_diff(
    model: nn.Module, path: str | os.PathLike, batch_size: int = 3, image_size: int | tuple[int, int] = 224
) -> float:
    """Max |torch.jit.load(path) - model| on a random ``(batch_size, C, image_size, image_size)`` batch."""
    model = model.eval()
    x = _example_input(model, batch_size, image_size)
    loaded = torch.jit.load(str(path), map_location=x.device)
    with torch.no_grad():
        return float((loaded(x) - model(x)).abs().max())
