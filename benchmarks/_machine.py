"""Helpers shared by benchmark scripts: is the machine idle enough to time anything?"""

from __future__ import annotations

import time


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
