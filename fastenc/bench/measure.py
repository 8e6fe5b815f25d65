"""What a benchmark run is made of, below the cases: its settings, the environment and roofs it records, the record
of one variant and how it is timed (`measure`), which backends are measured here, and the torch.compile baselines'
fresh start (`compile_fresh`, shared by the op and model cases).

Trade-off: a record is a plain dict (the JSON document's own shape), so that a report or a later merge reads it
without this module, at the price of no type checking of its fields.
"""

from __future__ import annotations

import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fastenc import backends
from fastenc.bench import cases as C
from fastenc.bench import timing

OP_BASELINES = ("eager", "compile")
MODEL_BASELINES = ("hf-eager", "hf-sdpa", "hf-compile")
KERNEL_BACKENDS = ("triton", "cuda", "sdpa")
BENCH_BACKENDS = (*backends.BACKENDS, "auto")
CPU_NOTE = ("kernel backends are timed on a CUDA device only: speed needs a GPU (on the CPU, Triton runs under its "
            "interpreter, a correctness tool)")
# torch's own kernels (those auto considers on every device): their CPU timings mean something
_CPU_BACKENDS = (*(b.name for b in backends.REGISTRY if b.auto_devices is None), "auto")


@dataclass
class Settings:
    """Everything that chooses what is run. Defaults are the standard GPU suite."""

    device: torch.device
    models: list[str] = field(default_factory=lambda: list(C.GPU_MODELS))
    shapes: list[str] = field(default_factory=lambda: list(C.INFER_SHAPES))
    train_shapes: list[str] = field(default_factory=lambda: list(C.TRAIN_SHAPES))
    dtypes: list[str] = field(default_factory=lambda: ["fp16", "bf16"])
    backends: list[str] = field(default_factory=lambda: list(KERNEL_BACKENDS))
    ops: list[str] = field(default_factory=lambda: list(C.OPS))
    op_shapes: list[str] = field(default_factory=lambda: list(C.OP_SHAPES))
    op_modes: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    op_dims: dict[str, int] = field(default_factory=lambda: dict(C.BASE_DIMS))
    train: bool = True
    compile: bool = True
    var_batch: int = C.VAR_BATCH
    var_range: tuple[int, int] = (C.VAR_MIN, C.VAR_MAX)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    budget_s: float | None = None
    graph_shapes: list[str] = field(default_factory=lambda: ["1x16"])  # inference shapes also timed in CUDA graphs
    cpu_demo: bool = False

    @classmethod
    def cpu_demo_settings(cls, device: torch.device) -> Settings:
        """The CPU demo: the same pipeline on a tiny BERT, fp32, reference path against transformers."""
        return cls(device=device, models=["bert-tiny"], shapes=["1x16", "8x32", "var"], train_shapes=["8x32"],
                   dtypes=["fp32"], backends=["torch", "sdpa"], op_shapes=["8x32"], op_dims=dict(C.TINY_DIMS),
                   compile=False, var_batch=8, var_range=(8, 64), warmup_ms=10.0, rep_ms=60.0, graph_shapes=[],
                   cpu_demo=True)

    def shape(self, name: str) -> C.Shape:
        return C.parse_shape(name, self.var_batch, self.var_range)


