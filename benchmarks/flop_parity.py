"""ResNeSt-50 next to ResNet-50 on this CPU in INT8 and bf16: the speed ratio against FLOP parity and the
fraction of the roof, with a verdict against the bar, in one command.

For each batch size, one bench run (:func:`harness.run_benchmark`: every row in one process, paired
interleaved rounds) times splitattn resnest50 and torchvision resnet50 in each program, both models through
the same route: ``int8`` (:func:`splitattn.quantize`, compiled), ``bf16`` (bf16 weights through
:func:`splitattn.compile_for_inference`: the bench's ``+bf16-compile`` rows) and, for a check that any CPU can
decide, ``fp32`` (eager). Per program and batch it prints both models' img/s, the median of the paired
per-round ratios (resnest50's throughput over resnet50's), the MAC ratio of the two models, resnest50's
GMAC/s and its fraction of the roof of its format (:mod:`roofs`: measured before and after the runs, the
higher of the two, unless ``--roofs`` names a file), and the verdict (default bar: ratio >= 0.76 and roof
fraction >= 0.90).

The bar is set for a CPU with the format's own instructions (INT8: avx512_vnni, avx_vnni or amx_int8;
bf16: avx512_bf16 or amx_bf16). On a CPU without them the figures are printed and the verdict says that the
bar cannot be decided there, never that it is met. ``--fp32-rows`` adds the rows that give the scale
(timm resnest50d in fp32 and splitattn resnest50 ``optimize_for_inference``, channels_last) and every
row's paired ratio to timm's. ``--out PREFIX`` writes ``PREFIX.json`` (machine, roofs, every row with its
per-round times, the verdicts) and ``PREFIX.md`` (the tables).

The rest of a report on the bar: ``profile_ops.py`` (time per op class), ``program_calls.py`` (calls per
step), ``quantize_accuracy.py --compile`` and ``digits_int8_accuracy.py`` (accuracy).

    python benchmarks/flop_parity.py --fp32-rows --out benchmarks/results/flop_parity_<cpu>
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import BenchConfig, row_label, run_benchmark
from paired import median_ratio
from roofs import NATIVE_FLAGS, load_roofs, measure_roofs, roof_columns, roof_rates
from splitattn.deploy.cpu_features import ISA_FLAGS, cpu_description, cpu_flags
from splitattn.utils.fileio import atomic_write_text

PROGRAMS = {"int8": "int8", "bf16": "bf16-compile", "fp32": ""}  # program -> the bench's row variant
# The instructions of each format, one of which the CPU of the bar has (fp32: any CPU).
BAR_FLAGS: dict[str, tuple[str, ...]] = {"int8": NATIVE_FLAGS["int8"], "bf16": NATIVE_FLAGS["bf16"],
                                         "fp32": ()}


@dataclass(frozen=True)
class Bar:
    """What a program must reach: ``min_ratio`` x the reference's throughput, ``min_roof`` of the roof."""

    min_ratio: float = 0.76
    min_roof: float = 0.90


def row_spec(model: str, program: str) -> str:
    """The bench row of ``model`` (``source:name``) in ``program``, channels_last."""
    variant = PROGRAMS[program]
    return f"{model}{'+' + variant if variant else ''}@cl"


def fp32_specs(model: str, timm_model: str) -> list[str]:
    """The scale rows: timm's model in fp32 and ours through ``optimize_for_inference``."""
    return [f"{timm_model}@cl", f"{model}+opt@cl"]


def verdict(rows: Iterable[dict[str, Any]], program: str, model: str, reference: str,
            flags: Iterable[str], bar: Bar) -> dict[str, Any]:
    """``model`` against ``reference`` in ``program``, from one bench run's rows (with ``infer_round_ms``).

    Returns:
        The figures (``ratio``: median over rounds of the paired throughput ratio; ``mac_ratio``;
        ``roof_fraction`` of ``model``), whether each part of ``bar`` holds, and ``verdict``: ``"met"``,
        ``"not met"`` or ``"not decidable here"`` (the CPU lacks the format's instructions), with ``why``.
    """
    by_label = {r["model"]: r for r in rows}
    a, b = by_label[row_label(row_spec(model, program))], by_label[row_label(row_spec(reference, program))]
    ratio = median_ratio(a["infer_round_ms"], b["infer_round_ms"])
    roof = a.get("infer_roof_fraction")
    ratio_ok = ratio is not None and ratio >= bar.min_ratio
    roof_ok = roof is not None and roof >= bar.min_roof
    needed = BAR_FLAGS[program]
    short = []
    if not ratio_ok:
        short.append("no paired ratio" if ratio is None else f"ratio {ratio:.3f} < {bar.min_ratio}")
    if not roof_ok:
        short.append(f"no measured {a.get('roof_format')} roof" if roof is None
                     else f"roof fraction {roof:.3f} < {bar.min_roof}")
    if needed and not set(flags).intersection(needed):
        status, why = "not decidable here", f"the bar is set for a CPU with {' or '.join(needed)}"
        if short:
            why += f"; here {', '.join(short)}"
    else:
        status, why = ("not met", "; ".join(short)) if short else ("met", "")
    return dict(program=program, batch=a["infer_batch_size"], model=a["model"], reference=b["model"],
                model_img_s=a["infer_samples_per_sec"], reference_img_s=b["infer_samples_per_sec"],
                ratio=None if ratio is None else round(ratio, 3), mac_ratio=round(b["gmacs"] / a["gmacs"], 3),
                min_ratio=bar.min_ratio, gmac_per_s=a.get("infer_gmac_per_s"), roof_fraction=roof,
                reference_roof_fraction=b.get("infer_roof_fraction"), min_roof=bar.min_roof,
                ratio_ok=ratio_ok, roof_ok=roof_ok, verdict=status, why=why)


