"""The CPU's GEMM roofs (fp32, bf16, INT8 multiply-adds per second) and each bench row's fraction of them.

:func:`measure_roofs` (``benchmarks/cpu_peak.py``, ``benchmarks/bench.py --measure-roofs``) times one square
GEMM per format through the kernels the bench rows run on: ``torch.mm`` in fp32 and bf16, and for INT8
oneDNN's u8 x s8 linear (the kernel family of :func:`splitattn.quantize`'s convolutions) or
``torch._int_mm``. A small probe call first estimates each rate; a format whose probe is far below what the
CPU's flags promise runs through a reference loop (e.g. bf16 without AVX512-BF16 on an AVX2 CPU), is marked
``"emulated"`` and not timed further (such a loop takes minutes at the timed size). The others get one
timed measurement of about two seconds. One multiply-add (MAC) counts 1, as in
:func:`splitattn.utils.flops.count_macs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from splitattn.deploy.cpu_features import ISA_FLAGS, cpu_description, cpu_flags
from splitattn.errors import DataError, InputError, MissingFileError

__all__ = ["FORMATS", "emulation_reason", "gemm_kernels", "load_roofs", "measure_format", "measure_roofs",
           "roof_columns", "roof_rates", "row_format", "timed_size"]

FORMATS = ("fp32", "bf16", "int8")
# Probe calls grow until one lasts PROBE_S: small GEMMs understate a fast kernel's rate (thread start-up,
# and on a loaded machine a waiting thread), and a reference loop must not get a large one.
PROBE_S, PROBE_MAX_N = 0.02, 1024
# Flags with which a format has instructions of its own: its GEMM should then run at least at fp32's rate.
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "int8": ("avx512_vnni", "avx_vnni", "amx_int8")}
# A real kernel without those instructions (bf16 converted to fp32, INT8 through AVX2's 16-bit products)
# still keeps within a few times fp32's rate; reference loops are 20-400x slower.
SLACK_NATIVE, SLACK_OTHER = 4.0, 8.0

Kernel = tuple[str, Callable[[int], Callable[[], torch.Tensor]]]


def emulation_reason(fmt: str, flags: Iterable[str], probe_gmacs: float, fp32_gmacs: float) -> str | None:
    """Why ``fmt``'s GEMM counts as emulated (``None``: a real kernel, worth timing).

    Args:
        fmt: ``"bf16"`` or ``"int8"`` (fp32 is the reference and never emulated).
        flags: the CPU's ``/proc/cpuinfo`` flags.
        probe_gmacs: GMAC/s of the format's probe.
        fp32_gmacs: GMAC/s of fp32's probe.
    """
    if fmt == "fp32":
        return None
    native = [f for f in NATIVE_FLAGS[fmt] if f in set(flags)]
    slack = SLACK_NATIVE if native else SLACK_OTHER
    if probe_gmacs * slack >= fp32_gmacs:
        return None
    has = f"despite {'/'.join(native)}" if native else f"no {'/'.join(NATIVE_FLAGS[fmt])} on this CPU"
    return (f"probe {probe_gmacs:.3g} GMAC/s is below 1/{slack:g} of fp32's {fp32_gmacs:.3g} ({has}): "
            "a reference loop, not a roof")


def timed_size(probe_gmacs: float, call_s: float = 0.25, total_s: float = 2.0) -> tuple[int, int]:
    """``(n, calls)`` of the timed measurement: ``calls`` GEMMs of ``n^3`` MACs lasting about ``total_s``.

    ``n`` (a multiple of 64 in [128, 4096]) makes one call last about ``call_s`` at the probe's rate; the
    probe's small size underestimates the rate, so the measurement usually ends sooner.
    """
    macs = probe_gmacs * 1e9 * call_s
    n = min(4096, max(128, 64 * round(macs ** (1 / 3) / 64)))
    calls = max(1, min(100, round(total_s * probe_gmacs * 1e9 / n**3)))
    return n, calls


def _mm(dtype: torch.dtype) -> Callable[[int], Callable[[], torch.Tensor]]:
    def make(n: int) -> Callable[[], torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
        return lambda: torch.mm(a, b)
    return make


def _onednn_qlinear(n: int) -> Callable[[], torch.Tensor]:
    # uint8 activations x int8 weights (prepacked), requantized to uint8: what an INT8 conv chain does.
    gen = torch.Generator().manual_seed(0)
    qx = torch.randint(0, 256, (n, n), dtype=torch.uint8, generator=gen)
    w = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=gen)
    packed = torch.ops.onednn.qlinear_prepack(w, [n, n])
    w_scale, w_zp = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)
    return lambda: torch.ops.onednn.qlinear_pointwise(qx, 0.02, 0, packed, w_scale, w_zp, None, 1.0, 0, None,
                                                      "none", [], "")


def _int_mm(n: int) -> Callable[[], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen) for _ in range(2))
    return lambda: torch._int_mm(a, b)


def gemm_kernels(fmt: str) -> list[Kernel]:
    """``(name, make)`` of the GEMMs this torch build offers for ``fmt``; ``make(n)`` returns the call."""
    if fmt == "fp32":
        return [("torch.mm fp32", _mm(torch.float32))]
    if fmt == "bf16":
        return [("torch.mm bf16", _mm(torch.bfloat16))]
    kernels: list[Kernel] = []
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise"):
        kernels.append(("onednn.qlinear_pointwise u8 x s8", _onednn_qlinear))
    if hasattr(torch, "_int_mm"):
        kernels.append(("torch._int_mm s8 x s8", _int_mm))
    return kernels


def _probe(make: Callable[[int], Callable[[], torch.Tensor]]) -> tuple[float, int]:
    """``(GMAC/s, n)`` of a probe: ``n`` doubles from 128 until one call lasts :data:`PROBE_S` (or ``n``
    is :data:`PROBE_MAX_N`), then the best of two calls at that ``n``; a reference loop stops at a small
    ``n``."""
    n = 128
    while True:
        fn = make(n)
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        if dt >= PROBE_S or n >= PROBE_MAX_N:
            break
        n *= 2
    t = time.perf_counter()
    fn()
    return n**3 / min(dt, time.perf_counter() - t) / 1e9, n


def _time(make: Callable[[int], Callable[[], torch.Tensor]], probe_gmacs: float) -> dict[str, Any]:
    n, calls = timed_size(probe_gmacs)
    fn = make(n)
    fn()  # primitive creation and first touch of the output
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = time.perf_counter() - t
    return dict(gmac_per_s=round(calls * n**3 / dt / 1e9, 2), n=n, calls=calls, seconds=round(dt, 2))


def measure_format(fmt: str, flags: Iterable[str], fp32_probe: float | None) -> dict[str, Any]:
    """One format's roof: ``{"format", "status": "measured" | "emulated" | "unavailable", ...}``."""
    probes: list[tuple[tuple[float, int], str, Callable[[int], Callable[[], torch.Tensor]]]] = []
    errors = []
    for name, make in gemm_kernels(fmt):
        try:
            probes.append((_probe(make), name, make))
        except (RuntimeError, NotImplementedError) as e:
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if not probes:
        return dict(format=fmt, status="unavailable", gmac_per_s=None,
                    reason="; ".join(errors) or "this torch build has no GEMM for it")
    (rate, probe_n), name, make = max(probes, key=lambda p: p[0][0])
    out: dict[str, Any] = dict(format=fmt, kernel=name, probe_gmac_per_s=round(rate, 3), probe_n=probe_n)
    reason = emulation_reason(fmt, flags, rate, fp32_probe if fp32_probe is not None else rate)
    if reason is not None:
        return dict(out, status="emulated", gmac_per_s=None, reason=reason)
    return dict(out, status="measured", **_time(make, rate))


