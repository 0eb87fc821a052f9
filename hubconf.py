"""torch.hub entry points: ``torch.hub.load("<owner>/<repo>", "resnest50", pretrained=True)``.

One entry point per registered model, under its own name and each timm alias (``torch.hub.list`` shows
them all). Each takes ``create_model``'s arguments: ``pretrained``, ``num_classes``, ``in_chans``,
``features_only``, ``out_indices``, ``output_stride`` and the architecture arguments. From a checkout,
``torch.hub.load(".", "resnest50", source="local")`` works without installing splitattn: ``./src`` is used
when the package is not installed.
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
from collections.abc import Callable as _Callable
from pathlib import Path as _Path
from types import ModuleType as _ModuleType
from typing import Any as _Any

# What torch.hub checks (importlib.util.find_spec) before loading an entry point: splitattn's requirements.
dependencies = ["torch", "torchvision", "safetensors", "numpy", "yaml", "rich"]


def _splitattn() -> _ModuleType:
    try:
        return _importlib.import_module("splitattn")
    except ImportError:
        src = _Path(__file__).resolve().parent / "src"
        if not (src / "splitattn" / "__init__.py").is_file():
            raise
        _sys.path.insert(0, str(src))
        return _importlib.import_module("splitattn")


_sa = _splitattn()


def _entry(model_name: str, canonical: str) -> _Callable[..., _Any]:
    def entry(pretrained: bool = False, **kwargs: _Any) -> _Any:
        return _sa.create_model(model_name, pretrained=pretrained, **kwargs)

    cfg = _sa.get_model_cfg(canonical)
    alias = "" if model_name == canonical else f" (timm's name for {canonical})"
    top1 = f", {cfg.top1}% ImageNet top-1" if cfg.top1 is not None else ""
    entry.__name__ = entry.__qualname__ = model_name
    entry.__doc__ = (
        f"{model_name}{alias}: ResNeSt at {cfg.input_size[-1]} px{top1}.\n\n"
        "Args:\n"
        "    pretrained: True for the released weights (SHA-256 checked), or a path / URL.\n"
        "    **kwargs: splitattn.create_model's arguments (num_classes, in_chans, features_only...).\n\n"
        "Returns:\n"
        "    The model, (B, in_chans, H, W) -> (B, num_classes).\n"
    )
    return entry


for _canonical in _sa.list_models():
    for _name in (_canonical, *_sa.get_model_cfg(_canonical).aliases):
        globals()[_name] = _entry(_name, _canonical)
del _canonical, _name
