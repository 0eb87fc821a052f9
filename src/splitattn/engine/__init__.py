"""Training engine: checkpoints, distributed set-up, mixed precision, progress and metrics."""

from ..amp import autocast, make_grad_scaler
from ..checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from ..distributed import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed
from ..errors import CheckpointError
from .progress import EpochProgress, MetricsLogger, read_metrics

__all__ = [
    "CheckpointError",
    "DistInfo",
    "EpochProgress",
    "MetricsLogger",
    "all_reduce_mean",
    "autocast",
    "cleanup_distributed",
    "find_latest_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "make_grad_scaler",
    "read_metrics",
    "save_checkpoint",
]
