"""``splitattn bench``: side-by-side throughput of splitattn, timm, the official ResNeSt and torchvision.

All models live in one process and are timed in interleaved rounds (round r times every model once, so
machine load drifts hit them alike); warm-up steps are excluded; a model's throughput is its median
round, and a ratio is the median over rounds of the paired per-round ratios. Rows are named
``source:model`` with source ``splitattn``, ``timm``, ``official`` (``resnest.torch``), ``tv``
(torchvision) or ``onnx`` (the splitattn model in onnxruntime, CPU, inference only). Output columns
follow timm's ``benchmark.py`` (``infer_samples_per_sec``, ``infer_step_time`` in ms, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import make_console

DEFAULT_MODELS = ["splitattn:resnest50", "timm:resnest50d", "official:resnest50", "tv:resnet50",
                  "timm:resnet50d"]
REF_RESNEST = "timm:resnest50d"
REF_RESNET = "tv:resnet50"


def build_model(spec: str, num_classes: int = 1000) -> nn.Module:
    """Build ``source:name`` (randomly initialised; weights do not change speed)."""
    source, _, name = spec.partition(":")
    if source in ("splitattn", "onnx"):
        from .. import create_model

        return create_model(name, num_classes=num_classes)
    if source == "timm":
        import timm

        return timm.create_model(name, num_classes=num_classes)
    if source == "official":
        import resnest.torch as official

        return getattr(official, name)(num_classes=num_classes)
    if source == "tv":
        import torchvision

        return torchvision.models.get_model(name, num_classes=num_classes)
    raise ValueError(f"unknown model source in {spec!r}: use splitattn:, timm:, official:, tv: or onnx:")


_VARIANTS = {"": "", "opt": " (optimized)", "fold": " (BN folded only)",
             "ckpt": " (grad checkpointing)", "ckpt-attn": " (attention recompute)"}
INFER_ONLY = ("opt", "fold")
TRAIN_ONLY = ("ckpt", "ckpt-attn")


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``"source:name[+variant][@cl|@nchw]"`` -> ``(source:name, variant, layout)``.

    Variants: ``+opt`` / ``+fold``: optimize_for_inference with / without the fused convs (inference
    only); ``+ckpt``: ``set_grad_checkpointing(True)`` (training only; splitattn and timm models);
    ``+ckpt-attn``: ``set_grad_checkpointing("attn")`` (training only; splitattn models).
    ``@cl`` / ``@nchw``: this row's memory format, overriding ``--channels-last``, so that models can be
    compared each in its best layout within one run.
    """
    rest, _, layout = spec.partition("@")
    base, _, variant = rest.partition("+")
    if variant not in _VARIANTS or layout not in ("", "cl", "nchw"):
        raise ValueError(f"bad model spec {spec!r}: expected SOURCE:NAME[+opt|+fold|+ckpt|+ckpt-attn]"
                         "[@cl|@nchw]")
    source = base.partition(":")[0]
    if (variant in INFER_ONLY or variant == "ckpt-attn") and source != "splitattn":
        raise ValueError(f"bad model spec {spec!r}: +{variant} applies to splitattn: models only")
    if variant == "ckpt" and source not in ("splitattn", "timm"):
        raise ValueError(f"bad model spec {spec!r}: +ckpt applies to splitattn: and timm: models only")
    return base, variant, layout or None


@dataclass
class Runner:
    """One benchmark row: a model prepared for the chosen device, layout, precision and mode."""

    name: str
    params: int
    channels_last: bool = False
    infer: Callable[[], Any] | None = None
    train: Callable[[], Any] | None = None
    infer_times: list[float] = field(default_factory=list)
    train_times: list[float] = field(default_factory=list)
    infer_peak: float | None = None
    train_peak: float | None = None
    train_saved_mb: float | None = None


