"""The stand-in Triton driver shared by `fastenc precompile` and `fastenc bench --host`: it reports a GPU target
(compute capability, opt-in shared memory per block, SM count), loads binaries only to read what they use
(fastenc.precompile.binaries) and launches nothing, so CPU tensors reach the project's own launchers and Triton
specialises, autotunes and compiles exactly the kernels a GPU run of those calls needs.

Trade-off: the driver is swapped through triton's private names (fastenc.kernels._triton_internals, each with a
canary test) and device caches are cleared on entry and exit, in exchange for nothing about a kernel's
specialisation being re-derived by hand. Timings are a constant and autotune results are not written to disk, so
a GPU still picks its own best config, only without compiling.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fastenc.kernels import _triton_internals as ti  # every private triton name read here
from fastenc.precompile.binaries import _tile_scores, resource_usage, sass_stats


@dataclass(frozen=True)
class Target:
    """A GPU to compile for: Triton's compute capability, opt-in shared memory per block, SM count."""

    name: str
    arch: int
    max_shared: int
    sms: int


TARGETS = {
    "sm_80": Target("sm_80", 80, 166912, 108),  # A100
    "sm_86": Target("sm_86", 86, 101376, 84),  # A10, RTX 30xx
    "sm_89": Target("sm_89", 89, 101376, 128),  # L4, L40, RTX 40xx
    "sm_90a": Target("sm_90a", 90, 232448, 132),  # H100, H200 (Triton emits sm_90a for capability 90)
}
TARGETS["sm_90"] = TARGETS["sm_90a"]


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name]


@dataclass
class KernelUse:
    """One binary a launch asked for: its shared memory and warps; registers and local-memory bytes per thread
    (spills) from cuobjdump, or -1 when Triton's loader refused it (shared memory over the target's)."""

    name: str
    shared: int
    num_warps: int
    num_stages: int
    blocks: dict[str, int]  # the BLOCK_* constexprs of this binary
    hash: str = ""  # Triton's cache key of the binary
    regs: int = -1
    spill_bytes: int = -1
    sass: dict | None = None  # SassStats of the binary, with report=True

    @property
    def loaded(self) -> bool:
        return self.regs >= 0

    @property
    def config(self) -> str:
        tile = "/".join(str(v) for k, v in sorted(self.blocks.items()) if k != "BLOCK_D")
        return f"{tile} w{self.num_warps} s{self.num_stages}"


class _Utils:  # the part of Triton's driver.utils that its loader calls
    def __init__(self, tgt: Target, driver: TargetDriver):
        self.tgt, self.driver = tgt, driver

    def get_device_properties(self, device: int) -> dict[str, int]:
        return {"max_shared_mem": self.tgt.max_shared, "multiprocessor_count": self.tgt.sms, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}

    def load_binary(self, name: str, kernel: bytes, shared: int, device: int) -> tuple:
        regs, spill = resource_usage(bytes(kernel))
        use = self.driver.pending  # set by launcher_cls, which Triton's loader calls just before
        use.regs, use.spill_bytes = regs, spill
        if self.driver.report and use.sass is None:
            cache = ti.get("triton.runtime.cache.get_cache_manager")(use.hash)
            ptx = Path(cache.get_file(f"{use.name}.ptx")).read_text()
            use.sass = asdict(sass_stats(bytes(kernel), ptx, self.tgt.arch, use.num_warps, _tile_scores(use.blocks)))
        # module None: Triton never unloads it (it would call the real driver after this one is gone)
        return None, None, regs, spill // 4, 1024

    def unload_module(self, module: object) -> None:
        pass


class TargetDriver:
    """Triton driver stand-in: reports `tgt`, loads binaries only to read their resource usage, launches nothing."""

    def __init__(self, tgt: Target, report: bool = False):
        ti.require(ti.PRECOMPILE)
        self.tgt, self.report = tgt, report  # report: read every binary's SassStats too
        self.kernels: dict[str, KernelUse] = {}  # by the compiled kernel's hash
        self.pending: KernelUse | None = None
        self.on_launch: Callable[[], None] = lambda: None  # called per (stubbed) launch: `fastenc bench --host` counts
        self.utils = _Utils(tgt, self)
        self._gpu_target = ti.get("triton.backends.compiler.GPUTarget")("cuda", tgt.arch, 32)

    @classmethod
    def is_active(cls) -> bool:
        return True

    def get_current_target(self):
        return self._gpu_target

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cpu

    def launcher_cls(self, src, metadata):
        key = metadata.hash
        if key not in self.kernels:
            names = src.fn.arg_names
            consts = {names[k[0]] if isinstance(k, tuple) else k: v for k, v in src.constants.items()}
            blocks = {k: v for k, v in consts.items() if isinstance(k, str) and k.startswith("BLOCK_")}
            self.kernels[key] = KernelUse(metadata.name, metadata.shared, metadata.num_warps, metadata.num_stages,
                                          blocks, hash=key)
        self.pending = self.kernels[key]
        return lambda *args, **kwargs: self.on_launch()

    def get_benchmarker(self):
        def bench(fn, quantiles=None, **kwargs):
            fn()  # compiles the config and runs Triton's loader checks (shared memory) through this driver
            return [1.0] * len(quantiles) if quantiles else 1.0

        return bench


def _kernel_objects() -> list:
    """Every module-level Triton object of fastenc.kernels (autotuners and jitted functions)."""
    import fastenc.kernels as pkg

    KernelInterface = ti.get("triton.runtime.jit.KernelInterface")  # noqa: N806 (a class)

    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        out += [v for v in vars(mod).values() if isinstance(v, KernelInterface)]
    return out


def _forget_targets(objects: list) -> None:
    """Drop what each jitted function bound to the driver's target at first use (device 0 is every target here)."""
    for obj in objects:
        ti.forget_device_caches(obj)


@contextlib.contextmanager
def target_driver(tgt: Target, report: bool = False) -> Iterator[TargetDriver]:
    """Within: Triton compiles for `tgt` through the stand-in driver, the triton backend takes CPU tensors, and no
    autotune result is written to disk (its timings are not real)."""
    from fastenc.kernels import _common, _configs, _launch

    if _common.interpreter_on():
        raise RuntimeError("fastenc precompile needs the Triton compiler: unset TRITON_INTERPRET")
    fake = TargetDriver(tgt, report)
    objects = _kernel_objects()
    tuners = [t for t in objects if isinstance(t, ti.get("triton.runtime.autotuner.Autotuner"))]
    saved_cache = [ti.tuner_writes_disk(t) for t in tuners]
    saved_driver = ti.active_driver_slot()
    ti.set_driver(fake)
    _forget_targets(objects)
    for t in tuners:
        ti.set_tuner_writes_disk(t, False)
    try:
        with _common.stand_in_driver():  # the triton backend takes CPU tensors: the stand-in driver compiles them
            yield fake
    finally:
        for t, c in zip(tuners, saved_cache, strict=True):
            ti.set_tuner_writes_disk(t, c)
            ti.forget_tuner_choices(t)  # fake timings picked them; its benchmarker holds this driver's
        _configs.forget()  # choices made on fake timings
        _launch.forget()  # the kernels kept for this driver (the driver is in its key: never launched by another)
        ti.set_driver(saved_driver)
        _forget_targets(objects)

