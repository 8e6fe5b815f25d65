"""What a compiled Triton binary holds, read without a GPU: registers and spills (cuobjdump's resource usage), SASS
counts, ptxas's warnings from a second pass over the PTX (C7515: wgmma serialised), and the main loop's
warp-instructions per 1024 scores. The stand-in driver (fastenc.precompile.driver) reads every binary it loads here.

Trade-off: the static stand-in for a timing. The tools are the ones shipped in triton's own wheel (no CUDA toolkit
needed), and the loop is found from the SASS's backward branches, a heuristic that holds for the attention kernels'
one main loop each.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastenc.kernels import _triton_internals as ti  # every private triton name read here


@dataclass
class SassStats:
    """What a binary's SASS and a second ptxas pass over its PTX say: instruction count (NOPs left out), tensor-core
    instructions (HGMMA: Hopper's wgmma; HMMA: mma.sync), tensor-memory-accelerator loads (UTMALDG: TMA tile loads
    through a tensor descriptor), whether ptxas serialised the wgmma (warning C7515), and the
    main loop, the first innermost loop that holds a tensor-core instruction: its instructions, and its norm, the
    warp-instructions it issues per 1024 (query, key) scores (instructions x warps x 1024 / the tile's scores)."""

    instructions: int
    hgmma: int
    hmma: int
    utmaldg: int
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
                     sum(op.startswith("HMMA") for _, op in ops), sum(op.startswith("UTMALDG") for _, op in ops),
                     "C7515" in log, body,
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