def saved_activation_mb(step: Callable[[], torch.Tensor]) -> float:
    """MiB of distinct tensor storage autograd saves for backward during ``step()`` (a forward)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad and t.grad_fn is None:  # a parameter: lives anyway
            return t
        st = t.untyped_storage()
        seen[(st.data_ptr(), st.device.index or 0)] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(seen.values()) / 2**20


def _autocast(device: str, amp: str | None) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_runner(spec: str, args: argparse.Namespace, modes: list[str]) -> Runner:
    """Prepare the inference and training closures for one row."""
    device = torch.device(args.device)
    base, variant, layout = parse_spec(spec)
    channels_last = args.channels_last if layout is None else layout == "cl"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    y = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(device)
    x = x.to(device).contiguous(memory_format=fmt)
    label = base + (f"@{layout}" if layout else "") + _VARIANTS[variant]
    model = build_model(base).to(device)
    runner = Runner(label, sum(p.numel() for p in model.parameters()), channels_last)

    if base.startswith("onnx:"):
        runner.infer = _onnx_runner(model, args)
        return runner

    if "infer" in modes and variant not in TRAIN_ONLY:
        m = model.eval()
        if variant:
            from ..inference import optimize_for_inference

            m = optimize_for_inference(model, channels_last=channels_last, fuse=variant == "opt")
        m = m.to(memory_format=fmt)
        if args.compile:
            m = torch.compile(m)

        def infer() -> torch.Tensor:
            with torch.inference_mode(), _autocast(device.type, args.amp):
                return m(x)

        runner.infer = infer
    if "train" in modes and variant not in INFER_ONLY:
        tm = build_model(base).to(device).to(memory_format=fmt).train()
        if variant in TRAIN_ONLY:
            tm.set_grad_checkpointing(True if variant == "ckpt" else "attn")
        opt = torch.optim.SGD(tm.parameters(), lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        fwd = torch.compile(tm) if args.compile else tm

        def forward_loss() -> torch.Tensor:
            with _autocast(device.type, args.amp):
                return F.cross_entropy(fwd(x), y)

        def train() -> torch.Tensor:
            loss = forward_loss()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            return loss

        runner.train = train
        if not args.compile:  # hooks on saved tensors do not see inside a compiled graph
            runner.train_saved_mb = saved_activation_mb(forward_loss)
    return runner


def _onnx_runner(model: nn.Module, args: argparse.Namespace) -> Callable[[], Any]:
    import onnxruntime as ort

    from ..export import export_onnx

    if args.device != "cpu":
        raise ValueError("the onnx: rows run onnxruntime on the CPU; drop them or use --device cpu")
    path = Path(tempfile.mkdtemp(prefix="splitattn-bench-")) / "model.onnx"
    export_onnx(model.eval(), path, image_size=args.img_size, batch_size=2)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: torch.randn(args.batch_size, 3, args.img_size, args.img_size).numpy()}
    return lambda: sess.run(None, feed)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(fn: Callable[[], Any], steps: int, device: str) -> float:
    """Mean seconds per call of ``fn`` over ``steps`` calls."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _peak_mb(fn: Callable[[], Any], device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Build every row, warm up, time interleaved rounds; one result dict per row (timm column names)."""
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    specs = list(args.models)
    ours = [parse_spec(s) for s in args.models if s.startswith("splitattn:")]
    if args.optimized:
        # One "fold" and one "opt" row per plain splitattn row (not per +ckpt row of the same model).
        extra = [f"{b}+{v}" + (f"@{lay}" if lay else "")
                 for b, var, lay in ours if not var for v in ("fold", "opt")]
        specs += [e for e in dict.fromkeys(extra) if e not in specs]
    if args.onnx:  # onnxruntime takes NCHW arrays: one row per model whatever its layouts
        specs += ["onnx:" + b.split(":", 1)[1] for b in dict.fromkeys(b for b, _, _ in ours)]
    runners = []
    for spec in specs:
        log(f"preparing {spec}")
        runners.append(make_runner(spec, args, modes))
    for mode in modes:
        active = [(r, getattr(r, mode)) for r in runners if getattr(r, mode) is not None]
        for r, fn in active:
            for _ in range(args.warmup):
                fn()
            setattr(r, f"{mode}_peak", _peak_mb(fn, args.device))
        for i in range(args.rounds):
            # Rotate the order every round so that no model always runs after the same one (allocator
            # and cache state left by the previous model would otherwise bias the same pairs each round).
            k = i % len(active)
            for r, fn in active[k:] + active[:k]:
                getattr(r, f"{mode}_times").append(time_steps(fn, args.steps, args.device))
            log(f"{mode} round {i + 1}/{args.rounds} done")
    return [_row(r, runners, args) for r in runners]


def _paired_ratio(a: list[float], b: list[float]) -> float | None:
    """Median over rounds of ``b[i] / a[i]``: how many times faster ``a`` is than ``b``."""
    if not a or not b:
        return None
    return statistics.median(tb / ta for ta, tb in zip(a, b))


