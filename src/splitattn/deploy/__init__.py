"""Running a trained model elsewhere: BN folding and fusion (:mod:`.fold`), programs compiled ahead of their
calls (:mod:`.compiled`), ONNX and TorchScript (:mod:`.export`), post-training INT8 (:mod:`.quantization`)
and its file format (:mod:`.int8_format`)."""

from .compiled import CompiledModel, compile_for_inference
from .export import export_onnx, export_onnx_int8, export_torchscript
from .fold import optimize_for_inference
from .quantization import QuantizedModel, calibration_batches, load_quantized, quantize

__all__ = ["CompiledModel", "QuantizedModel", "calibration_batches", "compile_for_inference", "export_onnx",
           "export_onnx_int8", "export_torchscript", "load_quantized", "optimize_for_inference", "quantize"]
