"""Pieces the Triton kernels share: dropout from a seed, the GELU forms, row LayerNorm, launch sizes, registration.

Dropout of the row-wise ops (add_layer_norm, embeddings) is counter-based, so a backward kernel regenerates the forward
mask from the 8-byte seed instead of reading a stored mask. The scheme, shared bit for bit with the CUDA kernels
(csrc/common.cuh, rowwise_keep): element (row, c) of an op's [rows, D] tensor uses word c % 4 of Philox4x32-10 with key
(seed & 0xffffffff, seed >> 32) and counter (c // 4, row & 0xffffffff, row >> 32, 0x7e1), and is kept iff word >= t, t =
min(floor(p * 2**32 + 0.5), 2**32 - 1) (p as fp32): the exact keep probability is 1 - t / 2**32. Kept values are
multiplied by 1 / (1 - p), computed once per program. One Philox call serves four elements, a few integer rounds per
element that a memory-bound kernel hides. Row LayerNorm keeps a whole row in registers (BLOCK = next power of two of the
hidden size, masked), which limits the hidden size to what fits (MAX_BLOCK) but reads every row once. Backward kernels
that reduce over rows (dweight, dbias, dx_bias) run a fixed number of programs, each looping over many rows and keeping
fp32 partial sums in registers; torch then sums the small [programs, D] partials, so no atomics sit on the hot path and
the result is deterministic. Their row loops are software-pipelined (tl.range with num_stages=3: the next rows' loads
land in shared memory while a row computes), which costs shared memory (about 2 x 2 bytes x BLOCK per loaded row vector)
instead of stalling on every row's loads.

Every launcher is also a torch.library custom op (namespace fastenc_triton) with a fake implementation, so
torch.compile traces calls to it without graph breaks; in eager mode the launcher runs directly, skipping the
dispatcher's overhead.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import triton
import triton.language as tl

MAX_BLOCK = 16384
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreter_on() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1, read when triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_stand_in: list[bool] = [False]  # set while a stand-in driver takes the launches (fastenc precompile, bench --host)


@contextlib.contextmanager
def stand_in_driver() -> Iterator[None]:
    """Within: a stand-in Triton driver takes the launches, so CPU tensors may reach the kernels (they compile for
    the driver's target; nothing runs)."""
    saved, _stand_in[0] = _stand_in[0], True
    try:
        yield
    finally:
        _stand_in[0] = saved


def launch_reasons(op: str, call: Any) -> list[str]:
    """What SUPPORT cannot declare for every Triton kernel ([] = none): CPU tensors run only in the interpreter or
    through a stand-in driver. Each kernels module's `not_supported_reasons` hook (fastenc.backends) starts here."""
    if call.device.type == "cpu" and not (interpreter_on() or _stand_in[0]):
        return ["CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)"]
    return []


def row_support(op: str, max_hidden: int | None = MAX_BLOCK) -> dict[str, dict]:
    """The SUPPORT declaration of a row-kernel op (see fastenc.backends): CUDA tensors, or CPU ones under the
    interpreter; fp32 / fp16 / bf16; hidden sizes up to `max_hidden` (None: any)."""
    return {op: dict(devices=("cuda", "cpu"), dtypes=FLOAT_DTYPES, max_hidden=max_hidden)}


# ---------------------------------------------------------------------------------------------------------------
# Device helpers (inlined into the kernels).


@triton.jit
def dropout_keep(seed_ptr, row, p, BLOCK: tl.constexpr):
    """[BLOCK] keep-mask (True = kept) of the elements (row, arange(BLOCK)) of a row-wise op (scheme in the module
    doc): one Philox call per four columns, its four words in column order."""
    seed = tl.load(seed_ptr)
    quads = tl.arange(0, BLOCK // 4)
    row_lo = (tl.zeros_like(quads) + (row & 0xFFFFFFFF)).to(tl.uint32)
    row_hi = (tl.zeros_like(quads) + (row >> 32)).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, quads.to(tl.uint32), row_lo, row_hi, tl.zeros_like(row_lo) + 0x7E1)
    t = tl.minimum(tl.cast(p, tl.float64) * 4294967296.0 + 0.5, 4294967295.0).to(tl.uint32)
    # column 4 q + w gets word w; comparing before the joins moves 1 byte per column, not 4, into the row's layout
    return tl.reshape(tl.join(tl.join(r0 >= t, r2 >= t), tl.join(r1 >= t, r3 >= t)), [BLOCK])


@triton.jit
def dropout_scale(p):
    """1 / (1 - p), correctly rounded like the CUDA kernels' host-computed scale; computed once per program."""
    return tl.math.div_rn(1.0, 1.0 - p)


@triton.jit
def tanh(z):
    """tanh from exp(-2|z|), which never overflows: saturates cleanly at +-1 for large |z|."""
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def gelu(u, APPROX_TANH: tl.constexpr):
    """GELU of fp32 `u`: exact erf form, or the tanh form (gelu_new / gelu_pytorch_tanh / gelu_fast)."""
    # literals, not module constants: compiled Triton needs constexpr globals, which the interpreter mishandles;
    # 0.79788... = sqrt(2 / pi), 0.70710... = 1 / sqrt(2), 0.39894... = 1 / sqrt(2 pi)
    if APPROX_TANH:
        return 0.5 * u * (1.0 + tanh(0.7978845608028654 * (u + 0.044715 * u * u * u)))
    else:
        return 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))


