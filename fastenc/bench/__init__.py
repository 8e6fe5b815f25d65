"""fastenc's benchmark harness: timing, FLOP counts, cases, runner and report writers behind `fastenc bench`.

Installed with the package so the command works after `pip install fastenc`; the pytest-benchmark files in
benchmarks/ are thin wrappers over the same pieces. Nothing here touches a CUDA device at import time.
"""

from fastenc.bench.flops import attention_flops, encoder_flops, encoder_matmuls
from fastenc.bench.timing import Timing, time_calls, time_cpu, time_cuda

__all__ = ["Timing", "attention_flops", "encoder_flops", "encoder_matmuls", "time_calls", "time_cpu", "time_cuda"]
