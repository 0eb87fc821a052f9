"""The demo: a small ResNeSt trained on real handwritten digits with the paper's recipe, on CPU.

Builds an ImageFolder from scikit-learn's 1,797 digit scans (stratified train/val split), runs the same
training code as ImageNet with the packaged ``demo_digits.yaml`` (the recipe scaled down), then evaluates,
plots the curves, exports the weights, predicts a few val images with them, and explains what the split
attention does on some of them and on a real photo (``splitattn explain``).
"""

from __future__ import annotations

import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from ..data.digits import build_digits_imagefolder
from ..evaluation.evaluate import evaluate_folder
from ..evaluation.predict import export_weights, load_for_inference, predict_images
from ..explain.explanations import explain_images, load_explain_model, scale_shift
from .config import ClassificationConfig, load_config
from .plot import plot_run
from .trainer import train

TARGET_TOP1 = 97.0


def demo_config_path() -> Path:
    """The demo recipe shipped inside the package."""
    return Path(str(files("splitattn").joinpath("configs/demo_digits.yaml")))


def run_demo(out: str | os.PathLike, overrides: dict[str, Any] | None = None,
             config: str | os.PathLike | None = None, console: Any = None) -> bool:
    """Train, evaluate, plot, export and predict; returns whether val top-1 reached :data:`TARGET_TOP1`.

    Args:
        out: the output folder (data, run folder, figures).
        overrides: config keys that replace the recipe's (e.g. ``{"epochs": 2}``).
        config: another recipe YAML (default: :func:`demo_config_path`).
        console: a rich Console to print to (default: a new one).
    """
    from rich.console import Console


    console = console or Console()
    if "OMP_NUM_THREADS" not in os.environ:
        # The demo's tensors are tiny (32x32, narrow): one compute thread plus one data-loading worker
        # uses 2 cores better than 2 intra-op threads, and does not collapse when the cores are shared.
        torch.set_num_threads(1)
    out = Path(out)
    t0 = time.perf_counter()
    data = build_digits_imagefolder(out / "digits", size=32)
    n_train = sum(1 for _ in (data / "train").rglob("*.png"))
    n_val = sum(1 for _ in (data / "val").rglob("*.png"))
    console.print(f"[bold]1. data[/bold]: scikit-learn digits as an ImageFolder in {data} "
                  f"({n_train} train / {n_val} val images, 10 classes, 8x8 scans upscaled to 32x32)")
    run_dir = out / "run"
    cfg = load_config(ClassificationConfig.task, config or demo_config_path(),
                      {**(overrides or {}), "data": str(data), "output": str(run_dir), "resume": None,
                       "overwrite": True})  # the demo always starts afresh
    console.print(f"[bold]2. train[/bold]: {cfg.model} {cfg.model_kwargs} at {cfg.img_size} px, "
                  f"{cfg.epochs} epochs, Nesterov SGD + warmup/cosine, "
                  f"label smoothing {cfg.label_smoothing}, "
                  f"mixup {cfg.mixup_alpha}, DropBlock 0->{cfg.drop_block_rate}, "
                  f"{torch.get_num_threads()} compute thread(s) + {cfg.workers} data worker(s)")
    t_train = time.perf_counter()
    train(cfg)
    t_train = time.perf_counter() - t_train

    res = evaluate_folder(str(run_dir / "last.ckpt"), str(data), workers=0, device="cpu")
    console.print(f"[bold]3. eval[/bold] (last.ckpt on {n_val} val images): top-1 {res['top1']:.2f}%, "
                  f"top-5 {res['top5']:.2f}%, loss {res['loss']:.4f}, {res['images_per_sec']:.0f} images/s")
    console.print(f"[bold]4. plot[/bold]: {plot_run(str(run_dir))}")
    weights = export_weights(run_dir / "last.ckpt", run_dir / "demo_digits.safetensors")
    model, classes = load_for_inference(weights)
    samples = sorted((data / "val").rglob("*.png"))[:: max(n_val // 5, 1)][:5]
    console.print(f"[bold]5. predict[/bold] with {weights}:")
    for r in predict_images(model, classes, [str(s) for s in samples], topk=3):
        truth = Path(r["image"]).parent.name
        top = ", ".join(f"{n} {p:.3f}" for n, _, p in r["top"])
        mark = "[green]ok[/green]" if r["top"][0][0] == truth else "[red]wrong[/red]"
        console.print(f"  {r['image']} (true {truth}): {top}  {mark}")
    explain_demo(run_dir, samples[::2], out / "explain", console)
    ok = res["top1"] >= TARGET_TOP1
    console.print(
        f"\n[bold]{'PASS' if ok else 'FAIL'}[/bold]: val top-1 {res['top1']:.2f}% "
        f"(target >= {TARGET_TOP1}%), "
        f"training {t_train:.0f} s, total {time.perf_counter() - t0:.0f} s.\n"
        f"Everything is in {out}/: run/config.yaml (resolved recipe), run/metrics.jsonl, run/curves.png, "
        f"run/last.ckpt + best.ckpt (resumable), run/demo_digits.safetensors (create_model-loadable), "
        f"explain/ (what the split attention does: figures + explain.json)."
    )
    return ok


def demo_photos(folder: Path) -> list[Path]:
    """Real photos shipped by installed packages, saved as files: scikit-learn's ``china.jpg`` and, when
    scikit-image is installed, its ``chelsea`` (a cat)."""
    import importlib.util

    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    photos = {"china.jpg": lambda: load_sample_image("china.jpg")}
    if importlib.util.find_spec("skimage") is not None:
        from skimage import data as skimage_data

        photos["chelsea.png"] = skimage_data.chelsea
    out = []
    for name, load in photos.items():
        Image.fromarray(load()).save(folder / name)
        out.append(folder / name)
    return out


def explain_demo(run_dir: Path, digits: list[Path], out: Path, console: Any) -> None:
    """Step 6: ``splitattn explain`` on the trained model (a few val digits) and on a real photo through a
    randomly initialised resnest50, printing the scale test's numbers and where the figures are."""

    ckpt = run_dir / "best.ckpt" if (run_dir / "best.ckpt").is_file() else run_dir / "last.ckpt"
    runs = [(load_explain_model(weights=ckpt), [str(d) for d in digits], out / "digits"),
            (load_explain_model("resnest50"), [str(p) for p in demo_photos(out / "photo")], out / "photo")]
    console.print("[bold]6. explain[/bold] (split attention, Grad-CAM per stage, scale test x1 / x1.5 / x2):")
    t0 = time.perf_counter()
    for target, images, folder in runs:
        weights = target.weights if target.random else f"weights {target.weights}"
        record = explain_images(target, images, folder)
        console.print(f"  {target.name}, {weights}: {len(images) * 4} figures + {record['json']}")
        for r in record["images"]:
            preds = ", ".join(f"x{s['scale']:g} {s['prediction']['class']} "
                              f"{s['prediction']['confidence']:.2f}" for s in r["scales"])
            shift = ", ".join(f"x{k:g} {v:.3g}" for k, v in scale_shift(r).items() if k != 1.0)
            console.print(f"    {r['image']}: {preds}; mean |attention change| vs x1: {shift}")
    console.print(f"  explained in {time.perf_counter() - t0:.0f} s; figures in {out}/")


__all__ = ["TARGET_TOP1", "demo_config_path", "demo_photos", "explain_demo", "run_demo"]
