"""The timers: CUDA events on the GPU, time.perf_counter on the CPU; the median of many runs after a warm-up. Used by
`fastenc.tune` (auto's on-device timings) and by the benchmark tool (fastenc.bench.timing adds the roofs).

Cache flattery is the usual way a GPU benchmark lies: a kernel that reads the same 6 MB every call reads it from the
50 MB L2 cache. The timers therefore take one closure per *copy* of the inputs and cycle through them (the caller
makes enough copies: fastenc.bench.timing.copies_for). Each call gets its own pair of events (so the median drops
outliers such as a clock ramp or a host hiccup), at the price of one event record per call, which is well under a
microsecond of device time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Median and spread of one measurement, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int


def _summary(samples_ms: list[float]) -> Timing:
    if not samples_ms:
        raise ValueError("no timing samples")
    ordered = sorted(samples_ms)
    n = len(ordered)
    return Timing(statistics.median(ordered), ordered[int(0.2 * (n - 1))], ordered[int(math.ceil(0.8 * (n - 1)))], n)


def _check(calls: Sequence[Callable[[], object]], warmup_ms: float, rep_ms: float, min_runs: int) -> None:
    if not calls or not all(callable(c) for c in calls):
        raise ValueError("calls must be a non-empty sequence of callables (one per copy of the inputs)")
    if warmup_ms < 0 or rep_ms <= 0:
        raise ValueError(f"warmup_ms must be >= 0 and rep_ms > 0, got {warmup_ms}, {rep_ms}")
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")


def time_cpu(
    calls: Sequence[Callable[[], object]], *, warmup_ms: float = 20.0, rep_ms: float = 200.0, min_runs: int = 5,
    max_runs: int = 1000,
) -> Timing:
    """Median wall time of the calls (cycled), measured with time.perf_counter after `warmup_ms` of warm-up."""
    _check(calls, warmup_ms, rep_ms, min_runs)
    t_end = time.perf_counter() + warmup_ms / 1e3
    i = 0
    while True:
        calls[i % len(calls)]()
        i += 1
        if i >= len(calls) and time.perf_counter() >= t_end:
            break
    samples: list[float] = []
    t_stop = time.perf_counter() + rep_ms / 1e3
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() < t_stop):
        call = calls[len(samples) % len(calls)]
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _summary(samples)


def time_cuda(
    calls: Sequence[Callable[[], object]], *, warmup_ms: float = 25.0, rep_ms: float = 100.0, min_runs: int = 10,
    max_runs: int = 1000,
) -> Timing:
    """Median device time of the calls (cycled), one CUDA event pair per call, after `warmup_ms` of warm-up.

    The number of runs is sized from a first estimate so that the timed part lasts about `rep_ms`.
    """
    _check(calls, warmup_ms, rep_ms, min_runs)
    for c in calls:  # first calls: compile, autotune, allocate
        c()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(5):
        calls[i % len(calls)]()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for i in range(int(warmup_ms / estimate)):
        calls[i % len(calls)]()
    runs = max(min_runs, min(max_runs, int(rep_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        starts[i].record()
        calls[i % len(calls)]()
        ends[i].record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def time_calls(calls: Sequence[Callable[[], object]], device: torch.device, **kwargs: float) -> Timing:
    """time_cuda on a CUDA device, time_cpu otherwise."""
    return time_cuda(calls, **kwargs) if device.type == "cuda" else time_cpu(calls, **kwargs)
