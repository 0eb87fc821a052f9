"""``splitattn explain``: what split attention does on an image, as figures and a JSON file of numbers.

For each image: the radix attention of every Split-Attention block (mean weight per split, its spread
across channels, its entropy), a channels x splits heat map of the last block of each stage, a Grad-CAM
of the predicted class at each stage, and the scale test of SKNet (Li et al. 2019, Sec. 4.3): the image
zoomed in by each scale ``s`` (the centre ``1/s`` of the model's view resized back to its input size, so
the object grows by ``s``) and the change in attention between scales. The figures are drawn by
:mod:`splitattn.explain.explanations.plots`.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ..data.imagefolder import load_rgb
from ..data.preprocessing import INTERPOLATIONS, DataConfig, resolve_data_config
from ..errors import InputError, MissingFileError
from ..evaluation.predict import imagenet_classes, load_for_inference
from ..models import create_model
from ..utils.fileio import atomic_write_text
from .attention import attention_summary, capture_attention, split_attention_modules
from .plots import caption, plot_attention, plot_channels, plot_grad_cam, plot_scales, save
from .records import RANDOM_NOTE, ExplainTarget, ImageExplanation

STAGES = ("layer1", "layer2", "layer3", "layer4")
DEFAULT_SCALES = (1.0, 1.5, 2.0)
MIN_SCALE, MAX_SCALE = 0.25, 8.0


def load_explain_model(model_name: str | None = None, weights: str | os.PathLike | None = None,
                       pretrained: bool = False, ema: bool = False, seed: int = 0) -> ExplainTarget:
    """The model ``splitattn explain`` looks at.

    Args:
        model_name: a zoo model; alone it has random weights (seeded by ``seed``) unless ``pretrained``.
        weights: a ``.ckpt`` of ``splitattn train`` or a weights file, read by
            :func:`splitattn.evaluation.predict.load_for_inference` (``model_name`` then overrides the
            recorded one).
        pretrained: the released ImageNet weights of ``model_name`` (downloaded).
        ema: the EMA weights of a training checkpoint.
        seed: the random init's seed (the caller's RNG state is left as it was).

    Raises:
        InputError: neither ``model_name`` nor ``weights``, ``pretrained`` with ``weights``, a model that is
            not a ResNeSt classifier, or one without Split-Attention (radix 0), naming the model and file.
    """
    if weights is not None:
        if pretrained:
            raise InputError("--pretrained loads the released weights; it cannot be combined with --weights")
        model, classes = load_for_inference(weights, model_name, ema)
        source, random = f"{weights}", False
    elif model_name is None:
        raise InputError("explain needs a model: --weights FILE (a .ckpt of splitattn train or a weights "
                         "file) or --model NAME (a zoo model: random weights unless --pretrained)")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(model_name, pretrained=pretrained)
        classes = imagenet_classes()
        source, random = ("released ImageNet weights" if pretrained else RANDOM_NOTE), not pretrained
    name = _model_name(model) or model_name or type(model).__name__
    where = f"model {name} ({'random weights' if random else source})"
    missing = [s for s in STAGES if not isinstance(getattr(model, s, None), nn.Module)]
    if missing or not hasattr(model, "fc"):
        raise InputError(f"{where} is not a ResNeSt classifier (no {', '.join(missing) or 'fc'}); explain "
                         "needs the stages layer1..layer4 and the classifier")
    try:
        split_attention_modules(model)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return ExplainTarget(model.eval(), list(classes), name, source, random)


def _model_name(model: nn.Module) -> str | None:
    """The registered name in ``model.pretrained_cfg`` (a timm-style dict or a ``ModelCfg``)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping):
        return cfg.get("architecture") or cfg.get("name")
    return getattr(cfg, "name", None)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The scales sorted, without repeats, with the reference 1.0 added if missing.

    Raises:
        InputError: a scale outside [0.25, 8] (or not a finite number).
    """
    out = {1.0}
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, int | float) or not MIN_SCALE <= s <= MAX_SCALE:
            raise InputError(f"scales must be numbers in [{MIN_SCALE}, {MAX_SCALE}] (1.0 = the model's "
                             f"view, 2.0 = zoomed in twice), got {s!r}")
        out.add(float(s))
    return tuple(sorted(out))


def scale_transform(cfg: DataConfig, scale: float) -> v2.Compose:
    """PIL image -> ``(3, crop, crop)`` normalised view zoomed in by ``scale``.

    The model's eval view (short side resized to ``crop / crop_pct``, centre crop ``crop``) at 1.0; at
    ``s`` the short side is resized to ``s`` times that before the same centre crop, which shows the centre
    ``1/s`` of the view at the input size. Below 1 the view is padded with the normalisation mean (0).
    """
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(max(1, round(cfg.resize_size * scale)), interpolation=INTERPOLATIONS[cfg.interpolation],
                  antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg.mean, cfg.std),
        v2.CenterCrop(cfg.crop_size),  # after Normalize: a padded border is 0, the mean colour
    ])


def to_display(view: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """A normalised ``(3, H, W)`` view back to ``(H, W, 3)`` RGB in [0, 1] for plotting."""
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (view * std + mean).clamp(0, 1).permute(1, 2, 0)


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | None = None,
             stages: Sequence[str] = STAGES) -> tuple[torch.Tensor, int, OrderedDict[str, torch.Tensor]]:
    """Grad-CAM (Selvaraju et al. 2017) of one class at the output of each stage.

    ``cam = ReLU(sum_c w_c A_c)`` with ``w_c`` the spatial mean of ``d logit / d A_c``, upsampled
    (bilinear) to the input size and divided by its maximum.

    Args:
        model: a classifier whose stages are attributes named ``stages``.
        x: ``(1, C, H, W)`` input.
        target: the class; default the predicted one.

    Returns:
        ``(logits (1, K), target, {stage: (H, W) map in [0, 1]})``, all detached.
    """
    acts: dict[str, torch.Tensor] = {}
    handles = [getattr(model, s).register_forward_hook(
        lambda _m, _i, out, s=s: acts.__setitem__(s, out)) for s in stages]
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    cls = int(logits[0].argmax()) if target is None else int(target)
    grads = torch.autograd.grad(logits[0, cls], [acts[s] for s in stages])
    cams: OrderedDict[str, torch.Tensor] = OrderedDict()
    for s, g in zip(stages, grads):
        cam = F.relu((g.mean((2, 3), keepdim=True) * acts[s]).sum(1, keepdim=True)).detach().float()
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        peak = float(cam.max())
        cams[s] = cam / peak if peak > 0 else cam
    return logits.detach(), cls, cams


def _prediction(logits: torch.Tensor, classes: Sequence[str], path: str) -> dict[str, Any]:
    probs = logits.float().softmax(-1)[0]
    if probs.numel() != len(classes):
        raise InputError(f"the model has {probs.numel()} outputs but {len(classes)} class names")
    if not torch.isfinite(probs).all():
        raise InputError(f"the model gives non-finite outputs (NaN or inf) for image {path}: its weights "
                         "are broken; check the weights file")
    i = int(probs.argmax())
    return {"class": classes[i], "index": i, "confidence": float(probs[i])}


def explain_image(target: ExplainTarget, image: Image.Image, path: str, scales: Sequence[float],
                  ) -> ImageExplanation:
    """Attention, Grad-CAM and the scale test of one image (see the module docstring).

    Args:
        target: the model.
        image: the decoded RGB image.
        path: its file, for the record.
        scales: the zoom factors (see :func:`check_scales`; 1.0 is added).

    Returns:
        The record: ``{"image", "prediction", "blocks": {name: summary at 1.0}, "scales": [{"scale",
        "prediction", "blocks", "delta_mean": {name: [R] mean attention minus that at 1.0}}]}``, with the
        summaries of :func:`splitattn.explain.attention.attention_summary`.
    """
    scales = check_scales(scales)
    model, cfg = target.model, resolve_data_config(target.model)
    views = [scale_transform(cfg, s)(image) for s in scales]
    per_scale: list[dict[str, Any]] = []
    ref = scales.index(1.0)
    with capture_attention(model) as ref_maps, _stage_sizes(model) as stage_shapes:
        logits, _, cams = grad_cam(model, views[ref].unsqueeze(0))
    ref_summary = attention_summary(ref_maps)
    for s, view in zip(scales, views):
        if s == 1.0:
            maps, pred_logits = ref_maps, logits
        else:
            with torch.no_grad(), capture_attention(model) as maps:
                pred_logits = model(view.unsqueeze(0))
        summary = ref_summary if s == 1.0 else attention_summary(maps)
        delta = {n: [a - b for a, b in zip(v["mean"], ref_summary[n]["mean"])] for n, v in summary.items()}
        per_scale.append({"scale": s, "prediction": _prediction(pred_logits, target.classes, path),
                          "blocks": summary, "delta_mean": delta})
    prediction = _prediction(logits, target.classes, path)
    record = {"image": path, "prediction": prediction, "blocks": ref_summary, "scales": per_scale,
              "cam_stage_sizes": {s: list(hw) for s, hw in stage_shapes.items()}}
    return ImageExplanation(record, [to_display(v, cfg) for v in views],
                            OrderedDict((n, m[0]) for n, m in ref_maps.items()), cams, stage_shapes)


@contextmanager
def _stage_sizes(model: nn.Module) -> Iterator[dict[str, tuple[int, int]]]:
    """Records the spatial size of each stage's output (the resolution behind each Grad-CAM)."""
    shapes: dict[str, tuple[int, int]] = {}
    handles = [getattr(model, s).register_forward_hook(
        lambda _m, _i, out, s=s: shapes.__setitem__(s, tuple(out.shape[-2:]))) for s in STAGES]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def _load_images(images: Sequence[str | os.PathLike], short_side: int) -> list[Image.Image]:
    """Every image decoded up front, so a bad one fails before any output is written; ``short_side`` is
    the largest the scale test resizes to (an image too long for it is a bad image, as in evaluation)."""
    if not images:
        raise InputError("explain needs at least one image")
    for p in images:
        if not os.path.isfile(p):
            raise MissingFileError(f"image {p} does not exist" + (" (it is a folder: name image files)"
                                                                  if os.path.isdir(p) else ""))
    return [load_rgb(p, hint="give a JPEG, PNG or other image PIL can read", short_side=short_side)
            for p in images]