@triton.jit
def gelu_and_grad(u, APPROX_TANH: tl.constexpr):
    """(gelu(u), d gelu / du) of fp32 `u`, sharing the transcendental between the two."""
    if APPROX_TANH:
        t = tanh(0.7978845608028654 * (u + 0.044715 * u * u * u))
        g = 0.5 * u * (1.0 + t)
        dg = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * u * u)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476))
        g = u * cdf
        dg = cdf + u * 0.3989422804014327 * tl.exp(-0.5 * u * u)
    return g, dg


@triton.jit
def row_stats(h, mask, D, eps):
    """fp32 mean and 1/sqrt(var + eps) of the row `h` (fp32, masked lanes ignored), two-pass variance."""
    mean = tl.sum(tl.where(mask, h, 0.0), axis=0) / D
    diff = tl.where(mask, h - mean, 0.0)
    var = tl.sum(diff * diff, axis=0) / D
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def row_layer_norm_bwd(dy, xhat, w, rstd, mask, D):
    """dL/dh of y = xhat * w + b, xhat = (h - mean) * rstd, for one fp32 row (masked lanes are zero)."""
    wdy = tl.where(mask, w * dy, 0.0)
    c1 = tl.sum(xhat * wdy, axis=0) / D
    c2 = tl.sum(wdy, axis=0) / D
    return (wdy - (xhat * c1 + c2)) * rstd


# ---------------------------------------------------------------------------------------------------------------
# Host helpers.


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids: plain Python (triton.cdiv costs several microseconds per host call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), in plain Python like `cdiv`."""
    return 1 << max(n - 1, 0).bit_length()


def row_block(d: int, name: str = "the hidden size") -> int:
    """BLOCK for a kernel that keeps one row of `d` elements in registers."""
    block = max(next_pow2(d), 4)  # dropout_keep draws four columns per Philox call
    if block > MAX_BLOCK:
        raise ValueError(f"{name} {d} is larger than the Triton row kernels support ({MAX_BLOCK})")
    return block


def row_warps(block: int) -> int:
    """Warps for a one-row-per-program kernel: about 8 fp32 elements per thread, 1 to 16 warps."""
    return min(max(block // 256, 1), 16)


def reduce_warps(block: int) -> int:
    """Warps for a row-looping backward kernel: about 4 fp32 elements per thread, 1 to 16 warps. Its three fp32
    accumulators and the row temporaries need the extra threads: with the pipelined row loop ptxas (sm_80 / sm_90a)
    gives the add_layer_norm and gelu_layer_norm backward 48 to 64 registers at 4 elements per thread (embeddings:
    72 to 120), 96 to 128 at 8 (BLOCK 4096, where the 16-warp cap applies), and no spills."""
    return min(max(block // 128, 1), 16)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def reduce_programs(device: torch.device, rows: int, warps: int, regs: int = 64) -> int:
    """Programs for a row-looping backward kernel: as many as stay resident together, so they finish in one wave; the
    SM count is cached per device. Residency is bounded by the 64K registers of an SM: `regs` is an upper bound of the
    kernel's registers per thread (ptxas for sm_80 / sm_90a: 48 to 64 for the LayerNorm-family kernels at up to 4
    elements per thread, so 32 warps per SM; 72 to 120 for the embeddings backward), and by 16 programs per SM (the
    block limit of sm_86). More programs than stay resident would run a second, partial wave.

    Under the CPU interpreter a few programs, so the looping and the partial-sum reduction are still exercised.
    """
    if device.type != "cuda":
        return max(1, min(rows, 3))
    index = device.index if device.index is not None else torch.cuda.current_device()
    per_sm = max(1, min(16, 65536 // (regs * 32 * warps)))
    return max(1, min(rows, _sm_count(index) * per_sm))


def partials(*shape: int, rows: int, device: torch.device) -> torch.Tensor:
    """fp32 buffer of per-program partial sums: every program of a launch writes its whole slice, so it starts
    uninitialised (no fill kernel), except when there are no rows, no program runs, and the sums must be zeros."""
    return (torch.empty if rows else torch.zeros)(shape, device=device, dtype=torch.float32)


def sum_partials(parts: torch.Tensor, *dtypes: torch.dtype) -> list[torch.Tensor]:
    """Reduce fp32 partials [k, programs, D] over programs into separate (non-aliasing) tensors, the i-th in
    dtypes[i]; extra dtypes (for partials a call does not have) are ignored."""
    return [part.sum(dim=0).to(dtype) for part, dtype in zip(parts, dtypes, strict=False)]


def dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """`t`, or an empty tensor on `like`'s device standing for "none" in a custom op's tensor-only outputs."""
    return t if t is not None else like.new_empty(0)


def register(name: str, impl: Callable, fake: Callable) -> Callable:
    """Make `impl` the custom op fastenc_triton::<name> with `fake` for tracing; return a launcher that calls the
    op while torch.compile traces and `impl` directly otherwise."""
    op = torch.library.custom_op(f"fastenc_triton::{name}", impl, mutates_args=())
    op.register_fake(fake)

    def launch(*args):
        return op(*args) if torch.compiler.is_compiling() else impl(*args)

    launch.op = op
    return launch
