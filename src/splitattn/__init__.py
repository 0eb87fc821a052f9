"""splitattn: ResNeSt (Split-Attention Networks) for PyTorch.

The library: models (:func:`create_model`, the detection and segmentation models in
:mod:`splitattn.models`), weights, data (:mod:`splitattn.data`), inference folding, export and evaluation.
The training application is :mod:`splitattn.engine`; the command line is :mod:`splitattn.cli`.
"""

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
from .inference import optimize_for_inference
from .models import ModelCfg, ResNeSt, get_model_cfg, list_models, set_drop_block_prob
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
    "create_model",
    "get_model_cfg",
    "list_models",
    "load_pretrained",
    "optimize_for_inference",
    "resolve_data_config",
    "save_weights",
    "set_drop_block_prob",
]
