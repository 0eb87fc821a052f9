"""Side-by-side throughput of splitattn, timm, the official ResNeSt and torchvision (``benchmarks/bench.py``).

All models live in one process and are timed in interleaved rounds (round r times every model once, so
machine load drifts hit them alike); warm-up steps are excluded; a model's throughput is its median
round, and a ratio is the median over rounds of the paired per-round ratios. Rows are named
``source:model`` with source ``splitattn``, ``timm``, ``official`` (``resnest.torch``), ``tv``
(torchvision) or ``onnx`` (the splitattn model in onnxruntime, CPU, inference only). Output columns
follow timm's ``benchmark.py`` (``infer_samples_per_sec``, ``infer_step_time`` in ms, ...). Inference
rows also give the model's multiply-adds per image (``gmacs``), their rate (``infer_gmac_per_s``) and,
given the CPU's GEMM roofs (:mod:`roofs`), the fraction of the roof of the row's format
(``infer_roof_fraction``).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paired import median_ratio
from roofs import load_roofs, measure_roofs, roof_columns, roof_rates, row_format
from splitattn.deploy.cpu_features import cpu_description
from splitattn.errors import InputError
from splitattn.utils.amp import autocast, make_grad_scaler
from splitattn.utils.fileio import atomic_write_text
from splitattn.utils.flops import count_macs

DEFAULT_MODELS = ("splitattn:resnest50", "timm:resnest50d", "official:resnest50", "tv:resnet50",
                  "timm:resnet50d")
REF_RESNEST = "timm:resnest50d"
REF_RESNET = "tv:resnet50"

_VARIANTS = {"": "", "opt": " (optimized)", "fold": " (BN folded only)",
             "ckpt": " (grad checkpointing)", "ckpt-attn": " (attention recompute)",
             "int8": " (INT8)", "bf16": " (bf16)", "bf16-compile": " (bf16, compiled)"}
# Inference rows in another precision (splitattn.quantize / a bf16 model), CPU INT8 on any source but onnx.
LOW_PRECISION = ("int8", "bf16", "bf16-compile")
INFER_ONLY = ("opt", "fold", *LOW_PRECISION)
TRAIN_ONLY = ("ckpt", "ckpt-attn")
SPLITATTN_ONLY = ("opt", "fold", "ckpt-attn")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class BenchConfig:
    """What :func:`run_benchmark` times and how.

    Attributes:
        models: row specs ``SOURCE:NAME[+VARIANT][@cl|@nchw]`` (see :func:`parse_spec`).
        mode: ``"infer"``, ``"train"`` or ``"both"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: images per step.
        img_size: input side.
        amp: ``"bf16"``, ``"fp16"`` or ``None`` (fp32).
        channels_last: NHWC models and inputs (a row's ``@cl`` / ``@nchw`` overrides it).
        compile: ``torch.compile`` every model.
        optimized: add a BN-folded and an optimize_for_inference row per plain splitattn row.
        onnx: add an onnxruntime (CPU) row per splitattn model.
        ref_resnest: the row the ``*_vs_timm_resnest50d`` ratios divide by.
        ref_resnet: the row the ``*_vs_resnet50`` ratios divide by.
        threads: CPU threads (torch and onnxruntime).
        warmup: untimed steps per model and mode.
        rounds: interleaved timed rounds.
        steps: timed steps per model per round.
        roofs: a ``benchmarks/cpu_peak.py --out`` JSON file of this CPU's GEMM roofs (CPU runs).
        measure_roofs: measure the roofs in this process before the rows (CPU runs; ignores ``roofs``).
    """

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    mode: str = "both"
    device: str = field(default_factory=_default_device)
    batch_size: int = 8
    img_size: int = 224
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    optimized: bool = False
    onnx: bool = False
    ref_resnest: str = REF_RESNEST
    ref_resnet: str = REF_RESNET
    threads: int = 2
    warmup: int = 2
    rounds: int = 5
    steps: int = 3
    roofs: str | None = None
    measure_roofs: bool = False


def build_model(spec: str, num_classes: int = 1000) -> nn.Module:
    """Build ``source:name`` (randomly initialised; weights do not change speed)."""
    source, _, name = spec.partition(":")
    if source in ("splitattn", "onnx"):
        from splitattn.models._factory import create_model

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
    raise InputError(f"unknown model source in {spec!r}: use splitattn:, timm:, official:, tv: or onnx:")


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``"source:name[+variant][@cl|@nchw]"`` -> ``(source:name, variant, layout)``.

    Variants: ``+opt`` / ``+fold``: optimize_for_inference with / without the fused convs (inference
    only); ``+ckpt``: ``set_grad_checkpointing(True)`` (training only; splitattn and timm models);
    ``+ckpt-attn``: ``set_grad_checkpointing("attn")`` (training only; splitattn models);
    ``+int8``: :func:`splitattn.quantize` calibrated on random batches of the row's input (CPU; for
    ``onnx:`` rows the QDQ model of :func:`~splitattn.deploy.export.export_onnx_int8`); ``+bf16``: bf16
    weights and inputs, through ``optimize_for_inference(dtype=torch.bfloat16)`` for splitattn models;
    ``+bf16-compile``: the same through :func:`splitattn.compile_for_inference` (inductor with freezing,
    called without dynamo), as the INT8 rows run.
    ``@cl`` / ``@nchw``: this row's memory format, overriding ``channels_last``, so that models can be
    compared each in its best layout within one run.
    """
    rest, _, layout = spec.partition("@")
    base, _, variant = rest.partition("+")
    if variant not in _VARIANTS or layout not in ("", "cl", "nchw"):
        raise InputError(f"bad model spec {spec!r}: expected SOURCE:NAME[+opt|+fold|+ckpt|+ckpt-attn|"
                         "+int8|+bf16|+bf16-compile][@cl|@nchw]")
    source = base.partition(":")[0]
    if source == "onnx" and variant not in ("", "int8"):
        raise InputError(f"bad model spec {spec!r}: onnx: rows take no variant but +int8 (QDQ INT8)")
    if variant in SPLITATTN_ONLY and source != "splitattn":
        raise InputError(f"bad model spec {spec!r}: +{variant} applies to splitattn: models only")
    if variant == "ckpt" and source not in ("splitattn", "timm"):
        raise InputError(f"bad model spec {spec!r}: +ckpt applies to splitattn: and timm: models only")
    return base, variant, layout or None


def row_label(spec: str) -> str:
    """The name a row spec's results carry: ``"tv:resnet50+int8@cl"`` -> ``"tv:resnet50@cl (INT8)"``."""
    base, variant, layout = parse_spec(spec)
    return base + (f"@{layout}" if layout else "") + _VARIANTS[variant]


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
    gmacs: float | None = None
    fmt: str | None = None


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


def _infer_fn(model: nn.Module, variant: str, x: torch.Tensor, cfg: BenchConfig,
              channels_last: bool) -> Callable[[], torch.Tensor]:
    m = model.eval()
    if variant in INFER_ONLY:
        from splitattn.deploy.fold import optimize_for_inference

        m = optimize_for_inference(model, channels_last=channels_last, fuse=variant == "opt")
    m = m.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg.compile:
        m = torch.compile(m)
    device = x.device

    def infer() -> torch.Tensor:
        with torch.inference_mode(), autocast(device, cfg.amp or "off"):
            return m(x)

    return infer


def _train_fns(base: str, variant: str, x: torch.Tensor, y: torch.Tensor, cfg: BenchConfig,
               channels_last: bool) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """``(train step, forward + loss only)`` of a fresh model of ``base``."""
    device = x.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tm = build_model(base).to(device).to(memory_format=fmt).train()
    if variant in TRAIN_ONLY:
        tm.set_grad_checkpointing(True if variant == "ckpt" else "attn")
    opt = torch.optim.SGD(tm.parameters(), lr=1e-4, momentum=0.9)
    scaler = make_grad_scaler(device, cfg.amp or "off")
    fwd = torch.compile(tm) if cfg.compile else tm

    def forward_loss() -> torch.Tensor:
        with autocast(device, cfg.amp or "off"):
            return F.cross_entropy(fwd(x), y)

    def train() -> torch.Tensor:
        loss = forward_loss()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return train, forward_loss


def make_runner(spec: str, cfg: BenchConfig, modes: list[str]) -> Runner:
    """Prepare the inference and training closures for one row."""
    device = torch.device(cfg.device)
    base, variant, layout = parse_spec(spec)
    channels_last = cfg.channels_last if layout is None else layout == "cl"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, generator=gen)
    y = torch.randint(0, 1000, (cfg.batch_size,), generator=gen).to(device)
    x = x.to(device).contiguous(memory_format=fmt)
    label = row_label(spec)
    model = build_model(base).to(device)
    runner = Runner(label, sum(p.numel() for p in model.parameters()), channels_last,
                    gmacs=count_macs(model, (3, cfg.img_size, cfg.img_size)) / 1e9
                    if "infer" in modes and variant not in TRAIN_ONLY else None,
                    fmt=row_format(variant, cfg.amp))
    if base.startswith("onnx:"):
        runner.infer = _onnx_runner(model, cfg, int8=variant == "int8")
        return runner
    if "infer" in modes and variant in LOW_PRECISION:
        runner.infer = _low_precision_fn(base, model, variant, x, cfg, channels_last)
    elif "infer" in modes and variant not in TRAIN_ONLY:
        runner.infer = _infer_fn(model, variant, x, cfg, channels_last)
    if "train" in modes and variant not in INFER_ONLY:
        runner.train, forward_loss = _train_fns(base, variant, x, y, cfg, channels_last)
        if not cfg.compile:  # hooks on saved tensors do not see inside a compiled graph
            runner.train_saved_mb = saved_activation_mb(forward_loss)
    return runner


