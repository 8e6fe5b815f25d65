"""Autotune configs of the attention kernels, pruned per GPU, dtype, head dim and sequence length.

Triton's autotuner compiles every config of a kernel variant on its first call (seconds each; minutes for a config
that spills) and then times them all. So each kernel has a short candidate list per head-dim class, in order of
preference, picked from what ptxas reports for sm_80 and sm_90 (registers, spills, shared memory;
tests/test_configs.py compiles them again), and `prune` keeps, at call time:
- fp16 / bf16: the candidates whose estimated shared memory fits the device (Triton's own loader check is the
  backstop) and whose owned tile is no longer than the sequences, at most MAX_KEPT;
- fp32: one small config (fp32 tiles take twice the registers and shared memory: larger ones spill kilobytes).
Tuning results are cached on disk (cache_results), keyed by the tuning key below plus every tensor's dtype, so a
new process times nothing it timed before. Trade-off: a variant may miss a config that a full search would rank
first, in exchange for a first call that compiles at most MAX_KEPT configs instead of eight.

Candidates are (BLOCK_M, BLOCK_N, num_warps, num_stages). In the forward and dq kernels a program owns BLOCK_M
query rows and streams keys BLOCK_N at a time; in the dk/dv kernel it owns BLOCK_N key rows and streams queries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import triton

from fastenc.kernels._common import interpreter_on
from fastenc.kernels._launch import launch as launch_jit

MAX_KEPT = 3
KERNELS = ("fwd", "dkdv", "dq")
TUNE_KEY = ["seqlen_bucket", "BLOCK_D", "HAS_MASK", "PACKED", "DROPOUT", "INPUT_PRECISION", "WINDOW"]
INTERPRETER_CONFIG = (16, 32, 1, 1)

# fp16 / bf16 candidates by BLOCK_D (<= 64, 128) for sm_90 (wgmma); AMPERE replaces some for sm_80 / sm_86 / sm_89
# (mma.sync), where ptxas spills tiles that Hopper's wgmma layouts hold in registers, and DROPOUT replaces some for
# the dropout variants (Philox takes registers). Triton lays a dot that feeds another dot (all three kernels chain
# theirs) out with every warp along the rows of the first dot's tile, 16 rows per warp with mma.sync and 64 per
# warpgroup of 4 warps with wgmma: the rows a program owns (BLOCK_M queries in fwd / dq, BLOCK_N keys in dk/dv, whose
# first dot is S^T = K Q^T) are kept >= 16 x num_warps, and on sm_90 every config has whole warpgroups (a 2-warp
# program cannot issue wgmma and falls back to mma.sync). Each list is the shortest main loop per 1024 scores that
# neither spills nor serialises its wgmma (C7515) in `fastenc precompile --report`; where a larger tile spills (the
# dropout variants: Philox takes registers) a smaller one streams instead. The figures behind each choice (norms,
# spills, by commit and triton release): benchmarks/results/figures.md, benchmarks/results/2026-12-06-sm90a-static/
# and, for the 8-warp 128 x 128 forward and dq tiles, benchmarks/results/2026-12-07-sm90a-static-dropout-patches/.
CANDIDATES: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "fwd": {64: [(128, 128, 8, 2), (128, 64, 4, 3), (64, 32, 4, 2)],
            128: [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)]},
    "dkdv": {64: [(64, 128, 8, 2), (16, 64, 4, 2)],
             128: [(16, 128, 8, 2), (16, 64, 4, 2)]},
    "dq": {64: [(128, 128, 8, 2), (128, 64, 8, 2), (64, 32, 4, 3)],
           128: [(64, 32, 4, 2)]},
}
DROPOUT: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "fwd": {64: [(128, 128, 8, 2), (128, 64, 8, 3), (64, 32, 4, 2)],
            128: [(128, 32, 8, 2), (64, 32, 4, 2)]},
    "dkdv": {64: [(32, 128, 8, 2), (16, 64, 4, 2)]},
}
# Dropout d64 on the padded layout without a window: dk/dv's 64 x 128 tile holds Philox's registers there, not on the
# packed layout nor with a window (the forward's 4-warp 128 x 64 tile, kept here before the 8-warp 128 x 128 one
# became first, spills 24 B/thread with TMA under triton 3.9); figures in
# benchmarks/results/2026-12-07-sm90a-static-dropout-patches/. Every tile is a whole number of the dropout scheme's
# 16-row x 32-key patches (kernels/attention.py).
DROPOUT_PADDED: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "dkdv": {64: [(64, 128, 8, 2), (16, 64, 4, 2)]},
}
# sm_80 / sm_86 / sm_89 (mma.sync): shorter tiles where a Hopper tile spills; figures: benchmarks/results/figures.md.
AMPERE: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "fwd": {64: [(128, 64, 8, 3), (64, 32, 4, 2)],
            128: [(64, 32, 4, 2)]},
    "dkdv": {64: [(32, 128, 8, 2), (16, 64, 4, 2), (32, 32, 2, 2)],
             128: [(16, 64, 4, 2), (16, 32, 2, 2)]},
    "dq": {64: [(128, 32, 8, 2), (64, 32, 4, 3)],
           128: [(64, 32, 4, 2), (32, 32, 2, 2)]},
}
# With dropout on sm_80, dk/dv d64 takes 16 queries a step (32 spill under triton 3.6; figures.md).
AMPERE_DROPOUT: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "dkdv": {64: [(16, 128, 8, 2), (16, 64, 4, 2), (32, 32, 2, 2)]},
}
# With a local window (WINDOW) on sm_90a the forward's three key loops hold more registers: its 4-warp 128 x 64
# (d64) and 64 x 64 (d128) configs spill on the packed layout (benchmarks/results/2026-12-07-sm90a-window-static/);
# these lists leave them out. dq's three loops keep the 128 x 64 tile (its 128 x 128 one, first without a window,
# spills with a window and dropout: benchmarks/results/2026-12-07-sm90a-static-dropout-patches/).
WINDOW: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "fwd": {64: [(128, 64, 8, 3), (64, 32, 4, 2)],
            128: [(128, 64, 8, 2), (64, 32, 4, 2)]},
    "dq": {64: [(128, 64, 8, 2), (64, 32, 4, 3)]},
}
# With a window and dropout on sm_90a, d128: the 4-warp forward (64, 32) and dk/dv (16, 64) reach 255 registers and
# spill 8 B/thread (forward packed under triton 3.9, dk/dv padded under 3.6;
# benchmarks/results/2026-12-07-sm90a-static-dropout/); at d64 the forward's and dq's 128 x 128 tiles spill (up to
# 120 B/thread; benchmarks/results/2026-12-07-sm90a-static-dropout-patches/), so they keep 128 x 64.
WINDOW_DROPOUT: dict[str, dict[int, list[tuple[int, int, int, int]]]] = {
    "fwd": {64: [(128, 64, 8, 3), (64, 32, 4, 2)],
            128: [(128, 32, 8, 2)]},
    "dq": {64: [(128, 64, 8, 2), (64, 32, 4, 3)]},
    "dkdv": {128: [(16, 128, 8, 2)]},
}
FP32: dict[str, tuple[int, int, int, int]] = {"fwd": (32, 32, 4, 2), "dkdv": (16, 32, 4, 2), "dq": (32, 32, 4, 2)}


def _config(c: tuple[int, int, int, int]) -> triton.Config:
    m, n, w, s = c
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)


def _as_tuple(cfg: triton.Config) -> tuple[int, int, int, int]:
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages


def configs(kernel: str) -> list[triton.Config]:
    """Every candidate of `kernel` (the autotuner's list; `prune` picks from it per call); one small config
    under the interpreter."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if interpreter_on():
        return [_config(INTERPRETER_CONFIG)]
    tables = (CANDIDATES, DROPOUT, DROPOUT_PADDED, WINDOW, WINDOW_DROPOUT, AMPERE, AMPERE_DROPOUT)
    lists = [*(cs for t in tables for cs in t.get(kernel, {}).values()), [FP32[kernel]]]
    seen = dict.fromkeys(c for cs in lists for c in cs)
    return [_config(c) for c in seen]


def shared_estimate(kernel: str, c: tuple[int, int, int, int], block_d: int, elt: int) -> int:
    """Upper estimate of a config's shared memory in bytes: the owned tile, the streamed tiles times the pipeline
    depth, and in the backward two fp32 [BLOCK_M, BLOCK_N] tiles that change layout (checked against ptxas's figures
    for sm_80 and sm_90 by tests/test_configs.py)."""
    m, n, _, stages = c
    owned, streamed = {"fwd": (m, 2 * n), "dq": (2 * m, 2 * n), "dkdv": (2 * n, 2 * m)}[kernel]
    extra = 0 if kernel == "fwd" else 2 * m * n * 4
    return (owned + max(1, stages - 1) * streamed) * block_d * elt + extra


def _owned_rows(kernel: str, c: tuple[int, int, int, int]) -> int:
    return c[1] if kernel == "dkdv" else c[0]


def candidates(kernel: str, block_d: int, arch: int, dropout: bool = False, window: bool = False,
               packed: bool = False) -> list[tuple[int, int, int, int]]:
    """fp16 / bf16 candidates of `kernel` at this BLOCK_D on a GPU of compute capability `arch` (80, 86, 89, 90),
    for its dropout variant if `dropout`, its local-window variant if `window`, on the packed layout if `packed`."""
    d = 64 if block_d <= 64 else 128
    if arch < 90:
        tables = (AMPERE_DROPOUT, AMPERE) if dropout else (AMPERE,)
    else:
        first = (WINDOW_DROPOUT,) if window else () if packed else (DROPOUT_PADDED,)
        tables = (*first, DROPOUT) if dropout else (WINDOW,) if window else ()
    for table in tables:
        if d in table.get(kernel, {}):
            return table[kernel][d]
    return CANDIDATES[kernel][d]


def kept(kernel: str, dtype_bytes: int, block_d: int, seqlen_bucket: int, max_shared: int, arch: int,
         dropout: bool = False, window: bool = False, packed: bool = False) -> list[tuple[int, int, int, int]]:
    """The candidates `prune` keeps for this call, best first (never empty)."""
    if dtype_bytes == 4:
        return [FP32[kernel]]
    cands = candidates(kernel, block_d, arch, dropout, window, packed)
    fits = [c for c in cands if shared_estimate(kernel, c, block_d, dtype_bytes) <= max_shared]
    fits = fits or [min(cands, key=lambda c: shared_estimate(kernel, c, block_d, dtype_bytes))]
    short = [c for c in fits if _owned_rows(kernel, c) <= max(seqlen_bucket, 16)]
    return (short or [min(fits, key=lambda c: _owned_rows(kernel, c))])[:MAX_KEPT]


def arch() -> int:
    """Compute capability of the current device as Triton numbers it (80, 90, ...)."""
    from triton.runtime.driver import driver

    return int(driver.active.get_current_target().arch)


def _device() -> tuple[int, int]:
    """(compute capability as Triton numbers it, opt-in shared memory per block) of the current device."""
    from triton.runtime.driver import driver

    active = driver.active
    props = active.utils.get_device_properties(active.get_current_device())
    return arch(), int(props["max_shared_mem"])


def prune(kernel: str) -> Callable:
    """`early_config_prune` for `kernel`'s autotuner: reads the device, and dtype, BLOCK_D, seqlen_bucket, DROPOUT,
    WINDOW and PACKED of the call."""

    def early_config_prune(cfgs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        args = {**named_args, **kwargs}
        arch, max_shared = _device()
        keep = kept(kernel, args["q_ptr"].element_size(), args["BLOCK_D"], int(args["seqlen_bucket"]), max_shared,
                    arch, bool(args["DROPOUT"]), bool(args.get("WINDOW", False)), bool(args.get("PACKED", False)))
        by_tuple = {_as_tuple(c): c for c in cfgs}
        return [by_tuple[c] for c in keep if c in by_tuple] or cfgs[:1]

    return early_config_prune


# The autotuners' choices by tuning key. Triton's Autotuner.run rebuilds its key from every argument on every call
# (tens of microseconds of host time per launch); a call whose key was already met launches the jitted kernel
# directly with the chosen config (through _launch, which also skips JITFunction.run's binding where it can). The
# key given must determine the autotuner's own (TUNE_KEY and the arguments' dtypes). `forget` drops the choices
# (fastenc.precompile does, as its stand-in timings pick them).
_chosen: dict[tuple, triton.Config] = {}


def launch(tuner: Any, grid: Any, key: tuple, *args: Any, **consts: Any) -> None:
    """tuner[grid](*args, **consts), through the autotuner only the first time `key` is met for this tuner."""
    cfg = _chosen.get((tuner, key))
    if cfg is None:
        tuner[grid](*args, **consts)
        _chosen[(tuner, key)] = tuner.best_config
        return
    launch_jit(tuner.fn, grid, *args, **consts, **cfg.all_kwargs())


def forget() -> None:
    _chosen.clear()

