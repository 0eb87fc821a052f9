"""The figures of ``splitattn explain``: matplotlib, drawn on a ``Figure`` (the caller's backend stays).

Each figure has a title, axis labels naming the blocks (``layer3.2`` = block 2 of stage 3, the
``conv2`` of that bottleneck), a colour bar where colour carries a value, and a caption line naming the
model, its weights and the image.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import require
from ..utils.fileio import atomic_write
from .records import ExplainTarget, ImageExplanation

MAX_LABELLED_BLOCKS = 24
"""Above this many blocks only the first and every tenth block of each stage are labelled on the axis."""
_BLOCK = re.compile(r"(?:^|\.)(layer\d+)\.(\d+)(?:\.conv2)?$")


def _figure(**kw: Any) -> Any:
    figure: Any = require("matplotlib.figure", "plot", "splitattn explain")
    return figure.Figure(layout="constrained", **kw)


def block_label(name: str) -> str:
    """``backbone.body.layer3.2.conv2`` -> ``layer3.2``; other names unchanged."""
    m = _BLOCK.search(name)
    return f"{m.group(1)}.{m.group(2)}" if m else name


def _stage(name: str) -> str:
    m = _BLOCK.search(name)
    return m.group(1) if m else ""


def caption(target: ExplainTarget, image: str) -> str:
    """The caption line: the model, its weights (or the random-weights warning) and the image."""
    weights = target.weights if target.random else f"weights {target.weights}"
    return f"model {target.name} | {weights} | image {image}"


def _caption(fig: Any, text: str, width_in: float) -> None:
    fig.supxlabel("\n".join(textwrap.wrap(text, max(40, int(width_in * 14)))), fontsize=8, color="0.3")


def _block_axis(ax: Any, names: list[str], labels: bool = True) -> None:
    """Block names as x ticks (all of them up to :data:`MAX_LABELLED_BLOCKS`, else each stage's first and
    every tenth) and a dotted line between stages."""
    x = list(range(len(names)))
    stages = [_stage(n) for n in names]
    for i in range(1, len(names)):
        if stages[i] != stages[i - 1]:
            ax.axvline(i - 0.5, color="0.7", lw=0.8, ls=":")
    ticks = x if len(names) <= MAX_LABELLED_BLOCKS else [
        i for i in x if i == 0 or stages[i] != stages[i - 1] or block_label(names[i]).endswith("0")]
    ax.set_xticks(ticks)
    ax.set_xticklabels([block_label(names[i]) for i in ticks] if labels else [],
                       rotation=90 if len(ticks) > 6 else 0, fontsize=8)
    ax.set_xlim(-0.5, len(names) - 0.5)


def _width(n_blocks: int) -> float:
    return min(20.0, max(8.0, 0.42 * n_blocks + 2.5))


def _prediction_text(pred: dict[str, Any]) -> str:
    p = pred["confidence"]
    return f"{pred['class']} ({p:.0%})" if p >= 0.095 else f"{pred['class']} ({p:.2%})"


def plot_attention(record: dict[str, Any], text: str) -> Any:
    """Figure 1: per block, the mean weight of each split with its spread across channels (a row per
    split; one row for the R = 1 gate), and the mean attention entropy."""
    blocks: dict[str, dict[str, Any]] = record["blocks"]
    names = list(blocks)
    radix = max(b["radix"] for b in blocks.values())
    width = _width(len(names))
    fig = _figure(figsize=(width, 1.7 * (radix + 1) + 1.4))
    axes = fig.subplots(radix + 1, 1, sharex=True, squeeze=False)[:, 0]
    x = list(range(len(names)))
    for r in range(radix):
        ax = axes[r]
        mean = [b["mean"][r] if r < b["radix"] else float("nan") for b in blocks.values()]
        std = [b["std"][r] if r < b["radix"] else float("nan") for b in blocks.values()]
        ax.errorbar(x, mean, yerr=std, fmt="o-", ms=4, capsize=3, color=f"C{r}")
        ax.axhline(1 / radix if radix > 1 else 0.5, color="0.5", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_ylabel("sigmoid gate" if radix == 1 else f"split {r}\nweight")
        ax.grid(alpha=0.3)
        if r == 0:
            ax.set_title("mean weight over channels (bars: ± std across channels; dashed: "
                         + ("uniform 1/R)" if radix > 1 else "0.5)"), fontsize=9)
        _block_axis(ax, names, labels=False)
    ax = axes[-1]
    top = max(b["max_entropy_bits"] for b in blocks.values())
    ax.bar(x, [b["entropy_bits"] for b in blocks.values()], color="0.55")
    ax.axhline(top, color="0.3", lw=0.8, ls="--")
    ax.set_ylim(0, top * 1.1)
    ax.set_ylabel("entropy (bits)")
    ax.set_title(f"mean entropy of each channel's attention (0 = one split only; dashed: uniform, {top:g} "
                 f"bit{'s' if top != 1 else ''})", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    _block_axis(ax, names)
    ax.set_xlabel("Split-Attention block (stage.block)")
    fig.suptitle(f"Split attention per block: {Path(record['image']).name}, predicted "
                 f"{_prediction_text(record['prediction'])}")
    _caption(fig, text, width)
    return fig


def chosen_blocks(names: list[str]) -> list[str]:
    """The last block of each stage (the last 4 blocks when the names have no ``layerN.M``)."""
    last: OrderedDict[str, str] = OrderedDict()
    for n in names:
        last[_stage(n) or n] = n
    picked = list(last.values())
    return picked if len(picked) <= 8 else names[-4:]


def _sort_channels(w: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The channel order that sorts each cardinal group of ``w`` (R, C) by preferred split, then by its
    weight (for R <= 2: by the weight of split 0); returns the sorted weights, the order and the channels
    per group."""
    r, c = w.shape
    order = []
    per = c // groups
    for g in range(groups):
        cols = w[:, g * per:(g + 1) * per]
        if r > 2:
            best, arg = cols.max(0)
            key = arg.double() * 2 - best.double()
        else:  # by the weight of split 0 (the gate for R = 1): split 1's is its complement
            key = -cols[0].double()
        order.append(key.argsort(stable=True) + g * per)
    perm = torch.cat(order)
    return w[:, perm], perm, per


