"""splitattn: ResNeSt (Split-Attention Networks) for PyTorch.

The library: models (:func:`create_model`, the detection and segmentation models in
:mod:`splitattn.models`), weights, data (:mod:`splitattn.data`), inference folding, export and evaluation.
The training application is :mod:`splitattn.engine`; the command line is :mod:`splitattn.cli`.
"""

from .attention import attention_maps
from .data.preprocessing import DataConfig, resolve_data_config
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    SplitAttnError,
    TrainingDivergedError,
    WeightsError,
)
from .factory import create_model
from .hub import save_pretrained
from .inference import optimize_for_inference
from .models import ModelCfg, ResNeSt, get_model_cfg, list_models, set_drop_block_prob
from .quantize import load_quantized, quantize
from .weights import load_pretrained, save_weights

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "InputError",
    "ModelCfg",
    "ResNeSt",
    "SplitAttnError",
    "TrainingDivergedError",
    "WeightsError",
    "__version__",
    "attention_maps",
    "create_model",
    "get_model_cfg",
    "list_models",
    "load_pretrained",
    "load_quantized",
    "optimize_for_inference",
    "quantize",
    "resolve_data_config",
    "save_pretrained",
    "save_weights",
    "set_drop_block_prob",
]
