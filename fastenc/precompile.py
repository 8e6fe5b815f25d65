"""`fastenc precompile`: fill Triton's kernel cache for a GPU target on a machine without a GPU.

A stand-in Triton driver reports the target (compute capability, opt-in shared memory per block) and launches
nothing. A model built from its transformers config (random weights, one layer: every layer runs the same kernels)
then runs forward and/or a training step on CPU tensors with the triton backend, so the project's own launchers
specialise, autotune and compile exactly the kernels that a GPU run of those shapes and dtypes needs, into
TRITON_CACHE_DIR. The autotuner compiles every config it keeps; Triton's own loader check rejects configs over the
target's shared memory (as on the GPU); timings are a constant and autotune results are not written to disk, so
the GPU still picks its own best config, only without compiling. The stand-in loader reads each binary's registers
and spills with the cuobjdump shipped in triton, so the report says which kernels spill.

Trade-off: the host-side torch work (matmuls, the loss) really runs on the CPU, in exchange nothing about the
kernels' specialisation (argument divisibility, constexprs, tuning keys, autocast dtypes) is re-derived by hand.
CPU autocast is taken to cast like CUDA autocast for what reaches the kernels. Sizes reach the kernels only through
their divisibility by 16 and the sequence-length bucket, so a small batch of the same sequence length compiles the
same binaries: BERT-base 2x128 gave the 23 binaries of 32x128 in 16 instead of about 180 CPU seconds of host work.

`--report FILE` compiles the attention kernels instead of a model and reads every binary as the GPU would run it:
SASS counts from cuobjdump, ptxas's warnings from a second ptxas pass over the PTX (C7515: wgmma serialised), and the
main loop's warp-instructions per 1024 scores; the static stand-in for a timing, since no GPU is needed.

The cache helps only a GPU machine with the same triton build (triton's cache key hashes its own sources and
libtriton, so the same version for the same Python) and the same kernel sources: `cache_fingerprint()` says which.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import os
import pkgutil
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fastenc.kernels import _triton_internals as ti  # every private triton name read here


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
MODES = ("train", "infer")


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


@dataclass
class SassStats:
    """What a binary's SASS and a second ptxas pass over its PTX say: instruction count (NOPs left out), tensor-core
    instructions (HGMMA: Hopper's wgmma; HMMA: mma.sync), whether ptxas serialised the wgmma (warning C7515), and the
    main loop, the first innermost loop that holds a tensor-core instruction: its instructions, and its norm, the
    warp-instructions it issues per 1024 (query, key) scores (instructions x warps x 1024 / the tile's scores)."""

    instructions: int
    hgmma: int
    hmma: int
    c7515: bool
    loop_instructions: int
    loop_norm: float



@functools.cache
def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack + local bytes per thread) of the single kernel in `cubin`, read by cuobjdump."""
    with _scratch(cubin, ".cubin") as path:
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                             check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cannot read cuobjdump's resource usage:\n{out}")
    return int(m[1]), int(m[2]) + int(m[3])


def _tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"triton ships no {name} at {path}")
    return str(path)


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def _ptxas(arch: int) -> str:
    """The ptxas Triton compiles with for compute capability `arch`."""
    return ti.get("triton.backends.nvidia.compiler.get_ptxas")(arch).path


def sass_stats(cubin: bytes, ptx: str, arch: int, num_warps: int, tile_scores: int) -> SassStats:
    """SassStats of one kernel: SASS read with triton's cuobjdump, C7515 from the ptxas Triton uses for `arch` (its
    compute capability) run again on `ptx` (Triton does not keep its warnings)."""
    with _scratch(cubin, ".cubin") as cpath, _scratch(ptx.encode(), ".ptx") as ppath:
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cpath)], capture_output=True, text=True,
                              check=True).stdout
        name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        log = subprocess.run([_ptxas(arch), "-v", "--regAllocOptLevel=2", f"--gpu-name={name}", str(ppath),
                              "-o", os.devnull], capture_output=True, text=True, check=True).stderr
    ops: list[tuple[int, str]] = []  # (address, opcode) in address order, NOPs left out
    loops: list[tuple[int, int]] = []  # (first, last address) of each backward branch's loop
    for m in _INSTRUCTION.finditer(sass):
        addr, op = int(m[1], 16), m[2]
        if op == "NOP":
            continue
        ops.append((addr, op))
        t = re.fullmatch(r"(0x[0-9a-f]+)", m[3].strip())
        if op.startswith("BRA") and t and int(t[1], 16) < addr:
            loops.append((int(t[1], 16), addr))
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    body = 0
    for a, b in sorted(innermost):
        inside = [op for addr, op in ops if a <= addr <= b]
        if any(op.startswith(("HGMMA", "HMMA")) for op in inside):
            body = len(inside)
            break
    return SassStats(len(ops), sum(op.startswith("HGMMA") for _, op in ops),
                     sum(op.startswith("HMMA") for _, op in ops), "C7515" in log, body,
                     round(body * num_warps * 1024 / tile_scores, 1) if tile_scores else 0.0)


@contextlib.contextmanager
def _scratch(data: bytes, suffix: str) -> Iterator[Path]:
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastenc-{os.getpid()}-{digest}{suffix}"
    path.write_bytes(data)
    try:
        yield path
    finally:
        path.unlink()


def _tile_scores(blocks: dict[str, int]) -> int:
    """(query, key) scores of one main-loop step: BLOCK_M x BLOCK_N (0 for kernels without both)."""
    return blocks.get("BLOCK_M", 0) * blocks.get("BLOCK_N", 0)


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


def _run_model(model: str, dtype: str, shape: str, mode: str, layers: int) -> None:
    from transformers import AutoModel, AutoModelForMaskedLM

    import fastenc
    from fastenc.bench import cases as C
    from fastenc.bench.runner import fastenc_twin, uses_sparse_mlm

    config = C.model_config(model)
    config.num_hidden_layers = min(layers, config.num_hidden_layers)
    train = mode == "train"
    torch.manual_seed(0)
    hf = (AutoModelForMaskedLM if train else AutoModel).from_config(config)
    hf = hf if train else hf.to(C.DTYPES[dtype])
    twin = fastenc_twin(hf.train(train))
    x = C.model_inputs(config, C.parse_shape(shape), torch.device("cpu"), mlm_labels=train)
    with fastenc.use_backend("triton"):
        if not train:
            with torch.inference_mode():
                twin(**x)
            return
        extra = {"sparse_prediction": True} if uses_sparse_mlm(twin, True) else {}
        low = C.DTYPES[dtype] != torch.float32
        with torch.autocast("cpu", dtype=C.DTYPES[dtype], enabled=low):
            loss = twin(**x, **extra).loss
        loss.backward()


def compile_attention(target_name: str, dtype: str, head_dim: int, dropout: bool, packed: bool, seqlen: int,
                      heads: int = 2, report: bool = False) -> list[KernelUse]:
    """Compile, for `target_name`, every attention kernel (and every config its autotuner keeps) that a forward and
    backward call of this variant runs (padded layout with a key mask, or packed); return what each binary uses."""
    from fastenc.bench import cases as C
    from fastenc.kernels import attention as A

    tgt = target(target_name)
    if dtype not in C.DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(C.DTYPES)}, got {dtype!r}")
    if not 0 < head_dim <= A.MAX_HEAD_DIM or seqlen < 1:
        raise ValueError(f"head_dim must be in 1..{A.MAX_HEAD_DIM} and seqlen positive, got {head_dim}, {seqlen}")
    g = torch.Generator().manual_seed(0)
    lens = [seqlen, max(1, seqlen // 2)]
    shape = (sum(lens), heads, head_dim) if packed else (len(lens), seqlen, heads, head_dim)
    q, k, v, do = (torch.randn(shape, generator=g).to(C.DTYPES[dtype]) for _ in range(4))
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32) if packed else None
    mask = None if packed else torch.arange(seqlen)[None, :] < torch.tensor(lens)[:, None]
    p = 0.1 if dropout else 0.0
    seed = torch.tensor([1], dtype=torch.int64) if dropout else None
    with target_driver(tgt, report) as fake:
        o, lse = A.attention_fwd(q, k, v, mask, cu, seqlen, head_dim**-0.5, p, seed)
        A.attention_bwd(do, q, k, v, o, lse, mask, cu, seqlen, head_dim**-0.5, p, seed)
    return list(fake.kernels.values())


# The attention variants of `--report`: (layout, dropout); padded = right-padded with a key padding mask.
REPORT_CASES = (("padded", False), ("padded", True), ("packed", False), ("packed", True))
_REPORT_COLUMNS = ("kernel", "layout", "dropout", "dtype", "d", "config", "regs", "spill B", "shared B", "SASS",
                   "HGMMA", "HMMA", "C7515", "loop", "norm")


def attention_report(target_name: str, dtypes: Sequence[str] = ("fp16",), head_dims: Sequence[int] = (64,),
                     seqlen: int = 512, cases: Sequence[tuple[str, bool]] = REPORT_CASES) -> list[dict]:
    """One row per attention binary (every config the autotuner keeps) of each variant: what `--report` writes."""
    rows = []
    for dtype in dtypes:
        for d in head_dims:
            for layout, dropout in cases:
                for k in compile_attention(target_name, dtype, d, dropout, layout == "packed", seqlen, report=True):
                    st = k.sass or {}
                    rows.append(dict(kernel=k.name, layout=layout, dropout=dropout, dtype=dtype, d=d, config=k.config,
                                     regs=k.regs, spill_bytes=k.spill_bytes, shared=k.shared, target=target_name,
                                     seqlen=seqlen, **st))
    return rows


def report_problems(rows: Sequence[dict]) -> list[str]:
    """What the issue-33 rules refuse in `rows`: C7515 (serialised wgmma), HMMA on sm_90a, spills."""
    out = []
    for r in rows:
        what = f"{r['target']} {r['kernel']} {r['layout']} dropout={r['dropout']} {r['dtype']} d{r['d']} {r['config']}"
        if r.get("c7515"):
            out.append(f"{what}: ptxas serialised its wgmma (C7515)")
        if r["target"].startswith("sm_90") and r.get("hmma"):
            out.append(f"{what}: {r['hmma']} HMMA (mma.sync) instead of wgmma")
        if r["spill_bytes"] > 0 and r["dtype"] != "fp32":
            out.append(f"{what}: spills {r['spill_bytes']} B/thread")
    return out


def report_markdown(rows: Sequence[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(_REPORT_COLUMNS) + " |", "|" + "---|" * len(_REPORT_COLUMNS)]
    for r in rows:
        vals = (r["kernel"].removeprefix("_attention_").removesuffix("_kernel"), r["layout"],
                "yes" if r["dropout"] else "no", r["dtype"], r["d"], r["config"], r["regs"], r["spill_bytes"],
                r["shared"], r.get("instructions", "-"), r.get("hgmma", "-"), r.get("hmma", "-"),
                ("**yes**" if r.get("c7515") else "no") if "c7515" in r else "-", r.get("loop_instructions", "-"),
                r.get("loop_norm", "-"))
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def _report_header(target_name: str) -> str:
    import triton

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    return (f"fastenc attention binaries for {target_name}: triton {triton.__version__}, Python "
            f"{sys.version_info.major}.{sys.version_info.minor}, commit {commit}, {time.strftime('%Y-%m-%d')}. "
            "norm = warp-instructions of the main loop per 1024 scores.")


def _cache_dir() -> Path:
    return Path(ti.cache_dir())


def _cache_entries(root: Path) -> set[str]:
    return {p.parent.name + "/" + p.name for p in root.glob("*/*.cubin")} if root.exists() else set()


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Report:
    """What one precompile did: new binaries in the cache, CPU and wall seconds, every kernel loaded."""

    target: str
    model: str
    dtypes: list[str]
    shapes: list[str]
    modes: list[str]
    cache_dir: str
    compiled: int
    cpu_s: float
    wall_s: float
    fingerprint: dict[str, str]
    kernels: list[KernelUse] = field(default_factory=list)

    def spilling(self) -> list[KernelUse]:
        return [k for k in self.kernels if k.spill_bytes > 0]

    def refused(self) -> list[KernelUse]:
        return [k for k in self.kernels if not k.loaded]

    def summary(self) -> str:
        lines = [f"fastenc precompile {self.target}: {self.model} {','.join(self.dtypes)} {','.join(self.shapes)} "
                 f"({'+'.join(self.modes)}): {self.compiled} kernels compiled, {len(self.kernels)} used, "
                 f"{self.cpu_s:.1f} CPU s, {self.wall_s:.1f} s wall, cache {self.cache_dir}"]
        for k in self.spilling():
            lines.append(f"  spills: {k.name} {k.blocks} {k.num_warps} warps: {k.spill_bytes} B/thread, {k.regs} "
                         f"registers, {k.shared} B shared")
        for k in self.refused():
            lines.append(f"  over the shared memory of {self.target}: {k.name} {k.shared} B (skipped by the autotuner)")
        return "\n".join(lines)


def cache_fingerprint() -> dict[str, str]:
    """What a Triton cache built here is valid for: triton's version, its cache key (hashes its sources and
    libtriton), the Python version, and the hash of fastenc's kernel sources."""
    import triton

    import fastenc.kernels as pkg

    ti.require(ti.PRECOMPILE)
    triton_key = ti.get("triton.runtime.cache.triton_key")
    src = hashlib.sha256()
    for path in sorted(Path(pkg.__path__[0]).glob("*.py")):
        src.update(path.read_bytes())
    return {"triton": triton.__version__, "triton_key": hashlib.sha256(triton_key().encode()).hexdigest()[:16],
            "python": f"{sys.version_info.major}.{sys.version_info.minor}", "kernels": src.hexdigest()[:16]}


