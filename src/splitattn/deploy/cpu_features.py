"""What this CPU offers the kernels: its model name and instruction-set flags (Linux ``/proc/cpuinfo``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ISA_FLAGS", "cpu_description", "cpu_flags"]

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