def plot_channels(maps: OrderedDict[str, torch.Tensor], text: str, groups: dict[str, int] | None = None,
                  ) -> Any:
    """Figure 2: channels x splits heat maps of the last block of each stage.

    Args:
        maps: name -> ``(R, C)`` weights of one image.
        text: the caption.
        groups: name -> cardinality (channels are sorted within each cardinal group); default 1.
    """
    blocks = chosen_blocks(list(maps))
    radix = max(maps[n].shape[0] for n in blocks)
    fig = _figure(figsize=(11, (0.35 * radix + 1.0) * len(blocks) + 1.2))
    axes = fig.subplots(len(blocks), 1, squeeze=False)[:, 0]
    im = None
    for ax, name in zip(axes, blocks):
        w = maps[name]
        k = (groups or {}).get(name, 1)
        sorted_w, perm, per = _sort_channels(w, k)
        im = ax.imshow(sorted_w.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                       interpolation="nearest")
        for g in range(1, k):
            ax.axvline(g * per - 0.5, color="white", lw=1.5)
        ax.set_yticks(range(w.shape[0]))
        ax.set_yticklabels(["gate"] if w.shape[0] == 1 else [f"split {r}" for r in range(w.shape[0])],
                           fontsize=8)
        if w.shape[0] > 1:
            share = torch.bincount(w.argmax(0), minlength=w.shape[0]).double() / w.shape[1]
            prefs = ", ".join(f"split {r} {float(s):.0%}" for r, s in enumerate(share))
            detail = f"channels preferring {prefs}; mean top weight {float(w.max(0).values.mean()):.2f}"
        else:
            above = float((w > 0.5).double().mean())
            detail = f"mean gate {float(w.mean()):.2f}, {above:.0%} of channels above 0.5"
        ax.set_title(f"{block_label(name)}: {w.shape[1]} channels; {detail}", fontsize=9)
        order = ("by preferred split, then by its weight" if w.shape[0] > 2
                 else "by the weight of split 0" if w.shape[0] == 2 else "by gate")
        within = f", within each of the {k} cardinal groups" if k > 1 else ""
        if w.shape[1] <= 32:  # few enough to name each channel by its index
            ax.set_xticks(range(w.shape[1]))
            ax.set_xticklabels([str(i) for i in perm.tolist()], fontsize=7)
            ax.set_xlabel(f"output channel index (sorted {order}{within})", fontsize=8)
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"the {w.shape[1]} output channels, sorted {order}{within}", fontsize=8)
    fig.colorbar(im, ax=list(axes), label="attention weight", shrink=0.9)
    fig.suptitle("Sigmoid gate of each channel (radix 1; last block of each stage)" if radix == 1
                 else "Attention of each channel to each split (last block of each stage)")
    _caption(fig, text, 11)
    return fig