def _cell(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(report: dict[str, Any]) -> str:
    """The report's verdicts and rows as Markdown tables, headed by the machine and the command."""
    roofs = ", ".join(f"{k} {_cell(v, 1) if v else 'not measured (emulated)'}"
                      for k, v in report["roofs"].items())
    name, ref = (report[k].split(":", 1)[-1] for k in ("model", "reference"))
    lines = [f"{name} / {ref}, FLOP parity and roof ({report['date']})", "",
             f"- CPU: {report['cpu']}; flags {' '.join(report['flags']) or 'none of ' + ' '.join(ISA_FLAGS)}",
             f"- torch {report['torch']}, {report['threads']} threads, {report['img_size']} px, "
             f"{report['rounds']} rounds x {report['steps']} steps",
             f"- roofs, GMAC/s: {roofs}", f"- command: `{report['command']}`", "",
             f"| program | batch | {name} img/s | {ref} img/s | ratio (paired) | MAC ratio | {name} GMAC/s "
             "| x roof | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for v in report["verdicts"]:
        note = f"{v['verdict']}" + (f" ({v['why']})" if v["why"] else "")
        lines.append(f"| {v['program']} | {v['batch']} | {_cell(v['model_img_s'], 2)} | "
                     f"{_cell(v['reference_img_s'], 2)} | {_cell(v['ratio'])} | {_cell(v['mac_ratio'])} | "
                     f"{_cell(v['gmac_per_s'], 1)} | {_cell(v['roof_fraction'])} | {note} |")
    lines += ["", "| batch | row | img/s | ms | GMAC/s | x roof | x timm fp32 (paired) |",
              "|---|---|---|---|---|---|---|"]
    for batch, rows in report["rows"].items():
        for r in rows:
            lines.append(f"| {batch} | {r['model']} | {_cell(r['infer_samples_per_sec'], 2)} | "
                         f"{_cell(r['infer_step_time'], 1)} | {_cell(r.get('infer_gmac_per_s'), 1)} | "
                         f"{_cell(r.get('infer_roof_fraction'))} | "
                         f"{_cell(r.get('infer_vs_timm_resnest50d'))} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the roofs (or load them), run one bench per batch size, measure the roofs again, and judge
    each program at each batch against the higher of the two measurements of its roof (a machine that
    slows down during a measurement must not lower the bar)."""
    torch.set_num_threads(args.threads)
    if args.roofs is None:
        measured = [measure_roofs(args.threads, log)]
    else:  # load_roofs checks the file (this CPU, these threads) before it is read again for the report
        load_roofs(args.roofs, threads=args.threads)
        measured = [json.loads(Path(args.roofs).read_text())]
    specs = [row_spec(m, p) for p in args.programs for m in (args.model, args.reference)]
    specs += fp32_specs(args.model, args.timm) if args.fp32_rows else []
    flags, bar = cpu_flags(), Bar(args.min_ratio, args.min_roof)
    report: dict[str, Any] = dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), cpu=cpu_description(),
        flags=[f for f in ISA_FLAGS if f in flags], torch=torch.__version__, threads=args.threads,
        model=args.model, reference=args.reference, img_size=args.img_size, rounds=args.rounds,
        steps=args.steps, command=" ".join(map(shlex.quote, sys.argv)),
        roof_measurements=measured, rows={}, verdicts=[])
    for batch in args.batch_sizes:
        cfg = BenchConfig(models=specs, mode="infer", device="cpu", batch_size=batch, img_size=args.img_size,
                          ref_resnest=row_label(f"{args.timm}@cl"), ref_resnet=row_label(specs[1]),
                          threads=args.threads, warmup=args.warmup, rounds=args.rounds, steps=args.steps)
        report["rows"][str(batch)] = run_benchmark(cfg, log)
    if args.roofs is None:
        measured.append(measure_roofs(args.threads, log))
    report["roofs"] = rates = highest_roofs(measured)
    for rows in report["rows"].values():
        for r in rows:
            r.update(roof_columns(r["infer_samples_per_sec"], r["gmacs"], r["roof_format"], rates))
        report["verdicts"] += [verdict(rows, p, args.model, args.reference, flags, bar)
                               for p in args.programs]
    return report


def highest_roofs(measurements: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """Per format, the highest rate of several :func:`roofs.measure_roofs` results (``None`` if never
    measured: emulated)."""
    rates = [roof_rates(m) for m in measurements]
    return {fmt: max((r[fmt] for r in rates if r[fmt] is not None), default=None) for fmt in rates[0]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", nargs="+", choices=list(PROGRAMS), default=["int8", "bf16"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 1])
    p.add_argument("--model", default="splitattn:resnest50")
    p.add_argument("--reference", default="tv:resnet50", help="the model the ratio divides by")
    p.add_argument("--timm", default="timm:resnest50d", help="the fp32 scale row of --fp32-rows")
    p.add_argument("--fp32-rows", action="store_true", help="add timm fp32 and optimize_for_inference rows")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--min-ratio", type=float, default=Bar.min_ratio)
    p.add_argument("--min-roof", type=float, default=Bar.min_roof)
    p.add_argument("--roofs", default=None, metavar="FILE", help="a cpu_peak.py result instead of measuring")
    p.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.json and PREFIX.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = markdown(report)
    print(text)
    if args.out:
        atomic_write_text(f"{args.out}.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(f"{args.out}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
