"""The CUDA rotary kernel (csrc/rotary.cuh) runs unchanged on the CPU (tests/ops/rotary_emulation.cpp: threads in
turn, the launcher's own vector choice and launch shape under a small grid cap, NaN guard zones around the input
and after the outputs), and its outputs must match rotary_ref in float64: forward and the inverse rotation of the
backward, q and k as strided views of one fused QKV buffer, separate and misaligned buffers (the scalar path), int32
and int64 positions up to 8191, both ModernBERT thetas. This checks the kernel's indexing, vector path and grid
stride, which no nvcc build can.

Needs g++ (C++20) and the CUDA headers; skipped without them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fastenc.ops import rotary_ref
from tests.helpers import assert_close_to_ref
from tests.test_cuda_build import build_host_emulation

ROOT = Path(__file__).resolve().parents[2]
CODES = {torch.float32: "f", torch.float16: "h", torch.bfloat16: "b"}
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    return build_host_emulation(ROOT / "tests" / "ops" / "rotary_emulation.cpp",
                                tmp_path_factory.mktemp("rotary_emulation"), "-fno-strict-aliasing")


def _emulate(exe: Path, workdir: Path, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
             theta: float, inverse: bool, max_blocks: int) -> tuple[list[torch.Tensor], str]:
    """Run the kernel on q, k: [n, heads, D] views of the flat buffer x."""
    n, heads, d = q.shape
    base = x.data_ptr()
    offsets = [(t.data_ptr() - base) // x.element_size() for t in (q, k)]
    (workdir / "params.txt").write_text(
        f"{CODES[x.dtype]} {n} {heads} {d // 2} {offsets[0]} {q.stride(0)} {q.stride(1)} {offsets[1]} {k.stride(0)} "
        f"{k.stride(1)} {x.numel()} {theta!r} {int(inverse)} {int(positions.dtype == torch.int64)} {max_blocks}\n")
    raw = x.view(torch.int16) if x.element_size() == 2 else x
    raw.numpy().tofile(workdir / "x.bin")
    positions.numpy().tofile(workdir / "pos.bin")
    run = subprocess.run([str(exe), str(workdir)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    outs = []
    for name in ("q_out", "k_out"):
        data = np.fromfile(workdir / f"{name}.bin", dtype=np.int16 if x.element_size() == 2 else np.float32)
        outs.append(torch.from_numpy(data).view(x.dtype).reshape(n, heads, d))
    return outs, run.stdout.strip()


CASES = {
    # name: dtype, heads, head_dim, layout of q / k in the buffer, positions dtype, theta, inverse, expected vec
    "fp16-fused-d64-vec-int64": (torch.float16, 3, 64, "fused", torch.int64, 160000.0, False, 8),
    "bf16-fused-d64-vec-inverse": (torch.bfloat16, 2, 64, "fused", torch.int32, 10000.0, True, 8),
    "fp32-separate-d16-vec": (torch.float32, 4, 16, "separate", torch.int64, 10000.0, False, 4),
    "fp16-separate-d24-scalar": (torch.float16, 2, 24, "separate", torch.int32, 160000.0, True, 1),  # half = 12
    "fp32-misaligned-d32-scalar": (torch.float32, 2, 32, "misaligned", torch.int64, 160000.0, False, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_emulated_cuda_kernel_matches_float64(emulator, tmp_path, case):
    dtype, heads, d, layout, pos_dtype, theta, inverse, vec = CASES[case]
    gen = torch.Generator().manual_seed(len(case) * 100 + d)
    n = 300
    if layout == "fused":  # [n, 3, heads, d]: q and k views with token stride 3 heads d
        x = torch.randn(n * 3 * heads * d, generator=gen).to(dtype)
        qkv = x.view(n, 3, heads, d)
        q, k = qkv[:, 0], qkv[:, 1]
    else:  # q [n, heads, d] then k, k shifted by one element when misaligned (no 16-byte vectors then)
        shift = 1 if layout == "misaligned" else 0
        x = torch.randn(2 * n * heads * d + shift, generator=gen).to(dtype)
        q = x[: n * heads * d].view(n, heads, d)
        k = x[n * heads * d + shift:].view(n, heads, d)
    positions = torch.randint(0, 8192, (n,), generator=gen, dtype=torch.int64)
    positions[-1] = 8191
    positions = positions.to(pos_dtype)
    max_blocks = 2  # fewer blocks than the tokens need: threads loop over tokens
    (q_out, k_out), shape = _emulate(emulator, tmp_path, x, q, k, positions, theta, inverse, max_blocks)
    words = shape.split()
    assert words[:4] == ["vec", str(vec), "grid", str(max_blocks)] and n > max_blocks * int(words[-1]), shape
    ref_pos = -positions.long() if inverse else positions.long()  # rotation by -angle = rotation at -pos
    refs64 = rotary_ref(q.double(), k.double(), ref_pos, theta)
    refs_t = rotary_ref(q, k, ref_pos, theta)
    for name, out, r64, rt in zip(("q_out", "k_out"), (q_out, k_out), refs64, refs_t, strict=True):
        assert_close_to_ref(out, r64, rt, atol=ATOL[dtype], name=name)