def plot_grad_cam(ex: ImageExplanation, target: ExplainTarget, text: str) -> Any:
    """Figure 3: the input (model view) and the Grad-CAM of the predicted class at each stage over it."""
    ref = next(i for i, s in enumerate(ex.record["scales"]) if s["scale"] == 1.0)
    view = ex.views[ref].numpy()
    n = len(ex.cams) + 1
    fig = _figure(figsize=(2.9 * n + 0.8, 3.9))
    axes = fig.subplots(1, n)
    axes[0].imshow(view)
    axes[0].set_title(f"input ({view.shape[1]}x{view.shape[0]} px)", fontsize=9)
    im = None
    for ax, (stage, cam) in zip(axes[1:], ex.cams.items()):
        ax.imshow(view)
        im = ax.imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        h, w = ex.stage_shapes.get(stage, (0, 0))
        ax.set_title(f"{stage} ({h}x{w} map)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), label="Grad-CAM (scaled to its max)", shrink=0.8)
    fig.suptitle(f"Where the stages see the predicted class {_prediction_text(ex.record['prediction'])}")
    _caption(fig, text, 2.9 * n + 0.8)
    return fig


def plot_scales(ex: ImageExplanation, text: str) -> Any:
    """Figure 4: the views at each scale with their prediction, the mean attention per block and split at
    each scale, and its change from scale 1.0."""
    scales = ex.record["scales"]
    names = list(ex.record["blocks"])
    radix = max(b["radix"] for b in ex.record["blocks"].values())
    shown = [0] if radix <= 2 else list(range(radix))  # with R = 2, split 1 is 1 - split 0
    width = min(24.0, max(_width(len(names)) * 1.6, 2.4 * len(scales)))
    fig = _figure(figsize=(width, 2.6 + 2.3 * len(shown) + 0.8))
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.6, 2.3 * len(shown)])
    for ax, s, view in zip(top.subplots(1, len(scales), squeeze=False)[0], scales, ex.views):
        ax.imshow(view.numpy())
        ax.set_title(f"zoom x{s['scale']:g}: {_prediction_text(s['prediction'])}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes = bottom.subplots(len(shown), 2, sharex=True, squeeze=False)
    cmap = require("matplotlib", "plot", "splitattn explain").colormaps["viridis"]
    colours = [cmap(i / max(1, len(scales) - 1) * 0.85) for i in range(len(scales))]
    x = list(range(len(names)))
    for row, r in enumerate(shown):
        what = "gate" if radix == 1 else f"split {r}"
        ax_mean, ax_delta = axes[row]
        for s, c in zip(scales, colours):
            mean = [b["mean"][r] if r < b["radix"] else float("nan") for b in s["blocks"].values()]
            ax_mean.plot(x, mean, "o-", ms=3, color=c, label=f"x{s['scale']:g}")
            if s["scale"] != 1.0:
                ax_delta.plot(x, [d[r] if r < len(d) else float("nan") for d in s["delta_mean"].values()],
                              "o-", ms=3, color=c, label=f"x{s['scale']:g} - x1")
        ax_delta.axhline(0, color="0.4", lw=0.8)
        ax_mean.set_ylabel(f"mean {what}\nweight")
        ax_delta.set_ylabel(f"change of {what}")
        for ax in (ax_mean, ax_delta):
            ax.grid(alpha=0.3)
            _block_axis(ax, names, labels=row == len(shown) - 1)
        if row == 0:
            ax_mean.set_title("mean attention per block at each zoom", fontsize=9)
            ax_delta.set_title("change from zoom x1 (SKNet's scale test)", fontsize=9)
            ax_mean.legend(fontsize=7, ncol=len(scales), loc="best")
            ax_delta.legend(fontsize=7, ncol=max(1, len(scales) - 1), loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("Split-Attention block (stage.block)")
    fig.suptitle(f"Scale test: does the attention move as the object grows? ({Path(ex.record['image']).name})"
                 + ("; split 1 = 1 - split 0" if radix == 2 else ""))
    _caption(fig, text, width)
    return fig


def save(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically; returns the path."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))


__all__ = ["MAX_LABELLED_BLOCKS", "block_label", "caption", "chosen_blocks", "plot_attention",
           "plot_channels", "plot_grad_cam", "plot_scales", "save"]
