"""The training application: one :class:`Trainer` loop for every task, its config system and demo.

The library (everything in ``splitattn`` outside ``engine`` and ``cli``) never imports this package.
"""

from .config import (
    ClassificationConfig,
    DetectionConfig,
    RunConfig,
    SegmentationConfig,
    load_config,
    parse_override,
    save_config,
)
from .plot import read_metrics
from .progress import EpochProgress, MetricsLogger
from .tasks import ClassificationTask, DetectionTask, SegmentationTask, Task, create_task
from .trainer import Trainer, evaluate_checkpoint, train

__all__ = [
    "ClassificationConfig",
    "ClassificationTask",
    "DetectionConfig",
    "DetectionTask",
    "EpochProgress",
    "MetricsLogger",
    "RunConfig",
    "SegmentationConfig",
    "SegmentationTask",
    "Task",
    "Trainer",
    "create_task",
    "evaluate_checkpoint",
    "load_config",
    "parse_override",
    "read_metrics",
    "save_config",
    "train",
]
