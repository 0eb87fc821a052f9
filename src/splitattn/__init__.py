"""splitattn: ResNeSt (Split-Attention Networks) for PyTorch.

The library: models (:func:`create_model`, the detection and segmentation models in
:mod:`splitattn.models`), weights, data (:mod:`splitattn.data`), inference folding, export and evaluation.
The training application is :mod:`splitattn.engine`; the command line is :mod:`splitattn.cli`.
"""

from .data.preprocessing import DataConfig, resolve_data_config
from .deploy import compile_for_inference, load_quantized, optimize_for_inference, quantize
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    SplitAttnError,
    TrainingDivergedError,
    WeightsError,
)
from .explain import attention_maps
from .models import (
    ModelCfg,
    ResNeSt,
    create_model,
    get_model_cfg,
    get_pretrained_cfg,
    list_models,
    load_pretrained,
    save_pretrained,
    save_weights,
    set_drop_block_prob,
)

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
    "compile_for_inference",
    "create_model",
    "get_model_cfg",
    "get_pretrained_cfg",
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
