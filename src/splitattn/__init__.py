"""splitattn: ResNeSt (Split-Attention Networks) for PyTorch."""

from .factory import create_model
from .inference import optimize_for_inference
from .models import ModelCfg, ResNeSt, get_model_cfg, list_models, set_drop_block_prob
from .weights import WeightsError, load_pretrained, save_weights

__version__ = "0.1.0"

__all__ = [
    "ModelCfg",
    "ResNeSt",
    "WeightsError",
    "__version__",
    "create_model",
    "get_model_cfg",
    "list_models",
    "load_pretrained",
    "optimize_for_inference",
    "save_weights",
    "set_drop_block_prob",
]
