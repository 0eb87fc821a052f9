"""Export to ONNX (dynamic batch axis) and TorchScript, with a numerical check against PyTorch.

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) when this torch
still ships it: ~3 s for resnest14d against ~20 s for the dynamo exporter, with the same graph; the dynamo
exporter (``dynamo=True``, needs onnxscript) is used otherwise or on request. Either way the batch axis
is dynamic: a model exported at batch 2 runs at any batch size in onnxruntime.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .fileio import atomic_write

log = logging.getLogger("splitattn")

__all__ = ["export_onnx", "export_torchscript", "onnx_max_abs_diff", "torchscript_max_abs_diff"]

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