def _row(r: Runner, runners: list[Runner], args: argparse.Namespace) -> dict[str, Any]:
    ref_resnest = next((x for x in runners if x.name == args.ref_resnest), None)
    ref_resnet = next((x for x in runners if x.name == args.ref_resnet), None)
    row: dict[str, Any] = dict(model=r.name, param_count=round(r.params / 1e6, 2))
    for mode in ("infer", "train"):
        times = getattr(r, f"{mode}_times")
        if not times:
            continue
        t = statistics.median(times)
        row.update({
            f"{mode}_samples_per_sec": round(args.batch_size / t, 2),
            f"{mode}_step_time": round(t * 1e3, 3),
            f"{mode}_batch_size": args.batch_size,
            f"{mode}_img_size": args.img_size,
        })
        for key, other in (("vs_timm_resnest50d", ref_resnest), ("vs_resnet50", ref_resnet)):
            ratio = _paired_ratio(times, getattr(other, f"{mode}_times")) if other else None
            row[f"{mode}_{key}"] = round(ratio, 3) if ratio is not None else None
        peak = getattr(r, f"{mode}_peak")
        if peak is not None:
            row[f"{mode}_mem_peak_mb"] = round(peak, 1)
    if r.train_saved_mb is not None:
        row["train_saved_activations_mb"] = round(r.train_saved_mb, 1)
    row.update(device=args.device, amp=args.amp or "fp32", channels_last=r.channels_last,
               compile=args.compile, threads=args.threads if args.device == "cpu" else None,
               torch=torch.__version__)
    return row


def render(rows: list[dict[str, Any]], console: Any = None) -> None:
    from rich.table import Table

    console = console or make_console()
    cols = [("model", "model"), ("infer img/s", "infer_samples_per_sec"), ("ms", "infer_step_time"),
            ("x timm S50d", "infer_vs_timm_resnest50d"), ("x tv R50", "infer_vs_resnet50"),
            ("train img/s", "train_samples_per_sec"), ("x timm S50d ", "train_vs_timm_resnest50d"),
            ("x tv R50 ", "train_vs_resnet50"), ("saved act MiB", "train_saved_activations_mb"),
            ("peak MiB (inf/train)", None), ("params M", "param_count")]
    r0 = rows[0]
    batch = r0.get("infer_batch_size") or r0.get("train_batch_size")
    size = r0.get("infer_img_size") or r0.get("train_img_size")
    table = Table(title=f"{r0['device']}, {r0['amp']}, batch {batch}, {size} px, channels_last="
                        f"{r0['channels_last']}, compile={r0['compile']}, torch {r0['torch']}")
    for title, _ in cols:
        table.add_column(title, justify="left" if title == "model" else "right", no_wrap=True)
    for row in rows:
        cells = []
        for _, key in cols:
            if key is None:
                a, b = row.get("infer_mem_peak_mb"), row.get("train_mem_peak_mb")
                cells.append("-" if a is None and b is None else f"{a or '-'} / {b or '-'}")
            else:
                v = row.get(key)
                is_ratio = isinstance(v, float) and "vs" in key
                cells.append("-" if v is None else f"{v:.3f}" if is_ratio else str(v))
        table.add_row(*cells)
    console.print(table)


def write_outputs(rows: list[dict[str, Any]], csv_path: str | None, json_path: str | None) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n")
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="SOURCE:NAME[+VARIANT][@cl|@nchw]",
                   help=f"rows to time (default: {' '.join(DEFAULT_MODELS)}); a @cl / @nchw suffix sets "
                        "that row's memory format; +ckpt / +ckpt-attn time training with gradient "
                        "checkpointing / Split-Attention recompute, +opt / +fold optimized inference")
    p.add_argument("--mode", choices=["infer", "train", "both"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--optimized", action="store_true",
                   help="add two inference rows per splitattn model: BN folded only, and "
                        "optimize_for_inference (folded + ReLU/residual fused, prepacked oneDNN on CPU)")
    p.add_argument("--onnx", action="store_true", help="add an onnxruntime (CPU) row per splitattn model")
    p.add_argument("--ref-resnest", default=REF_RESNEST,
                   help="row the *_vs_timm_resnest50d ratios divide by (must be among --models)")
    p.add_argument("--ref-resnet", default=REF_RESNET,
                   help="row the *_vs_resnet50 ratios divide by (must be among --models)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and onnxruntime)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and mode")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--csv", default=None, help="write the rows as CSV")
    p.add_argument("--json", default=None, help="write the rows as JSON")


@contextlib.contextmanager
def _quiet_logs(enabled: bool) -> Iterator[Callable[[str], None]]:
    console = make_console()
    yield (lambda msg: console.log(msg)) if enabled else (lambda msg: None)


def run(args: argparse.Namespace) -> int:
    with _quiet_logs(not args.quiet) as log:
        rows = run_benchmark(args, log)
    render(rows)
    write_outputs(rows, args.csv, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and memory vs timm, the official ResNeSt and torchvision")
    add_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
