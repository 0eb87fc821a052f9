"""The one feature extractor: a ResNeSt's stem and stages returning named stage outputs.

:class:`FeatureDictNet` returns ``{name: map}``; :class:`FeatureListNet`
(``create_model(features_only=True)``) returns the same maps as a list; the detection / segmentation backbone
(:class:`~splitattn.models.backbone.ResNeStBackbone`) is a FeatureDictNet with detectron2's stage names;
:class:`FeatureGetterNet` (``feature_cls="getter"``) prunes a model and calls its ``forward_intermediates``.
:func:`features_only_model` picks one as timm's ``features_only`` does, and each exposes its levels as a
:class:`FeatureInfo` (timm's interface: ``channels()``, ``reduction()``, ``module_name()``...).
"""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
import copy
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..layers.split_attn import is_tracing, uses_batch_stats
from ._input import check_input, stem_dtype
from ._timm_api import STAGE_HINT, DefaultCfgMixin, StemChannelsMixin, feature_take_indices
from .resnest import set_grad_checkpointing

DEFAULT_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
_MODEL_PARTS = ("in_chans", "feature_info", "conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3",
                "layer4")


FEATURE_CLS = ("list", "dict", "getter")


def _given_indices(out_indices: int | Sequence[int] | None, n: int) -> list[Any]:
    """``out_indices`` as the list timm reads it: None -> all, an int ``k`` -> ``-k..-1``."""
    if out_indices is None:
        return list(range(n))
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        return list(range(-out_indices, 0))
    return list(out_indices) if isinstance(out_indices, Sequence) and not isinstance(out_indices, str) else []


def check_out_indices(out_indices: int | Sequence[int] | None = None, n: int = 5) -> tuple[int, ...]:
    """The feature levels ``out_indices`` selects, within ``0..n-1``, sorted and deduplicated.

    Args:
        out_indices: ``None`` (all ``n``), an int ``k`` (the last ``k``, as timm reads it), or indices,
            negative ones counted from the end (``-1`` = layer4 for a ResNeSt, whose levels are
            0 = stem, 1-4 = layer1-4).
        n: the number of levels.

    Raises:
        ConfigError: an index out of range (naming it), an empty list, or a non-integer.
    """
    hint = STAGE_HINT if n == 5 else ""
    take, _ = feature_take_indices(n, out_indices, "out_indices", hint, ConfigError)
    return tuple(sorted(set(take)))