# ---------------------------------------------------------------------------------------------------------------
# Environment and roofs


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def git_commit() -> str | None:
    """The commit of the checkout fastenc runs from (with '+dirty' for local changes), None outside a git tree."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, commit and date: what a recorded run must say about itself."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    with warnings.catch_warnings():  # the reasons are recorded; the extension's import warning would repeat them
        warnings.simplefilter("ignore")
        backend_status = {b: backends.unavailable_reason(b) or "available" for b in backends.BACKENDS}
    return {
        "device": name,
        "device_type": device.type,
        "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "fastenc": _version("fastenc"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backends": backend_status,
    }


def measure_roofs(device: torch.device) -> dict[str, float]:
    """The matmul peak (fp16 on the GPU, fp32 on the CPU) and the copy bandwidth, measured now."""
    if device.type == "cuda":
        return {"matmul_tflops": timing.matmul_peak_tflops(device), "copy_gbps": timing.copy_bandwidth_gbps(device),
                "matmul_dtype": "fp16"}
    return {"matmul_tflops": timing.matmul_peak_tflops(device, n=512, dtype=torch.float32),
            "copy_gbps": timing.copy_bandwidth_gbps(device, nbytes=2**26), "matmul_dtype": "fp32"}


# ---------------------------------------------------------------------------------------------------------------
# Records


class Skip(Exception):
    """A variant that cannot run here; the message says why."""


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def new_record(kind: str, name: str, dtype: str, shape: C.Shape, mode: str, variant: str) -> dict[str, Any]:
    return {"kind": kind, "name": name, "dtype": dtype, "shape": shape.name, "batch": shape.batch, "seq": shape.seq,
            "tokens": shape.tokens, "mode": mode, "variant": variant, "status": "ok"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(record: dict[str, Any], calls: list[Callable[[], object]], settings: Settings, roofs: dict[str, float],
            flops: int = 0, nbytes: int = 0) -> dict[str, Any]:
    """Time `calls` into `record`: latency, tokens/s, TFLOP/s and MFU (flops > 0), GB/s (nbytes > 0), and on the GPU
    the peak memory: all allocated (peak_mem_mib, weights of every resident model included) and above what was
    allocated before the variant ran (peak_extra_mib: activations, workspaces, optimizer state on its first step)."""
    dev = settings.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        resident = torch.cuda.memory_allocated(dev)
    t0 = time.perf_counter()
    calls[0]()
    _sync(dev)
    record["first_call_s"] = time.perf_counter() - t0
    t = timing.time_calls(calls, dev, warmup_ms=settings.warmup_ms, rep_ms=settings.rep_ms)
    record.update(ms=t.median_ms, ms_p20=t.p20_ms, ms_p80=t.p80_ms, runs=t.runs,
                  tokens_per_s=record["tokens"] / (t.median_ms * 1e-3))
    if flops:
        tflops = flops / (t.median_ms * 1e-3) / 1e12
        record.update(flops=flops, tflops=tflops, mfu=tflops / roofs["matmul_tflops"])
    if nbytes:
        gbps = nbytes / (t.median_ms * 1e-3) / 1e9
        record.update(bytes=nbytes, gbps=gbps, bw_frac=gbps / roofs["copy_gbps"])
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        record.update(peak_mem_mib=peak / 2**20, peak_extra_mib=(peak - resident) / 2**20)
    return record


def run_variant(record: dict[str, Any], body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return body()
    except (Skip, backends.BackendNotSupportedError) as e:
        record.update(status="skipped", reason=str(e))
    except Exception as e:  # one broken variant must not end the run: record it and go on
        record.update(status="error", reason=first_line(e))
    return record


def kernel_backend_reason(name: str, device: torch.device) -> str | None:
    """Why fastenc backend `name` is not timed here, or None."""
    if name in ("torch", "auto"):
        return None
    if device.type != "cuda" and name not in _CPU_BACKENDS:
        return CPU_NOTE
    return backends.unavailable_reason(name)


def implements(name: str, op: str) -> bool:
    """Whether backend `name` (or "auto") has an implementation of fastenc.ops.`op`."""
    return name == "auto" or name in backends.IMPLEMENTS[op]


def measure_variant(record: dict[str, Any], calls: list[Callable[[], object]], settings: Settings,
                    roofs: dict[str, float], flops: int = 0, nbytes: int = 0) -> dict[str, Any]:
    """`measure`, where a failure of a torch.compile baseline is recorded as that baseline's limit (Skip)."""
    try:
        return measure(record, calls, settings, roofs, flops=flops, nbytes=nbytes)
    except Exception as e:
        if record["variant"] in ("compile", "hf-compile"):
            raise Skip(f"torch.compile failed: {first_line(e)}") from e
        raise


def compile_fresh(fn: Callable) -> Callable:
    """torch.compile with static shapes, as a fresh start: every case of the run gets its own specialised graph
    instead of hitting dynamo's recompile limit (past which it would silently run eager)."""
    torch.compiler.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # a recompile storm is recorded, never timed as eager
    return torch.compile(fn, dynamic=False)