def _stems(images: Sequence[str | os.PathLike]) -> list[str]:
    """Output file prefixes: each image's stem, with its position added where two stems clash."""
    stems = [Path(p).stem for p in images]
    return [f"{s}_{i}" if stems.count(s) > 1 else s for i, s in enumerate(stems)]


def explain_images(target: ExplainTarget, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   scales: Sequence[float] = DEFAULT_SCALES) -> dict[str, Any]:
    """Write the four figures of each image and ``explain.json`` into ``out_dir``.

    Figures per image ``STEM``: ``STEM_attention.png`` (mean attention per split and its spread, and the
    entropy, per block), ``STEM_channels.png`` (channels x splits of the last block of each stage),
    ``STEM_gradcam.png`` (Grad-CAM per stage) and ``STEM_scales.png`` (the scale test).

    Returns:
        The JSON record: ``{"model", "weights", "random_weights", "scales", "json", "images": [per-image
        record of :func:`explain_image` + "figures"]}``.

    Raises:
        MissingFileError / BadImageError: an image is missing or unreadable (before anything is written).
        InputError: a scale out of range.
        MissingDependencyError: matplotlib is not installed.
    """
    scales = check_scales(scales)
    decoded = _load_images(images, math.ceil(resolve_data_config(target.model).resize_size * max(scales)))
    out = Path(out_dir)
    groups = {n: m.cardinality for n, m in split_attention_modules(target.model)}
    results = []
    for path, stem, image in zip(images, _stems(images), decoded):
        ex = explain_image(target, image, str(path), scales)
        text = caption(target, str(path))
        figures = {
            "attention": save(plot_attention(ex.record, text), out / f"{stem}_attention.png"),
            "channels": save(plot_channels(ex.maps, text, groups), out / f"{stem}_channels.png"),
            "gradcam": save(plot_grad_cam(ex, target, text), out / f"{stem}_gradcam.png"),
            "scales": save(plot_scales(ex, text), out / f"{stem}_scales.png"),
        }
        results.append({**ex.record, "figures": {k: str(v) for k, v in figures.items()}})
    record = {"model": target.name, "weights": target.weights, "random_weights": target.random,
              "scales": list(scales), "json": str(out / "explain.json"), "images": results}
    atomic_write_text(out / "explain.json", json.dumps(record, indent=1, allow_nan=False) + "\n")
    return record


def scale_shift(record: dict[str, Any]) -> dict[float, float]:
    """Per scale, the mean over blocks and splits of ``|mean attention - that at 1.0|`` of one image."""
    return {s["scale"]: sum(abs(d) for v in s["delta_mean"].values() for d in v)
            / max(1, sum(len(v) for v in s["delta_mean"].values())) for s in record["scales"]}


__all__ = ["DEFAULT_SCALES", "STAGES", "check_scales",
           "explain_image", "explain_images", "grad_cam", "load_explain_model", "scale_shift",
           "scale_transform", "to_display"]