def _calibration(cfg: BenchConfig, n: int = 2) -> list[torch.Tensor]:
    # Speed does not depend on the calibrated ranges: random batches of the benchmark's input.
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, generator=gen) for _ in range(n)]


def compiled_with_freezing(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A closure computing ``model(x)`` without autograd through ``torch.compile`` with inductor's freezing:
    the route a user takes by hand, behind dynamo's guards at every call (the ``+bf16-compile`` rows ran it
    until the library's :func:`compiled_program`; ``compiled_route_ab.py`` compares the two). A strict
    ``torch.export`` after the first call empties dynamo's cache, and the model then compiles again without
    freezing: build such closures after every export of the run."""
    import torch._inductor.config as inductor_config

    compiled, first = torch.compile(model), True

    def infer_compiled() -> torch.Tensor:
        nonlocal first
        with torch.no_grad():
            if not first:  # the same input every call: nothing recompiles
                return compiled(x)
            # Freezing (weights as constants, pre-packed for oneDNN) is read when dynamo compiles; patching
            # inductor's config around every call would add a few hundred microseconds to each.
            with inductor_config.patch(freezing=True):
                out = compiled(x)
            first = False
            return out

    return infer_compiled


def compiled_program(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A closure computing ``model(x)`` through :func:`splitattn.compile_for_inference` (inductor with
    freezing, called without dynamo), as the ``+bf16-compile`` rows run (the first call compiles)."""
    from splitattn.deploy.compiled import compile_for_inference

    program = compile_for_inference(model, tuple(x.shape[1:]),
                                    channels_last=x.is_contiguous(memory_format=torch.channels_last))
    return lambda: program(x)


def _low_precision_fn(base: str, model: nn.Module, variant: str, x: torch.Tensor, cfg: BenchConfig,
                      channels_last: bool) -> Callable[[], torch.Tensor]:
    """A ``+int8`` (:func:`splitattn.quantize`, compiled) or ``+bf16`` inference closure."""
    if variant == "int8":
        from splitattn.deploy.quantization import quantize

        if cfg.device != "cpu":
            raise InputError("+int8 rows run on the CPU (oneDNN INT8); drop them or use --device cpu")
        qmodel = quantize(model.eval(), _calibration(cfg))
        x_nchw = x.contiguous()  # the layout the INT8 program was compiled for
        return lambda: qmodel(x_nchw)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if base.startswith("splitattn:"):
        from splitattn.deploy.fold import optimize_for_inference

        m = optimize_for_inference(model, channels_last=channels_last, dtype=torch.bfloat16)
    else:
        m = model.eval().to(torch.bfloat16).to(memory_format=fmt)
    xb = x.to(torch.bfloat16).contiguous(memory_format=fmt)
    if variant == "bf16-compile":
        return compiled_program(m, xb)
    if cfg.compile:
        m = torch.compile(m)

    def infer() -> torch.Tensor:
        with torch.inference_mode():
            return m(xb)

    return infer


def _onnx_runner(model: nn.Module, cfg: BenchConfig, int8: bool = False) -> Callable[[], Any]:
    from splitattn.deploy.export import export_onnx, export_onnx_int8
    from splitattn.errors import require

    ort: Any = require("onnxruntime", "export", "the onnx: benchmark rows")
    if cfg.device != "cpu":
        raise InputError("the onnx: rows run onnxruntime on the CPU; drop --onnx or use --device cpu")
    path = Path(tempfile.mkdtemp(prefix="splitattn-bench-")) / "model.onnx"
    if int8:
        export_onnx_int8(model.eval(), path, _calibration(cfg), image_size=cfg.img_size)
    else:
        export_onnx(model.eval(), path, image_size=cfg.img_size, batch_size=2)
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size).numpy()}
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


