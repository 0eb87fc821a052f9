"""The registered ResNeSt variants: one :class:`ModelCfg` each, and the ``pretrained_cfg`` of each name.

Official names carry the official release's evaluation recipe (bicubic, crop ``size / (size + 32)``);
timm's names (the aliases, and resnest14d / resnest26d, which only timm has) carry timm's values for that
name, as ``timm.models.get_pretrained_cfg(name)`` gives them, so that ``create_model("resnest50d")``
preprocesses as ``timm.create_model("resnest50d")`` does. ``hf_hub_id`` names the Hugging Face Hub copy of
the same weights where timm hosts one.
"""

from __future__ import annotations

from typing import Any

from ._registry import ModelCfg, register_model
from .resnest import ResNeSt

_OFFICIAL_URL = "https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step1/{}-{}.pth"
_TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-resnest/{}-{}.pth"
_PAPER = dict(paper_name="ResNeSt: Split-Attention Networks", paper_ids="arXiv:2004.08955",
              license="apache-2.0")
_OFFICIAL_ORIGIN = "https://github.com/zhanghang1989/ResNeSt"


def _official(name: str, sha: str, top1: float, params: int, gmacs: float, size: int = 224,
              aliases: tuple[str, ...] = (), **arch: Any) -> ModelCfg:
    crop_pct = size / (size + 32)  # PAPER.md: crop / (crop + 32), exact (0.888... for 256)
    return ModelCfg(
        name=name, arch=arch, input_size=(3, size, size), crop_pct=crop_pct, interpolation="bicubic",
        url=_OFFICIAL_URL.format(name, sha), hash_prefix=sha, top1=top1, params=params, gmacs=gmacs,
        aliases=aliases, source="official ResNeSt release (Zhang et al.)",
    )


def _timm(name: str, tag: str = "in1k", **values: Any) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` values for ``name`` (timm/models/resnest.py ``default_cfgs``)."""
    return {"hf_hub_id": f"timm/{name}.{tag}", "tag": tag, "interpolation": "bilinear", "crop_pct": 0.875,
            **values}


_R50 = dict(layers=(3, 4, 6, 3), stem_width=32)
_FAST = dict(layers=(3, 4, 6, 3), stem_width=32, avd_first=True)
_GLUON = dict(origin_url="https://github.com/dmlc/gluon-cv", **_PAPER)

# (ModelCfg, {name: pretrained_cfg values}); "*" applies to every name of the model.
_VARIANTS: list[tuple[ModelCfg, dict[str, dict[str, Any]]]] = [
    (ModelCfg(name="resnest14d", arch=dict(layers=(1, 1, 1, 1), stem_width=32, radix=2), crop_pct=0.875,
              interpolation="bilinear", url=_TIMM_URL.format("gluon_resnest14", "9c8fe254"),
              hash_prefix="9c8fe254", top1=75.51, params=10_611_688, gmacs=2.76,
              source="GluonCV weights ported by timm"),
     {"resnest14d": {**_timm("resnest14d", "gluon_in1k"), **_GLUON}}),
    (ModelCfg(name="resnest26d", arch=dict(layers=(2, 2, 2, 2), stem_width=32, radix=2), crop_pct=0.875,
              interpolation="bilinear", url=_TIMM_URL.format("gluon_resnest26", "50eb607c"),
              hash_prefix="50eb607c", top1=78.48, params=17_069_448, gmacs=3.64,
              source="GluonCV weights ported by timm"),
     {"resnest26d": {**_timm("resnest26d", "gluon_in1k"), **_GLUON}}),
    (_official("resnest50", "528c19ca", 81.03, 27_483_240, 5.40, aliases=("resnest50d",), radix=2, **_R50),
     {"resnest50d": _timm("resnest50d"), "*": dict(hf_hub_id="timm/resnest50d.in1k")}),
    (_official("resnest101", "22405ba7", 82.83, 48_275_016, 13.38, 256, aliases=("resnest101e",),
               layers=(3, 4, 23, 3), stem_width=64, radix=2),
     {"resnest101e": _timm("resnest101e"), "*": dict(hf_hub_id="timm/resnest101e.in1k")}),
    (_official("resnest200", "75117900", 83.84, 70_201_544, 35.70, 320, aliases=("resnest200e",),
               layers=(3, 24, 36, 3), stem_width=64, radix=2),
     {"resnest200e": _timm("resnest200e", interpolation="bicubic", crop_pct=0.909),
      "*": dict(hf_hub_id="timm/resnest200e.in1k")}),
    (_official("resnest269", "0cc87c48", 84.54, 110_929_480, 77.72, 416, aliases=("resnest269e",),
               layers=(3, 30, 48, 8), stem_width=64, radix=2),
     {"resnest269e": _timm("resnest269e", interpolation="bicubic", crop_pct=0.928),
      "*": dict(hf_hub_id="timm/resnest269e.in1k")}),
    (_official("resnest50_fast_1s1x64d", "d8fbf808", 80.33, 26_217_896, 4.36, radix=1, **_FAST), {}),
    (_official("resnest50_fast_2s1x64d", "44938639", 80.53, 27_483_240, 4.36, radix=2, **_FAST), {}),
    (_official("resnest50_fast_4s1x64d", "f74f3fc3", 80.76, 31_912_712, 4.37, radix=4, **_FAST), {}),
    (_official("resnest50_fast_1s2x40d", "32830b84", 80.59, 25_946_680, 4.39, radix=1, cardinality=2,
               base_width=40, **_FAST), {}),
    (_official("resnest50_fast_2s2x40d", "9d126481", 80.61, 26_943_792, 4.40, radix=2, cardinality=2,
               base_width=40, **_FAST), {}),
    (_official("resnest50_fast_4s2x40d", "41d14ed0", 81.14, 30_417_592, 4.41, aliases=("resnest50d_4s2x40d",),
               radix=4, cardinality=2, base_width=40, **_FAST),
     {"resnest50d_4s2x40d": _timm("resnest50d_4s2x40d", interpolation="bicubic"),
      "*": dict(hf_hub_id="timm/resnest50d_4s2x40d.in1k")}),
    (_official("resnest50_fast_1s4x24d", "d4a4f76f", 80.99, 25_677_000, 4.43, aliases=("resnest50d_1s4x24d",),
               radix=1, cardinality=4, base_width=24, **_FAST),
     {"resnest50d_1s4x24d": _timm("resnest50d_1s4x24d", interpolation="bicubic"),
      "*": dict(hf_hub_id="timm/resnest50d_1s4x24d.in1k")}),
]


def _register_all() -> None:
    for cfg, pretrained in _VARIANTS:
        common: dict[str, Any] = dict(
            description=f"{cfg.name}: {cfg.source}, ImageNet-1k top-1 {cfg.top1}% as reported")
        if cfg.source.startswith("official"):
            common.update(tag="in1k", origin_url=_OFFICIAL_ORIGIN, **_PAPER)
        register_model(cfg, ResNeSt, {**pretrained, "*": {**common, **pretrained.get("*", {})}})


_register_all()

__all__: list[str] = []
