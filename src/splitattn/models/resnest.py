"""ResNeSt: Split-Attention Networks (Zhang et al., arXiv 2004.08955).

Blocks, then the model class, then one small config per registered variant. Module and parameter
names follow the official ``resnest.torch`` code and timm (``conv1.0``, ``bn1``, ``layerN.M.conv2.fc1``,
``downsample.1``, ``fc``...), so their checkpoints load without any key mapping.
"""

# No `from __future__ import annotations`: torch.fx copies a traced forward's annotations into the code it
# generates, where TorchScript cannot read them as strings (torch.jit.script of a GraphModule).
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..layers import DropBlock2d, SplitAttn, checkpoint, get_norm_layer
from ..layers.norm import NormLayer, attention_norm_layer
from ..layers.split_attn import check_int, check_rate, is_tracing
from ._input import MIN_INPUT_SIZE, check_input, stem_dtype
from ._registry import default_pretrained_cfg
from ._timm_api import GLOBAL_POOLS, StemChannelsMixin, TimmModelMixin, device_dtype, make_pool


class ResNeStBottleneck(nn.Module):
    """ResNet-D bottleneck whose 3x3 conv is a Split-Attention conv (expansion 4).

    ``conv1`` 1x1 -> ``conv2`` (SplitAttn, or a plain grouped conv + ``bn2`` when ``radix == 0``)
    -> ``conv3`` 1x1 -> ``bn3`` -> + shortcut -> ReLU. With ``avd`` the stride of a downsampling block
    moves from the 3x3 conv to a 3x3 average pool, placed before (``avd_first``) or after ``conv2``.

    Shape:
        ``(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)``.

    Raises:
        InputError: naming the argument, for a size, stride, dilation or cardinality below 1, a radix
            below 0, ``drop_block_rate`` outside [0, 1), or a bottleneck width of 0.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        avd: bool = True,
        avd_first: bool = False,
        is_first: bool = False,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_block_rate: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (("inplanes", inplanes, 1), ("planes", planes, 1), ("stride", stride, 1),
                                     ("radix", radix, 0), ("cardinality", cardinality, 1),
                                     ("base_width", base_width, 1), ("dilation", dilation, 1)):
            check_int(name, value, minimum)
        check_rate("drop_block_rate", drop_block_rate)
        group_width = int(planes * (base_width / 64.0)) * cardinality
        if group_width < 1:
            raise InputError(f"the bottleneck width int(planes * base_width / 64) * cardinality is 0 for "
                             f"{planes=}, {base_width=}; use planes * base_width >= 64")
        self.radix = radix
        use_avd = avd and (stride > 1 or is_first)
        conv_stride = 1 if use_avd else stride

        def drop_block() -> nn.Module:
            return DropBlock2d(drop_block_rate, 3) if drop_block_rate > 0 else nn.Identity()

        self.conv1 = nn.Conv2d(inplanes, group_width, 1, bias=False)
        self.bn1 = norm_layer(group_width)
        self.drop_block1 = drop_block()
        self.act1 = nn.ReLU(inplace=True)
        self.avd_first = nn.AvgPool2d(3, stride, padding=1) if use_avd and avd_first else nn.Identity()
        if radix >= 1:
            self.conv2 = SplitAttn(
                group_width, group_width, 3, conv_stride, dilation, dilation, groups=cardinality,
                radix=radix, norm_layer=norm_layer, attn_norm_layer=attention_norm_layer(norm_layer),
                drop_block=drop_block(),
            )
            self.bn2 = nn.Identity()
            self.drop_block2 = nn.Identity()
            self.act2 = nn.Identity()
        else:
            self.conv2 = nn.Conv2d(
                group_width, group_width, 3, conv_stride, dilation, dilation, groups=cardinality, bias=False
            )
            self.bn2 = norm_layer(group_width)
            self.drop_block2 = drop_block()
            self.act2 = nn.ReLU(inplace=True)
        self.avd_last = nn.AvgPool2d(3, stride, padding=1) if use_avd and not avd_first else nn.Identity()
        self.conv3 = nn.Conv2d(group_width, planes * 4, 1, bias=False)
        self.bn3 = norm_layer(planes * 4)
        self.drop_block3 = drop_block()
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.grad_checkpointing = False  # set by ResNeSt.set_grad_checkpointing("block")

    def conv3_input(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch up to ``conv3``: conv1 -> conv2 with the avd pool; ``(B, gw, H', W')``."""
        out = self.act1(self.drop_block1(self.bn1(self.conv1(x))))
        out = self.avd_first(out)
        if not self.training and not torch.jit.is_scripting() and self._pool_before_sum():
            return self._pooled_conv2(out)
        out = self.act2(self.drop_block2(self.bn2(self.conv2(out))))
        return self.avd_last(out)

    @torch.jit.unused
    def _pool_before_sum(self) -> bool:
        # A SplitAttn followed by the avd pool, neither hooked (a hook sees each module's own call).
        return (type(self.conv2) is SplitAttn and type(self.avd_last) is nn.AvgPool2d
                and not any(m._forward_hooks or m._forward_pre_hooks for m in (self.conv2, self.avd_last)))

    @torch.jit.unused
    def _pooled_conv2(self, x: torch.Tensor) -> torch.Tensor:
        """``avd_last(conv2(x))``, pooling the splits before the weighted sum (SplitAttn.forward_pooled)."""
        return self.conv2.forward_pooled(x, self.avd_last)

    def zero_init_last(self) -> None:
        """Zero the last norm's scale so the block starts as the identity (paper's "zero gamma")."""
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checkpointed = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointed and not torch.jit.is_scripting():
            return self._checkpointed_forward(x)
        return self._forward(x)

    @torch.jit.unused
    def _checkpointed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, x, modules=(self,))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        out = self.drop_block3(self.bn3(self.conv3(self.conv3_input(x))))
        # In place, as the official code, timm and torchvision do: saves a map-sized allocation per block;
        # no norm saves its output for backward, so autograd is unaffected.
        out += shortcut
        return self.act3(out)