def measure_roofs(threads: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The roofs of this CPU at ``threads`` threads, after a short warm-up (see the module docstring)."""
    torch.set_num_threads(threads)
    flags = cpu_flags()
    warm, t = _mm(torch.float32)(512), time.perf_counter()
    while time.perf_counter() - t < 0.3:  # thread pool start-up, clock ramp
        warm()
    result: dict[str, Any] = dict(cpu=cpu_description(), flags=[f for f in ISA_FLAGS if f in flags],
                                  threads=threads, torch=torch.__version__, roofs={})
    fp32_probe = None
    for fmt in FORMATS:
        roof = measure_format(fmt, flags, fp32_probe)
        if fmt == "fp32":
            fp32_probe = roof.get("probe_gmac_per_s")
        result["roofs"][fmt] = roof
        log(json.dumps(roof))
    return result


def roof_rates(result: dict[str, Any]) -> dict[str, float | None]:
    """``{format: GMAC/s}`` of a :func:`measure_roofs` result (``None`` where emulated or unavailable)."""
    roofs = result["roofs"]
    return {fmt: roofs[fmt]["gmac_per_s"] if roofs[fmt]["status"] == "measured" else None for fmt in FORMATS}


def load_roofs(path: str | Path, threads: int | None = None) -> dict[str, float | None]:
    """``{format: GMAC/s}`` from a :func:`measure_roofs` JSON file (``None`` where not measured).

    Raises:
        MissingFileError: no file at ``path``.
        DataError: not a ``measure_roofs`` result.
        InputError: measured on another CPU, or at other than ``threads`` threads.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"roofs file {p} does not exist; write one with "
                               "'python benchmarks/cpu_peak.py --out FILE'")
    redo = "re-measure with 'python benchmarks/cpu_peak.py --out FILE'"
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"roofs file {p} is not JSON ({e}); {redo}") from None
    try:
        roofs = roof_rates(data)
        cpu, at = data["cpu"], data["threads"]
    except (KeyError, TypeError) as e:
        raise DataError(f"roofs file {p} is not a cpu_peak.py result (missing or bad {e}); {redo}") from None
    if cpu != cpu_description():
        raise InputError(f"roofs file {p} was measured on {cpu!r}, this CPU is {cpu_description()!r}; "
                         "re-measure here with benchmarks/cpu_peak.py or use --measure-roofs")
    if threads is not None and at != threads:
        raise InputError(f"roofs file {p} was measured at {at} threads, the bench runs {threads}; "
                         f"re-measure with 'benchmarks/cpu_peak.py --threads {threads}' or use "
                         "--measure-roofs")
    return roofs


def row_format(variant: str, amp: str | None) -> str | None:
    """The GEMM format a bench row runs in: ``+int8`` -> int8, ``+bf16*`` or bf16 autocast -> bf16,
    fp16 autocast -> ``None`` (no CPU roof), else fp32."""
    if variant == "int8":
        return "int8"
    if variant.startswith("bf16") or amp == "bf16":
        return "bf16"
    return None if amp == "fp16" else "fp32"


def roof_columns(samples_per_sec: float, gmacs_per_image: float, fmt: str | None,
                 roofs: dict[str, float | None] | None) -> dict[str, Any]:
    """A row's ``infer_gmac_per_s`` (model MACs per image x images/s) and ``infer_roof_fraction`` of the
    roof of its format ``fmt`` (``None`` when that roof is emulated, unmeasured or not given)."""
    rate = gmacs_per_image * samples_per_sec
    roof = (roofs or {}).get(fmt) if fmt else None
    return dict(infer_gmac_per_s=round(rate, 2), roof_format=fmt,
                infer_roof_fraction=round(rate / roof, 3) if roof else None)
