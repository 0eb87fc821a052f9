"""What this CPU offers the kernels: its model name and instruction-set flags (Linux ``/proc/cpuinfo``), and
what that means for INT8 (an int8 dot product) and bf16 / fp16 (oneDNN's own kernels or ATen's emulation)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["INT8_FLAGS", "ISA_FLAGS", "cpu_description", "cpu_flags", "emulated_on_cpu", "int8_dot_product",
           "int8_support_problem", "no_dot_product_note"]

# The vector ISA flags that decide which fp32 / bf16 / INT8 kernels oneDNN picks.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo_field(*keys: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    value = _cpuinfo_field("flags", "Features")
    return frozenset(value.split()) if value else frozenset()


def cpu_description() -> str:
    """This CPU's model name and vector ISA flags, e.g. ``"AMD EPYC 9B14 (avx2 avx512f avx512_vnni)"``."""
    flags = cpu_flags()
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or ("no AVX2" if flags else "flags unknown")
    return f"{_cpuinfo_field('model name') or 'unknown CPU'} ({isa})"


# CPU flags (as /proc/cpuinfo names them) of the int8 dot-product instructions oneDNN's INT8 kernels use.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_dot_product(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Without one, oneDNN's INT8 convolutions run on AVX2 / AVX-512 code whose 16-bit intermediate sums
    can saturate: :func:`quantize` then keeps activations to 7 bits, as torchao advises for such CPUs.

    Args:
        flags: the CPU's instruction-set flags (default: :func:`cpu_flags`; where those cannot be read,
            ``torch.cpu._is_vnni_supported()`` decides).
    """
    have = set(cpu_flags() if flags is None else flags)
    if have:
        return bool(have & set(INT8_FLAGS))
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def int8_support_problem() -> str | None:
    """Why the INT8 kernels cannot run here at all, or ``None`` when they can.

    Returns:
        A message naming what is missing (an x86-64 CPU, or oneDNN's INT8 kernels in this torch build)
        and what to run instead, or ``None``.
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x64"):
        return (f"INT8 inference needs an x86-64 CPU (this machine is {machine}); run the model in fp32, "
                "or in bfloat16 with optimize_for_inference(model, dtype=torch.bfloat16)")
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv_pointwise")):
        return (f"this PyTorch build ({torch.__version__}) has no oneDNN INT8 kernels "
                "(torch.ops.onednn.qconv_pointwise); install a standard x86 CPU build of torch>=2.4")
    return None


def no_dot_product_note() -> str:
    """What running INT8 without an int8 dot-product instruction means, in one clause (for warnings)."""
    return (f"this CPU has no int8 dot-product instruction (none of {', '.join(INT8_FLAGS)} among its "
            "flags in /proc/cpuinfo): oneDNN runs the INT8 convolutions on AVX2/AVX-512 code, between 1x "
            "(Zen 1) and 2.2x (Zen 3) the speed of optimize_for_inference in fp32 (benchmarks/RESULTS.md)")


def emulated_on_cpu(dtype: torch.dtype) -> bool:
    """Whether oneDNN refuses ``dtype`` (bf16, fp16) convolutions on this CPU, so that ATen emulates them
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` / ``_fp16_``: the checks oneDNN's kernels make)."""
    checks = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    name = checks.get(dtype)
    check = getattr(torch.ops.mkldnn, name, None) if name and torch.backends.mkldnn.is_available() else None
    return check is not None and not check()
