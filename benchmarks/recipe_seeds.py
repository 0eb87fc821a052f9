"""Seed stability of the small-data recipes on real digits pasted on canvases (10 classes), CPU-sized.

    python benchmarks/recipe_seeds.py [--tasks detect segment] [--seeds 0 1 2 3 4] [--iters N]
        [--data DIR] [--json FILE] [--det-config YAML] [--seg-config YAML] [KEY=VALUE ...]

Writes scikit-learn's handwritten digits pasted on noise canvases (``splitattn.data.synthetic``: COCO
layout for detection, ADE20K layout for segmentation; 200 train and 40 val images) under ``--data`` if
missing, then trains configs/detection/shapes_faster_rcnn_resnest14d.yaml and
configs/segmentation/shapes_deeplabv3_resnest14d.yaml once per seed, one run at a time, through the same
config loading and :class:`~splitattn.engine.Trainer` as ``splitattn detect|segment train`` (only the data
paths, ``seed``, ``output`` and, for segmentation, ``num_classes=11`` are set; ``--iters`` stops a run after
N iterations with ``max_steps``, leaving the recipe's schedule as it is). Each run's record: iterations
run, whether and at which iteration the loss went non-finite, the loss of the first and the last 10
iterations, and the validation metric of its last checkpoint (bbox AP / AP50, mIoU). Not a test: minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from splitattn.data.synthetic import make_digits_ade, make_digits_coco
from splitattn.deploy.cpu_features import cpu_description
from splitattn.engine import Trainer, evaluate_checkpoint, load_config, parse_override
from splitattn.errors import TrainingDivergedError
from splitattn.utils.fileio import atomic_write_text

RECIPES = {"detect": ("detection", "configs/detection/shapes_faster_rcnn_resnest14d.yaml"),
           "segment": ("segmentation", "configs/segmentation/shapes_deeplabv3_resnest14d.yaml")}


def make_data(data: Path, task: str) -> dict[str, object]:
    """Write the digits data for ``task`` if missing; the config keys that point at it."""
    if task == "detection":
        root = data / "digits_coco"
        ann = root / "annotations"
        if not (ann / "instances_val2017.json").is_file():
            make_digits_coco(root, "train", 200, 96, seed=0)
            make_digits_coco(root, "val", 40, 96, seed=1)
        return {"train_images": f"{root}/train2017", "train_ann": f"{ann}/instances_train2017.json",
                "val_images": f"{root}/val2017", "val_ann": f"{ann}/instances_val2017.json"}
    root = data / "digits_ade"
    if not (root / "images" / "validation").is_dir():
        make_digits_ade(root, "training", 200, 96, seed=0)
        make_digits_ade(root, "validation", 40, 96, seed=1)
    return {"data_root": str(root), "num_classes": 11}


def losses_of(run_dir: Path) -> list[float]:
    """The per-iteration training losses of a run (``log_period=1``), from its metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["train_loss"] for line in path.read_text().splitlines() if line.strip()]


def run_one(task: str, cfg_file: str, seed: int, iters: int, paths: dict, out: Path,
            extra: dict) -> dict[str, object]:
    """Train one seed; the record of what happened."""
    run_dir = out / f"{task}-seed{seed}"
    overrides = {**paths, "seed": seed, "output": str(run_dir), "overwrite": True, "log_period": 1,
                 "progress_bar": False, "workers": 0, "max_steps": iters, "checkpoint_interval": 0, **extra}
    cfg = load_config(task, cfg_file, overrides)
    trainer = Trainer(cfg)
    rec: dict[str, object] = {"task": task, "seed": seed, "config": cfg_file}
    t0 = time.perf_counter()
    try:
        trainer.fit()
        rec.update(diverged=False, nonfinite_at=None)
    except TrainingDivergedError as e:
        rec.update(diverged=True, nonfinite_at=trainer.step + 1, error=str(e))
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["iterations"] = trainer.step
    rec["s_per_iter"] = round(rec["wall_s"] / max(trainer.step, 1), 3)
    losses = losses_of(run_dir)
    sig = lambda x: float(f"{x:.4g}")  # noqa: E731  (4 significant digits: 0.9497, 3.376e+17)
    rec["loss_first"] = sig(losses[0]) if losses else None
    rec["loss_last10"] = sig(sum(losses[-10:]) / len(losses[-10:])) if losses else None
    rec["loss_max"] = sig(max(losses)) if losses else None
    if not rec["diverged"] and (run_dir / "last.ckpt").is_file():
        metrics = evaluate_checkpoint(cfg, run_dir / "last.ckpt")
        keys = ("bbox_AP", "bbox_AP50") if task == "detection" else ("mIoU", "pixel_acc")
        rec.update({k: round(float(metrics[k]), 4) for k in keys if k in metrics})
    return rec


def hardware() -> dict[str, object]:
    """The CPU (model name and vector ISA flags), torch version and threads, for the record."""
    return {"cpu": cpu_description(), "machine": platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--iters", type=int, default=None, help="iterations per run (default: the recipe's)")
    p.add_argument("--data", default="data", help="folder for the generated datasets")
    p.add_argument("--out", default="runs/recipe-seeds", help="folder for the run folders")
    p.add_argument("--json", default=None, help="write the records here too")
    p.add_argument("--det-config", default=RECIPES["detect"][1])
    p.add_argument("--seg-config", default=RECIPES["segment"][1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run")
    args = p.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    head = {"command": shlex.join([sys.executable, *sys.argv]), **hardware()}
    print(json.dumps(head), flush=True)
    extra = dict(parse_override(text) for text in args.overrides)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    records = []
    for key in args.tasks:
        task = RECIPES[key][0]
        cfg_file = args.det_config if key == "detect" else args.seg_config
        paths = make_data(Path(args.data), task)
        for seed in args.seeds:
            iters = args.iters or load_config(task, cfg_file, paths).max_iter
            rec = run_one(task, cfg_file, seed, iters, paths, Path(args.out), extra)
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "error"}), flush=True)
            if args.json:  # after every run, so an interrupted benchmark keeps what it measured
                atomic_write_text(args.json, json.dumps({**head, "runs": records}, indent=1))
    bad = [f"{r['task']} seed {r['seed']}" for r in records if r["diverged"] or not math.isfinite(
        float(r["loss_last10"] or math.nan))]
    print(f"{len(records) - len(bad)} of {len(records)} runs finite" + (f"; diverged: {', '.join(bad)}"
                                                                      if bad else ""), flush=True)


if __name__ == "__main__":
    main()