class FeatureInfo:
    """Channels, reduction and module of each feature level of a model, and the levels a feature
    extractor outputs: the interface of timm's ``FeatureInfo``.

    Indexing, ``len()`` and iteration are over all levels; the accessors with ``idx=None`` give the
    output levels, in output (stage) order.

    Args:
        feature_info: one dict per level with ``num_chs``, ``reduction`` (non-decreasing) and ``module``
            (copied; each gets its ``index``).
        out_indices: the output levels, as :func:`check_out_indices` reads them.

    Raises:
        ConfigError: a level without those keys, a decreasing reduction, or a bad ``out_indices``.
    """

    def __init__(self, feature_info: Sequence[Mapping[str, Any]],
                 out_indices: int | Sequence[int] | None = None) -> None:
        info = [dict(copy.deepcopy(f)) for f in feature_info]
        prev = 1
        for i, f in enumerate(info):
            ok = {"num_chs", "reduction", "module"} <= set(f)
            if not (ok and f["num_chs"] > 0 and f["reduction"] >= prev):
                raise ConfigError(f"feature_info[{i}] = {f} needs num_chs > 0, a reduction >= the previous "
                                  f"level's ({prev}) and a module name")
            prev = f["reduction"]
            f.setdefault("index", i)
        self.info = info
        self.out_indices = check_out_indices(out_indices, len(info))

    def from_other(self, out_indices: int | Sequence[int] | None) -> "FeatureInfo":
        """The same levels with other output levels."""
        return FeatureInfo(self.info, out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of each output level (``idx=None``), of level ``idx``, or of each level in ``idx``."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, Sequence):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """The level dicts (only ``keys`` if given) of the output levels, of ``idx`` or of each in it."""
        def pick(i: int) -> dict[str, Any]:
            return self.info[i] if keys is None else {k: self.info[i][k] for k in keys}
        if idx is None:
            return [pick(i) for i in self.out_indices]
        return [pick(i) for i in idx] if isinstance(idx, Sequence) else pick(idx)

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Channels of the output levels (or of ``idx``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Stride relative to the input of the output levels (or of ``idx``)."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """Module names of the output levels (or of ``idx``)."""
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, " \
               f"reduction={self.reduction()})"


def features_pretrained_cfg(model: nn.Module) -> Any:
    """``model.pretrained_cfg`` without the classifier's keys, as timm gives its feature extractors."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping):
        return {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier")}
    return cfg


def _stage_names(out_indices: Sequence[int], feature_names: Sequence[str] | None) -> list[str]:
    """Names of the 5 stages: 5 ``feature_names`` name stages 0..4, fewer name the ``out_indices`` entries
    in the order given."""
    if feature_names is None:
        return list(DEFAULT_NAMES)
    names = [str(n) for n in feature_names]
    if len(names) != 5:
        if len(names) != len(out_indices) or len(set(out_indices)) != len(out_indices):
            raise ConfigError(
                f"feature_names must name the 5 stages (stem, layer1..layer4) or each of out_indices "
                f"{tuple(out_indices)}, got {len(names)} names: {names}"
            )
        full = list(DEFAULT_NAMES)
        for i, n in zip(out_indices, names):
            full[i] = n
        names = full
    stages = sorted(set(out_indices))
    chosen = [names[i] for i in stages]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"feature_names must be distinct, got {chosen} for stages {stages}")
    return names


class FeatureDictNet(StemChannelsMixin, DefaultCfgMixin, nn.Module):
    """The stem and stages of a ResNeSt, returning the outputs selected by ``out_indices`` by name.

    Index 0 is the stem (stride 2, before the max pool), 1-4 are layer1-layer4. Submodule names are the
    classifier's (``conv1``, ``bn1``, ``layer1``...), so a classification state dict without ``fc`` loads;
    stages past the last requested one are not kept (no compute, no weights).

    Args:
        model: a :class:`~splitattn.models.ResNeSt` (any zoo model, any ``output_stride``); its modules
            are reused, not copied.
        out_indices: stage indices within 0..4 or -5..-1, or an int ``k`` for the last ``k`` (see
            :func:`check_out_indices`); default all 5; returned in stage order.
        feature_names: the output names: 5 names for stages 0..4 (e.g. detectron2's
            ``("stem", "res2", "res3", "res4", "res5")``) or one per ``out_indices`` entry, in the order
            given; default ``"stem"``, ``"layer1"``..``"layer4"``.

    Attributes:
        feature_info: a :class:`FeatureInfo` of the 5 levels, ``out_indices`` the returned ones.
        pretrained_cfg: the model's, without ``num_classes`` / ``classifier`` (``default_cfg``: the same).
        in_chans: the input channels of the stem conv (it follows a swapped stem conv).

    Shape:
        ``(B, C, H, W) -> OrderedDict {name_i: (B, feature_info[i]["num_chs"], H / r_i, W / r_i)}``, with
        ``r_i = feature_info[i]["reduction"]`` (rounded up for sizes not divisible by it).
    """

    __jit_ignored_attributes__ = ["feature_info", "pretrained_cfg", "model_cfg"]
    __jit_unused_properties__ = ["default_cfg", "in_chans"]

    def __init__(
        self,
        model: nn.Module,
        out_indices: int | Sequence[int] | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        missing = [a for a in _MODEL_PARTS if not hasattr(model, a)]
        if missing:
            raise InputError(
                f"model must be a ResNeSt (splitattn.create_model(name)), got a {type(model).__name__} "
                f"without {', '.join(missing)}"
            )
        indices = check_out_indices(out_indices)
        self.out_indices = indices
        self.stage_names = _stage_names([int(i) % 5 for i in _given_indices(out_indices, 5)], feature_names)
        self.conv1 = model.conv1
        self.bn1 = model.bn1
        self.act1 = model.act1
        self.maxpool = model.maxpool
        last = max(indices)
        for i in range(1, 5):
            self.add_module(f"layer{i}", getattr(model, f"layer{i}") if i <= last else nn.Identity())
        self.feature_info = FeatureInfo(model.feature_info, indices)
        self.pretrained_cfg = features_pretrained_cfg(model)
        self.model_cfg = getattr(model, "model_cfg", None)

    @property
    def feature_names(self) -> list[str]:
        """The output names, in output order."""
        return [self.stage_names[i] for i in self.out_indices]

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """Recompute activations in backward to save training memory; see
        :func:`splitattn.models.set_grad_checkpointing`."""
        set_grad_checkpointing(self, enable)

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise an InputError naming the problem and the fix (see :func:`._input.check_input`)."""
        if not is_tracing():  # else reading the stem's weight would leave a node in an FX graph
            check_input(x, self.in_chans, self, stem_dtype(self.conv1))

    def channels(self) -> list[int]:
        """Channels of each output (``feature_info.channels()``)."""
        return self.feature_info.channels()

    def reductions(self) -> list[int]:
        """Stride of each output (``feature_info.reduction()``)."""
        return self.feature_info.reduction()

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The one forward of both views: ``{name: map}`` in stage order (see the class docstring)."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.act1(self.bn1(self.conv1(x)))
        stages = [x]
        # Unrolled (not a loop over a list of stages) so that torch.jit.script accepts it; the stages
        # past the last requested one are Identity.
        x = self.layer1(self.maxpool(x))
        stages.append(x)
        x = self.layer2(x)
        stages.append(x)
        x = self.layer3(x)
        stages.append(x)
        stages.append(self.layer4(x))
        outs: dict[str, torch.Tensor] = OrderedDict()
        for i in self.out_indices:
            outs[self.stage_names[i]] = stages[i]
        return outs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_dict(x)


class FeatureListNet(FeatureDictNet):
    """:class:`FeatureDictNet` returning a list: what ``create_model(features_only=True)`` gives.

    Shape:
        ``(B, C, H, W) -> [(B, feature_info[i]["num_chs"], H / r_i, W / r_i) for i in out_indices]``.
    """

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return list(self.forward_dict(x).values())


class FeatureGetterNet(DefaultCfgMixin, nn.Module):
    """A model pruned after its last requested level, whose ``forward_intermediates`` gives the features
    (timm's ``feature_cls="getter"``).

    Args:
        model: a :class:`~splitattn.models.ResNeSt` (pruned in place, its head removed; kept as ``model``).
        out_indices: as :func:`check_out_indices` reads them; default all 5.

    Shape:
        ``(B, C, H, W) -> [(B, feature_info.channels()[j], H / r_j, W / r_j) for each output level j]``.
    """

    __jit_ignored_attributes__ = ["feature_info", "pretrained_cfg", "model_cfg"]
    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise InputError(f"feature_cls='getter' needs a model with forward_intermediates and "
                             f"feature_info (a ResNeSt), got a {type(model).__name__}")
        indices = check_out_indices(out_indices, len(model.feature_info))
        model.prune_intermediate_layers(list(indices), prune_head=True)
        self.model = model
        self.out_indices = indices
        self.feature_info = FeatureInfo(model.feature_info, indices)
        self.pretrained_cfg = features_pretrained_cfg(model)
        self.model_cfg = getattr(model, "model_cfg", None)

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """See :func:`splitattn.models.set_grad_checkpointing`."""
        set_grad_checkpointing(self, enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)


def features_only_model(model: nn.Module, out_indices: int | Sequence[int] | None = None,
                        feature_cls: str | None = None) -> nn.Module:
    """``model`` as a feature extractor, as timm's ``create_model(..., features_only=True)`` makes one.

    Args:
        model: a :class:`~splitattn.models.ResNeSt`; its modules are reused.
        out_indices: levels 0 = stem (``act1``, stride 2), 1-4 = layer1-4; negative ones from the end, an
            int ``k`` the last ``k``; default all 5 (as timm's resnest models).
        feature_cls: ``"list"`` (default): a :class:`FeatureListNet`; ``"dict"``: a :class:`FeatureDictNet`
            keyed, as timm's, by the index given (``"0"``..``"4"``, ``"-1"``...); ``"getter"``: a
            :class:`FeatureGetterNet`.

    Returns:
        The extractor; its ``feature_info`` is a :class:`FeatureInfo`.

    Raises:
        ConfigError: an ``out_indices`` entry out of range (naming it) or an unknown ``feature_cls``.
    """
    kind = "list" if feature_cls is None else feature_cls
    if kind not in FEATURE_CLS:
        raise ConfigError(f"feature_cls must be one of {FEATURE_CLS} (None: 'list'), got {feature_cls!r}")
    indices = check_out_indices(out_indices)
    if kind == "getter":
        return FeatureGetterNet(model, indices)
    if kind == "list":
        return FeatureListNet(model, indices)
    names = {}
    for given in _given_indices(out_indices, 5):
        names.setdefault(int(given) % 5, str(given))
    return FeatureDictNet(model, indices, feature_names=[names.get(i, str(i)) for i in range(5)])


__all__ = ["DEFAULT_NAMES", "FEATURE_CLS", "FeatureDictNet", "FeatureGetterNet", "FeatureInfo",
           "FeatureListNet", "check_out_indices", "features_only_model", "features_pretrained_cfg",
           "uses_batch_stats"]
