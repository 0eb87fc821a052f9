"""Running a trained model elsewhere: BN folding and fusion (:mod:`.fold`), ONNX and TorchScript
(:mod:`.export`), post-training INT8 (:mod:`.quantize`) and its file format (:mod:`.int8_format`)."""

from .export import export_onnx, export_onnx_int8, export_torchscript
from .fold import optimize_for_inference
from .quantization import QuantizedModel, calibration_batches, load_quantized, quantize

__all__ = ["QuantizedModel", "calibration_batches", "export_onnx", "export_onnx_int8", "export_torchscript",
           "load_quantized", "optimize_for_inference", "quantize"]
