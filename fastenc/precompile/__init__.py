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
same binaries as a large one for a fraction of the host work (figures: benchmarks/results/figures.md).

`--report FILE` compiles the attention kernels instead of a model and reads every binary as the GPU would run it
(fastenc.precompile.report). The parts: `driver` (the stand-in driver, shared with `fastenc bench --host`),
`binaries` (what a compiled binary holds: registers, spills, SASS counts), `report` (the attention report); this
module keeps the model precompile and the command line, and re-exports the parts' public names.

The cache helps only a GPU machine with the same triton build (triton's cache key hashes its own sources and
libtriton, so the same version for the same Python) and the same kernel sources: `cache_fingerprint()` says which.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fastenc.kernels import _triton_internals as ti  # every private triton name read here
from fastenc.precompile import binaries, driver, report
from fastenc.precompile.binaries import SassStats, resource_usage, sass_stats
from fastenc.precompile.driver import TARGETS, KernelUse, Target, TargetDriver, _forget_targets, target, target_driver
from fastenc.precompile.report import (
    REPORT_CASES,
    attention_report,
    compile_attention,
    report_header,
    report_markdown,
    report_problems,
)

__all__ = ["MODES", "REPORT_CASES", "TARGETS", "KernelUse", "Report", "SassStats", "Target", "TargetDriver",
           "attention_report", "binaries", "cache_fingerprint", "compile_attention", "driver", "main", "precompile",
           "report", "report_markdown", "report_problems", "resource_usage", "sass_stats", "target", "target_driver",
           "_forget_targets"]

MODES = ("train", "infer")


def _run_model(model: str, dtype: str, shape: str, mode: str, layers: int) -> None:
    from transformers import AutoModel, AutoModelForMaskedLM

    import fastenc
    from fastenc.bench import cases as C
    from fastenc.bench.model_cases import fastenc_twin, uses_sparse_mlm

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
                        "dropout, every kept config) and write their registers, spills, SASS counts (HGMMA, HMMA, "
                        "UTMALDG), C7515 and main-loop norms as a markdown table to this file (and FILE.json); "
                        "exit 1 on C7515, HMMA on sm_90a or spills")
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
    """`--report`: write the table and its JSON, print the problems; the exit status (1 on a problem, 2 on bad
    arguments)."""
    header = report_header(",".join(args.targets))  # the commit the kernels are imported from, before compiling
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
