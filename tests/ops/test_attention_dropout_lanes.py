"""The CUDA attention kernels' in-tile dropout (csrc/attention_dropout.cuh) run on the CPU: a C++ harness compiled
with the host compiler runs each lane of a warp as a thread and their shuffles through a barrier, and the keep bits
every lane gets for its accumulator elements must be the documented Philox scheme (fastenc.kernels.attention) at
those elements' coordinates, in both tile orientations (rows = queries: forward and dQ; rows = keys: dK / dV).

Needs g++ (C++20) and the CUDA headers (nvcc's include folder); skipped without them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.ops.test_attention import _attention_keep
from tests.test_cuda_build import build_host_emulation

ROOT = Path(__file__).resolve().parents[2]


def _expected_bits(kind: str, nt: int, b: int, h: int, row0: int, col0: int, seed: int, p: float) -> np.ndarray:
    """[32] keep bits: bit 4 * t + e for accumulator element acc[t][e] of lane 4 g + tq (m16n8 layout)."""
    lane, t, e = np.meshgrid(np.arange(32), np.arange(nt), np.arange(4), indexing="ij")
    g, tq = lane >> 2, lane & 3
    row = row0 + g + 8 * (e >> 1)
    col = col0 + 8 * t + 2 * tq + (e & 1)
    i, j = (row, col) if kind == "q" else (col, row)
    keep = _attention_keep(seed, p, b, h, i, j).astype(np.uint64)
    return (keep << (4 * t + e).astype(np.uint64)).reshape(32, -1).sum(1)


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    return build_host_emulation(ROOT / "tests" / "ops" / "attention_dropout_lanes.cpp",
                                tmp_path_factory.mktemp("lanes"))


def test_every_lane_gets_the_documented_mask(harness):
    seed = 2**33 + 91
    cases = [(kind, nt, b, h, row0, col0, seed, p)
             for kind in ("q", "k") for nt in (4, 8) for (b, h, row0, col0, p) in
             ((0, 0, 0, 0, 0.1), (3, 5, 48, 160 if kind == "q" else 144, 0.3 + 2**-12),
              (1, 11, 2064, 32 if kind == "q" else 16, 0.5))]
    stdin = "".join(" ".join(map(str, c)) + "\n" for c in cases)
    run = subprocess.run([str(harness)], input=stdin, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("\n")
    for case, line in zip(cases, lines, strict=False):
        got = np.array([int(x) for x in line.split()], dtype=np.uint64)
        expected = _expected_bits(*case)
        assert np.array_equal(got, expected), f"tile {case}: lanes {np.nonzero(got != expected)[0].tolist()} differ"
    assert len([line for line in lines if line]) == len(cases)
