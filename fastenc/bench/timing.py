"""The roofs every benchmark figure is measured against, timed in the same run on the same device: the dense fp16
matmul peak (for TFLOP/s -> MFU) and the device-to-device copy bandwidth (for GB/s of memory-bound ops); and how many
input copies keep the L2 cache from flattering a timing. The timers themselves are fastenc.timing's.
"""

from __future__ import annotations

import math

import torch

from fastenc.timing import Timing, time_calls, time_cpu, time_cuda

__all__ = ["Timing", "copies_for", "copy_bandwidth_gbps", "l2_cache_bytes", "matmul_peak_tflops", "time_calls",
           "time_cpu", "time_cuda"]


def l2_cache_bytes(device: torch.device) -> int:
    """The device's L2 size (50 MiB when the driver does not say); 0 on the CPU, where nothing is rotated for it."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)


def copies_for(bytes_per_copy: int, device: torch.device, max_copies: int = 16, memory_cap: int = 2**30) -> int:
    """How many copies of inputs of `bytes_per_copy` to cycle so that the copies together exceed twice the L2."""
    if bytes_per_copy <= 0:
        raise ValueError(f"bytes_per_copy must be positive, got {bytes_per_copy}")
    need = math.ceil(2 * l2_cache_bytes(device) / bytes_per_copy) + 1 if device.type == "cuda" else 1
    return max(1, min(need, max_copies, memory_cap // bytes_per_copy))


def matmul_peak_tflops(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.float16) -> float:
    """Measured dense matmul throughput (TFLOP/s) of an n x n x n product in `dtype`: the roof for MFU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = time_calls([lambda: torch.mm(a, b, out=out)], device, rep_ms=200.0 if device.type == "cuda" else 100.0)
    return 2 * n**3 / (t.median_ms * 1e-3) / 1e12


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 2**30) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written): the roof for memory-bound ops."""
    src = torch.empty(nbytes // 2, device=device, dtype=torch.int16).random_()
    dst = torch.empty_like(src)
    t = time_calls([lambda: dst.copy_(src)], device, rep_ms=200.0 if device.type == "cuda" else 100.0)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9