# (stride, dilation, first-block dilation) of layer1..layer4 for each output stride, as in the official code.
STAGE_STRIDES = {
    32: [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)],
    16: [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 2, 1)],
    8: [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 4, 2)],
}


def _check_resnest_args(layers: Any, output_stride: Any, global_pool: Any, drop_rate: Any,
                        drop_block_rate: Any, **ints: tuple[Any, int]) -> None:
    """InputError naming the first invalid :class:`ResNeSt` argument; ``ints``: name -> (value, minimum)."""
    if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) != 4:
        raise InputError(f"layers must be 4 positive integers (blocks per stage, e.g. (3, 4, 6, 3)), "
                         f"got {layers!r}")
    ints.update({f"layers[{i}]": (d, 1) for i, d in enumerate(layers)})
    for name, (value, minimum) in ints.items():
        check_int(name, value, minimum)
    check_rate("drop_rate", drop_rate)
    check_rate("drop_block_rate", drop_block_rate)
    if isinstance(output_stride, bool) or output_stride not in STAGE_STRIDES:
        raise InputError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    if global_pool not in GLOBAL_POOLS:
        raise InputError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")


class ResNeSt(StemChannelsMixin, TimmModelMixin, nn.Module):
    """ResNeSt image classifier / backbone.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        radix: R; 0 gives the plain ResNet-D / ResNeXt baseline (grouped conv + BN + ReLU).
        cardinality: K.
        base_width: bottleneck width per group ("64d", "40d", "24d").
        stem_width: ``w`` of the deep stem (3 -> w -> w -> 2w); 32 for ResNeSt-50, 64 for 101+.
        deep_stem: three 3x3 convs instead of one 7x7.
        avg_down: average-pool shortcut downsampling (ResNet-D).
        avd: move a block's stride to a 3x3 average pool; ``avd_first`` puts it before conv2.
        output_stride: 32, 16 or 8 (dilated layers for dense prediction).
        in_chans: input channels.
        num_classes: classifier outputs; 0 removes the classifier (``forward`` gives pooled features).
        drop_rate: dropout before the classifier.
        drop_block_rate: DropBlock probability on layers 3-4 (block size 3); can be ramped later with
            :func:`set_drop_block_prob`.
        zero_init_last: zero the last BN scale of each block (the paper's recipe).
        norm_layer: ``"batchnorm"``, ``"syncbn"``, ``"frozenbn"``, ``"groupnorm"`` or a callable.
        global_pool: ``"avg"``, ``"max"``, ``"avgmax"`` (avg and max concatenated) or ``""`` (no pooling).

    Attributes:
        pretrained_cfg: timm's ``pretrained_cfg`` dict (input size, interpolation, crop, mean/std,
            ``first_conv``, ``classifier``...; timm's keys only); ``default_cfg`` is the same dict.
            :func:`splitattn.create_model` sets the registered name's (see
            :func:`~splitattn.models._registry.get_pretrained_cfg`), a directly built model has ResNeSt's
            defaults.
        model_cfg: the registry's :class:`~splitattn.models._registry.ModelCfg` (set by ``create_model``;
            ``None`` for a directly built model).
        num_features, head_hidden_size: channels of the layer4 map and of the pooled features (twice
            ``num_features`` with ``"avgmax"``), as timm defines them.
        feature_info: one dict per feature level (``num_chs``, ``reduction``, ``module``): the stem
            (``act1``, stride 2) and layer1..layer4.

    Shape:
        ``forward``: ``(B, in_chans, H, W) -> (B, num_classes)`` with ``H, W >= 32``.

    Raises:
        InputError: naming the argument: ``layers`` not 4 positive integers, ``in_chans``,
            ``stem_width``, ``base_width`` or ``cardinality`` below 1, ``radix`` or ``num_classes`` below 0,
            ``drop_rate`` / ``drop_block_rate`` outside [0, 1), ``output_stride`` not 8, 16 or 32, an unknown
            ``global_pool``. ``forward`` raises it for an input it cannot take
            (see :func:`._input.check_input`).
    """

    __jit_ignored_attributes__ = ["feature_info", "pretrained_cfg", "model_cfg"]
    __jit_unused_properties__ = ["default_cfg", "in_chans"]

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        stem_width: int = 32,
        deep_stem: bool = True,
        avg_down: bool = True,
        avd: bool = True,
        avd_first: bool = False,
        output_stride: int = 32,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_block_rate: float = 0.0,
        zero_init_last: bool = True,
        norm_layer: str | NormLayer | None = "batchnorm",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        _check_resnest_args(layers, output_stride, global_pool, drop_rate, drop_block_rate,
                            in_chans=(in_chans, 1), num_classes=(num_classes, 0), radix=(radix, 0),
                            cardinality=(cardinality, 1), base_width=(base_width, 1),
                            stem_width=(stem_width, 1))
        norm = get_norm_layer(norm_layer)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.output_stride = output_stride
        self.global_pool_type = global_pool

        inplanes = stem_width * 2 if deep_stem else 64
        if deep_stem:
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, 3, 2, 1, bias=False),
                norm(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False),
                norm(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, inplanes, 3, 1, 1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_chans, inplanes, 7, 2, 3, bias=False)
        self.bn1 = norm(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        self.feature_info = [dict(num_chs=inplanes, reduction=2, module="act1")]
        reduction = 4
        for i, (planes, depth, (stride, dilation, first_dilation)) in enumerate(
            zip((64, 128, 256, 512), layers, STAGE_STRIDES[output_stride])
        ):
            out_ch = planes * ResNeStBottleneck.expansion
            downsample = None
            if stride != 1 or inplanes != out_ch:
                if avg_down:
                    pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                            if stride > 1 else nn.Identity())
                    downsample = nn.Sequential(pool, nn.Conv2d(inplanes, out_ch, 1, bias=False), norm(out_ch))
                else:
                    conv = nn.Conv2d(inplanes, out_ch, 1, stride, bias=False)
                    downsample = nn.Sequential(conv, norm(out_ch))
            block_kw = dict(
                radix=radix, cardinality=cardinality, base_width=base_width, avd=avd, avd_first=avd_first,
                norm_layer=norm, drop_block_rate=drop_block_rate if i >= 2 else 0.0,
            )
            # The official code marks the first block of layers 2-4 as "is_first", so a dilated first
            # block (stride 1) still gets its 3x3 avd pool; we keep that to match its function.
            blocks = [ResNeStBottleneck(inplanes, planes, stride, downsample, is_first=i > 0,
                                        dilation=first_dilation, **block_kw)]
            blocks += [ResNeStBottleneck(out_ch, planes, dilation=dilation, **block_kw)
                       for _ in range(1, depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out_ch
            reduction *= stride
            self.feature_info.append(dict(num_chs=out_ch, reduction=reduction, module=f"layer{i + 1}"))

        self.num_features = inplanes
        self.global_pool, self.flatten = make_pool(global_pool)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = self._make_classifier(num_classes)
        self.head_hidden_size = self._pooled_features()
        self._init_weights(zero_init_last)
        self.grad_checkpointing = ""
        self.pretrained_cfg = default_pretrained_cfg(
            (in_chans, 224, 224), output_stride, num_classes=num_classes,
            first_conv="conv1.0" if deep_stem else "conv1")
        self.model_cfg = None

    def _pooled_features(self) -> int:
        return self.num_features * (2 if self.global_pool_type == "avgmax" else 1)

    def _make_classifier(self, num_classes: int, **factory_kwargs: Any) -> nn.Module:
        check_int("num_classes", num_classes, 0)
        feat = self._pooled_features()
        return nn.Linear(feat, num_classes, **factory_kwargs) if num_classes > 0 else nn.Identity()

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # N(0, sqrt(2 / (k * k * out))): He init over fan-out, as in the official code.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # After the generic loop, so the zero gamma is not overwritten (the official code's bug).
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, ResNeStBottleneck):
                    m.zero_init_last()

    # -- the timm model interface ---------------------------------------------------------------
    @torch.jit.unused
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes=0`` removes it) and optionally the pooling.

        The new classifier is made on the model's device and in its dtype, in its train/eval mode.

        Raises:
            InputError: ``num_classes`` below 0 or an unknown ``global_pool``, before anything changes.
        """
        check_int("num_classes", num_classes, 0)
        if global_pool is not None:
            pool = make_pool(global_pool)
            self.global_pool_type = global_pool
            self.global_pool, self.flatten = pool
        self.num_classes = num_classes
        self.fc = self._make_classifier(num_classes, **device_dtype(self)).train(self.training)
        self.head_hidden_size = self._pooled_features()

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """Recompute activations in backward to save training memory; see :func:`set_grad_checkpointing`."""
        self.grad_checkpointing = set_grad_checkpointing(self, enable)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, 2w, H/2, W/2)``: deep stem, BN, ReLU (before the max pool)."""
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_features, H/os, W/os)``: the unpooled layer4 map."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.maxpool(self.forward_stem(x))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, num_features, h, w) -> (B, num_classes)``, or the pooled features if ``pre_logits``."""
        x = self.flatten(self.global_pool(x))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise an InputError that names the problem and the fix for an input the network cannot take."""
        if not is_tracing():  # else reading the stem's weight would leave a node in an FX graph
            check_input(x, self.in_chans, self, stem_dtype(self.conv1))


def set_grad_checkpointing(model: nn.Module, enable: bool | str = True) -> str:
    """Trade compute for training memory by recomputing activations in the backward pass.

    Args:
        model: a ResNeSt, a features_only backbone, or any module containing ResNeSt blocks.
        enable: ``True`` or ``"block"``: keep only each bottleneck's input and recompute the block
            (timm's behaviour: the least memory, about one extra forward of compute); ``"attn"``: keep
            only the grouped conv's output in each Split-Attention conv and recompute BN0, ReLU, the
            attention and the weighted sum (two fewer radix-expanded maps per block, for a few
            elementwise passes); ``False``: off.

    Returns:
        The mode set: ``"block"``, ``"attn"`` or ``""``.

    BatchNorm running statistics are still updated once per step and DropBlock masks are replayed, so
    training computes the same function. No effect in eval mode, under ``torch.no_grad()`` or in
    TorchScript.
    """
    if enable is True:
        enable = "block"
    if enable not in (False, "block", "attn"):
        raise InputError(f"grad checkpointing must be True, False, 'block' or 'attn', got {enable!r}")
    for m in model.modules():
        if isinstance(m, ResNeStBottleneck):
            m.grad_checkpointing = enable == "block"
        elif isinstance(m, SplitAttn):
            m.recompute = enable == "attn"
    return enable or ""


def set_drop_block_prob(model: nn.Module, prob: float) -> int:
    """Set the drop probability of every DropBlock2d in ``model`` (for the linear 0 -> p ramp).

    Returns:
        The number of DropBlock layers changed (0 if the model was built with ``drop_block_rate=0``).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, DropBlock2d):
            m.drop_prob = float(prob)
            n += 1
    return n


__all__ = ["GLOBAL_POOLS", "MIN_INPUT_SIZE", "ResNeSt", "ResNeStBottleneck", "check_input",
           "set_drop_block_prob", "stem_dtype"]
