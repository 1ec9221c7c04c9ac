"""Timing helper shared by the bench scripts (imported as a sibling module: the scripts run as
`python bench/<name>.py`, which puts bench/ on sys.path)."""

from __future__ import annotations

import time


def time_calls(fn, steps: int) -> list[float]:
    """Wall seconds of `steps` calls of `fn()` (fn must block until its work is done)."""
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out
