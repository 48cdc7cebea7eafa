"""Timing two competitors fairly on a shared machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def alternate(a: Callable[[], None], b: Callable[[], None], repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, timed in alternation so drift hits both alike."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, store in ((a, times_a), (b, times_b)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            store.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)
