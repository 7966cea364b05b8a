"""Helpers shared by benchmark scripts: which CPU is this, and is it idle enough to time anything?

Every benchmark prints :func:`machine_line` first, so each number it prints says which CPU it came
from (speeds differ several-fold between a CPU with AMX and one with AVX2 only). Self-contained
(standard library only), so a benchmark can be copied to a machine without the package.
"""

from __future__ import annotations

import os
import platform
import time

# Vector / matrix extensions worth naming: they decide float32 GEMM width and whether bfloat16 runs in hardware.
_EXTENSIONS = (
    "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """{model, family_model, extensions}: from /proc/cpuinfo on Linux, from ``platform`` elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                k, _, v = line.partition(":")
                fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    fm = " ".join(f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    return {
        "model": fields.get("model name") or fields.get("Hardware") or platform.processor() or platform.machine(),
        "family_model": fm,
        "extensions": [e for e in _EXTENSIONS if e in flags],
    }


def machine_line() -> str:
    """One line naming the CPU, its cores and its vector/matrix extensions (and torch's threads, if loaded)."""
    info = cpu_info()
    ext = " ".join(info["extensions"]) or "unknown (no /proc/cpuinfo flags)"
    fm = f" ({info['family_model']})" if info["family_model"] else ""
    line = f"CPU: {info['model']}{fm}, {os.cpu_count()} logical CPUs; extensions: {ext}"
    bf16 = [e for e in ("amx_bf16", "avx512_bf16") if e in info["extensions"]]
    line += f"; bf16 in hardware: {'yes (' + ', '.join(bf16) + ')' if bf16 else 'no'}"
    return line


def print_machine() -> dict:
    print(machine_line())
    return cpu_info()


def cpu_busy_fraction(seconds: float = 2.0) -> float:
    """Share of all cores busy over a short window, from /proc/stat (0 = idle)."""

    def read():
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        idle = parts[3] + parts[4]
        return idle, sum(parts)

    i0, t0 = read()
    time.sleep(seconds)
    i1, t1 = read()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def warn_if_busy(limit: float = 0.15) -> float:
    busy = cpu_busy_fraction()
    if busy > limit:
        print(f"WARNING: the machine is {busy:.0%} busy before the run; timings below are not trustworthy")
    else:
        print(f"machine idle check: {busy:.0%} busy")
    return busy