def precompile(target_name: str, model: str = "bert-base", dtypes: Sequence[str] = ("fp16",),
               shapes: Sequence[str] = ("32x128",), modes: Sequence[str] = MODES, layers: int = 1) -> Report:
    """Compile, into Triton's cache, every kernel that `model` runs for these dtypes, shapes and modes on
    `target_name` (see TARGETS). Needs no GPU."""
    from fastenc.bench import cases as C

    tgt = target(target_name)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {m!r}")
    for d in dtypes:
        if d not in C.DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(C.DTYPES)}, got {d!r}")
    for s in shapes:
        C.parse_shape(s)
    C.model_config(model)
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    root = _cache_dir()
    before = _cache_entries(root)
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    with target_driver(tgt) as fake:
        for mode in modes:
            for dtype in dtypes:
                for shape in shapes:
                    _run_model(model, dtype, shape, mode, layers)
    return Report(tgt.name, model, list(dtypes), list(shapes), list(modes), str(root),
                  len(_cache_entries(root) - before), round(_cpu_s() - cpu0, 2), round(time.perf_counter() - wall0, 2),
                  cache_fingerprint(), sorted(fake.kernels.values(), key=lambda k: k.name))


def main(argv: Sequence[str] | None = None) -> int:
    from fastenc.bench.cli import _csv

    p = argparse.ArgumentParser(prog="fastenc precompile", description=__doc__.split("\n\n")[0],
                                epilog="Set TRITON_CACHE_DIR to choose the cache to fill.")
    p.add_argument("--target", "--arch", dest="targets", type=_csv, default=["sm_90a"],
                   help=f"comma list of {', '.join(TARGETS)} (default sm_90a)")
    p.add_argument("--model", default="bert-base", help="model config as in `fastenc bench` (default bert-base)")
    p.add_argument("--dtypes", type=_csv, default=["fp16"], help="comma list of fp16, bf16, fp32 (default fp16)")
    p.add_argument("--shapes", type=_csv, default=["32x128"],
                   help="batch shapes BxS or 'var' (default 32x128; 2x128 compiles the same kernels, faster)")
    p.add_argument("--modes", type=_csv, default=list(MODES), help="train and/or infer (default both)")
    p.add_argument("--layers", type=int, default=1, help="encoder layers to build (default 1: all run alike)")
    p.add_argument("--json", type=Path, help="also write the report(s) as JSON here")
    p.add_argument("--report", type=Path,
                   help="instead of a model: compile the attention kernels (padded and packed, with and without "
                        "dropout, every kept config) and write their registers, spills, SASS counts, C7515 and "
                        "main-loop norms as a markdown table to this file (and FILE.json); exit 1 on C7515, HMMA on "
                        "sm_90a or spills")
    p.add_argument("--head-dims", type=_csv, default=["64"], help="head dims of --report (default 64)")
    p.add_argument("--seqlen", type=int, default=512, help="sequence length of --report (default 512)")
    args = p.parse_args(argv)
    if args.report:
        return _write_report(args)
    try:
        reports = [precompile(t, args.model, args.dtypes, args.shapes, args.modes, args.layers) for t in args.targets]
    except (ValueError, RuntimeError) as e:
        print(f"fastenc precompile: {e}", file=sys.stderr)
        return 2
    for r in reports:
        print(r.summary())
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=1))
    return 0


def _write_report(args: argparse.Namespace) -> int:
    header = _report_header(",".join(args.targets))  # the commit the kernels are imported from, before compiling
    try:
        rows = [r for t in args.targets for r in attention_report(t, args.dtypes, [int(d) for d in args.head_dims],
                                                                  args.seqlen)]
    except (ValueError, RuntimeError) as e:
        print(f"fastenc precompile: {e}", file=sys.stderr)
        return 2
    text = report_markdown(rows, header)
    args.report.write_text(text)
    args.report.with_name(args.report.name + ".json").write_text(json.dumps(rows, indent=1))
    print(text)
    problems = report_problems(rows)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
