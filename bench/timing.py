"""Timing helpers shared by the benchmarks: best-of-N wall time and the machine's matmul peak."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """Fastest of ``repeats`` timed calls of ``run``, after one untimed warm-up."""
    run()  # warm-up: session arenas, MONAI's window cache, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def best_of_interleaved(repeats: int, runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """The fastest of ``repeats`` timed calls of each run, taken in turns (one warm-up each), so
    that a change in the machine's load in the meantime falls on all of them alike."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_peak(repeats: int = 5, n: int = 2048, threads: int | None = None) -> float:
    """Best float32 matmul rate in FLOP/s: the machine's practical peak. With ``threads``,
    measured in a child process whose NumPy BLAS has that many threads: phasewatch keeps this
    process's BLAS on one (``phasewatch/__init__.py``), and OpenBLAS sizes its pool at import."""
    if threads is not None:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import timing; " \
               f"print(timing.matmul_peak({repeats}, {n}))"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads)}
        return float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                    text=True).stdout)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    return 2 * n**3 / best_of(repeats, lambda: a @ b)
