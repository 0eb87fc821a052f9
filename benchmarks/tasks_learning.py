"""Learning runs on the synthetic shapes: Faster R-CNN + FPN (bbox AP50) and DeepLabV3 (mIoU), CPU-sized.

    python benchmarks/tasks_learning.py detect  [--data data] [KEY=VALUE ...]
    python benchmarks/tasks_learning.py segment [--data data] [KEY=VALUE ...]

Writes the shapes data (COCO layout for detection, ADE20K layout for segmentation) under ``--data`` if
missing, trains with configs/detection/shapes_faster_rcnn_resnest14d.yaml or
configs/segmentation/shapes_deeplabv3_resnest14d.yaml through the same engine as ``splitattn detect|segment
train``, and prints the final metrics with the wall time. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from splitattn.data.synthetic import make_shapes_ade, make_shapes_coco
from splitattn.engine import load_config, parse_override, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["detect", "segment"])
    p.add_argument("--data", default="data", help="folder for the generated datasets")
    p.add_argument("--train-images", type=int, default=160)
    p.add_argument("--val-images", type=int, default=40)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args()
    data = Path(args.data)
    if args.task == "detect":
        root = data / "shapes"
        if not (root / "annotations" / "instances_val2017.json").is_file():
            make_shapes_coco(root, "train", args.train_images, args.size, seed=0)
            make_shapes_coco(root, "val", args.val_images, args.size, seed=1)
        cfg_file, task = "configs/detection/shapes_faster_rcnn_resnest14d.yaml", "detection"
        ann = root / "annotations"
        paths = {"train_images": f"{root}/train2017", "train_ann": f"{ann}/instances_train2017.json",
                 "val_images": f"{root}/val2017", "val_ann": f"{ann}/instances_val2017.json"}
    else:
        root = data / "shapes_ade"
        if not (root / "images" / "validation").is_dir():
            make_shapes_ade(root, "training", args.train_images, args.size, seed=0)
            make_shapes_ade(root, "validation", args.val_images, args.size, seed=1)
        cfg_file, task = "configs/segmentation/shapes_deeplabv3_resnest14d.yaml", "segmentation"
        paths = {"data_root": str(root)}
    overrides = {**paths, "output": f"runs/learning-{args.task}",
                 **dict(parse_override(text) for text in args.overrides)}
    cfg = load_config(task, cfg_file, overrides)
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    print(json.dumps({"task": task, "wall_s": round(wall, 1), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), **metrics}))


if __name__ == "__main__":
    main()