def expand_specs(cfg: BenchConfig) -> list[str]:
    """``cfg.models`` plus the rows ``optimized`` and ``onnx`` add."""
    specs = list(cfg.models)
    ours = [parse_spec(s) for s in cfg.models if s.startswith("splitattn:")]
    if cfg.optimized:
        # One "fold" and one "opt" row per plain splitattn row (not per +ckpt row of the same model).
        extra = [f"{b}+{v}" + (f"@{lay}" if lay else "")
                 for b, var, lay in ours if not var for v in ("fold", "opt")]
        specs += [e for e in dict.fromkeys(extra) if e not in specs]
    if cfg.onnx:  # onnxruntime takes NCHW arrays: one row per model whatever its layouts
        specs += ["onnx:" + b.split(":", 1)[1] for b in dict.fromkeys(b for b, _, _ in ours)]
    return specs


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Build every row, warm up, time interleaved rounds.

    Returns:
        One dict per row with timm's column names (``infer_samples_per_sec``, ``infer_step_time`` in
        ms, ``train_*``, ``*_vs_timm_resnest50d`` / ``*_vs_resnet50`` paired ratios, peak memory...) and
        the ms per step of each round (``infer_round_ms``, in round order: rows pair round by round).
    """
    if cfg.mode not in ("infer", "train", "both"):
        raise InputError(f"mode must be 'infer', 'train' or 'both', got {cfg.mode!r}")
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    elif cfg.roofs or cfg.measure_roofs:
        raise InputError(f"--roofs / --measure-roofs are CPU GEMM roofs, but the device is {cfg.device!r}; "
                         "use --device cpu or drop them")
    roofs = (roof_rates(measure_roofs(cfg.threads, log)) if cfg.measure_roofs
             else load_roofs(cfg.roofs, threads=cfg.threads) if cfg.roofs else None)
    modes = ["infer", "train"] if cfg.mode == "both" else [cfg.mode]
    runners = []
    for spec in expand_specs(cfg):
        log(f"preparing {spec}")
        runners.append(make_runner(spec, cfg, modes))
    for mode in modes:
        active = [(r, getattr(r, mode)) for r in runners if getattr(r, mode) is not None]
        for r, fn in active:
            for _ in range(cfg.warmup):
                fn()
            setattr(r, f"{mode}_peak", _peak_mb(fn, cfg.device))
        for i in range(cfg.rounds):
            # Rotate the order every round so that no model always runs after the same one (allocator
            # and cache state left by the previous model would otherwise bias the same pairs each round).
            k = i % len(active)
            for r, fn in active[k:] + active[:k]:
                getattr(r, f"{mode}_times").append(time_steps(fn, cfg.steps, cfg.device))
            log(f"{mode} round {i + 1}/{cfg.rounds} done")
    return [_row(r, runners, cfg, roofs) for r in runners]


def _row(r: Runner, runners: list[Runner], cfg: BenchConfig, roofs: dict[str, float | None] | None = None,
         ) -> dict[str, Any]:
    ref_resnest = next((x for x in runners if x.name == cfg.ref_resnest), None)
    ref_resnet = next((x for x in runners if x.name == cfg.ref_resnet), None)
    row: dict[str, Any] = dict(model=r.name, param_count=round(r.params / 1e6, 2))
    for mode in ("infer", "train"):
        times = getattr(r, f"{mode}_times")
        if not times:
            continue
        t = statistics.median(times)
        row.update({
            f"{mode}_samples_per_sec": round(cfg.batch_size / t, 2),
            f"{mode}_step_time": round(t * 1e3, 3),
            f"{mode}_batch_size": cfg.batch_size,
            f"{mode}_img_size": cfg.img_size,
            f"{mode}_round_ms": [round(x * 1e3, 3) for x in times],  # for paired ratios of any two rows
        })
        for key, other in (("vs_timm_resnest50d", ref_resnest), ("vs_resnet50", ref_resnet)):
            ratio = median_ratio(times, getattr(other, f"{mode}_times")) if other else None
            row[f"{mode}_{key}"] = round(ratio, 3) if ratio is not None else None
        if mode == "infer" and r.gmacs is not None:
            row.update(gmacs=round(r.gmacs, 3), **roof_columns(cfg.batch_size / t, r.gmacs, r.fmt, roofs))
        peak = getattr(r, f"{mode}_peak")
        if peak is not None:
            row[f"{mode}_mem_peak_mb"] = round(peak, 1)
    if r.train_saved_mb is not None:
        row["train_saved_activations_mb"] = round(r.train_saved_mb, 1)
    row.update(device=cfg.device, amp=cfg.amp or "fp32", channels_last=r.channels_last,
               compile=cfg.compile, threads=cfg.threads if cfg.device == "cpu" else None,
               torch=torch.__version__, cpu=cpu_description() if cfg.device == "cpu" else None)
    return row


def render(rows: list[dict[str, Any]], console: Any) -> None:
    """Print ``rows`` as one rich table on ``console`` (a ``rich.console.Console``)."""
    from rich.table import Table

    cols = [("model", "model"), ("infer img/s", "infer_samples_per_sec"), ("ms", "infer_step_time"),
            ("x timm S50d", "infer_vs_timm_resnest50d"), ("x tv R50", "infer_vs_resnet50"),
            ("GMAC/s", "infer_gmac_per_s"), ("x roof", "infer_roof_fraction"),
            ("train img/s", "train_samples_per_sec"), ("x timm S50d ", "train_vs_timm_resnest50d"),
            ("x tv R50 ", "train_vs_resnet50"), ("saved act MiB", "train_saved_activations_mb"),
            ("peak MiB (inf/train)", None), ("params M", "param_count")]
    r0 = rows[0]
    batch = r0.get("infer_batch_size") or r0.get("train_batch_size")
    size = r0.get("infer_img_size") or r0.get("train_img_size")
    table = Table(title=f"{r0['device']}, {r0['amp']}, batch {batch}, {size} px, channels_last="
                        f"{r0['channels_last']}, compile={r0['compile']}, torch {r0['torch']}"
                        + (f", {r0['cpu']}" if r0.get("cpu") else ""))
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
                is_ratio = isinstance(v, float) and ("vs" in key or "roof" in key)
                cells.append("-" if v is None else f"{v:.3f}" if is_ratio else str(v))
        table.add_row(*cells)
    console.print(table)


def write_outputs(rows: list[dict[str, Any]], csv_path: str | None = None, json_path: str | None = None,
                  ) -> None:
    """Write ``rows`` as JSON (a list of objects) and/or CSV (one column per scalar key seen in any row;
    the per-round times stay in the JSON)."""
    if json_path:
        atomic_write_text(json_path, json.dumps(rows, indent=2) + "\n")
    if csv_path:
        buf = io.StringIO(newline="")
        keys = dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, list))
        w = csv.DictWriter(buf, fieldnames=list(keys), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())


__all__ = ["BenchConfig", "DEFAULT_MODELS", "REF_RESNEST", "REF_RESNET", "Runner", "build_model",
           "compiled_program", "compiled_with_freezing", "expand_specs", "make_runner", "parse_spec",
           "render", "row_label", "run_benchmark", "saved_activation_mb", "time_steps", "write_outputs"]
