"""The CUDA gated_act kernels (csrc/gated_act_kernels.cuh) run unchanged on the CPU (tests/ops/gated_act_emulation.cpp:
blocks and threads one after another, as the launcher shapes them), and must match the float64 reference and the
Triton kernels: outputs and both gradients, the three activations, both input forms read through a row stride wider
than the row, scalar and 16-byte-vector paths, and dropout drawing the same mask as the Triton kernels bit for bit
(the documented row-wise Philox scheme). This checks what an nvcc build cannot: indexing, strides, the halves of the
one-tensor form and the dropout counters of the CUDA code.

Needs g++ (C++20) and the CUDA headers; skipped without them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fastenc import backends
from fastenc.ops import gated_act_ref
from fastenc.ops.gated_act import ACTIVATIONS
from tests.helpers import assert_close_to_ref
from tests.ops.test_gated_act import _replayed_keep
from tests.test_cuda_build import build_host_emulation

ROOT = Path(__file__).resolve().parents[2]
CODES = {torch.float32: "f", torch.float16: "h", torch.bfloat16: "b"}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
NP_INT = {torch.float32: np.int32, torch.float16: np.int16, torch.bfloat16: np.int16}
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    return build_host_emulation(ROOT / "tests" / "ops" / "gated_act_emulation.cpp",
                                tmp_path_factory.mktemp("gated_act_emulation"), "-fno-strict-aliasing")


def _emulate(exe, workdir, wide, y, dout, *, split, activation, p, seed, vec):
    n, d = dout.shape
    dtype = wide.dtype
    (workdir / "params.txt").write_text(f"{CODES[dtype]} {n} {d} {wide.shape[1]} {int(split)} "
                                        f"{ACTIVATIONS.index(activation)} {p!r} {seed} {vec}\n")
    tensors = [("x", wide), ("dout", dout)] + ([] if split else [("y", y)])
    for name, t in tensors:
        t.contiguous().view(INT_VIEW[dtype]).numpy().tofile(workdir / f"{name}.bin")
    run = subprocess.run([str(exe), str(workdir)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    def load(name, cols):
        raw = np.fromfile(workdir / f"{name}.bin", dtype=NP_INT[dtype])
        return torch.from_numpy(raw).view(dtype).view(n, cols)

    return load("out", d), load("dx", 2 * d if split else d), None if split else load("dy", d)


CASES = [
    # (split, activation, dtype, vec, p)
    (True, "gelu", torch.float32, 4, 0.0),
    (True, "silu", torch.float16, 8, 0.3),
    (True, "gelu_tanh", torch.bfloat16, 1, 0.3),
    (False, "gelu_tanh", torch.float32, 1, 0.0),
    (False, "gelu", torch.float16, 8, 0.3),
    (False, "silu", torch.float32, 4, 0.3),
]


@pytest.mark.parametrize("split, activation, dtype, vec, p", CASES, ids=[
    f"{'split' if c[0] else 'xy'}-{c[1]}-{str(c[2]).removeprefix('torch.')}-vec{c[3]}-p{c[4]}" for c in CASES])
def test_cuda_kernels_match_ref_and_triton(emulator, tmp_path, split, activation, dtype, vec, p):
    n, d, seed = 37, 72, 2**40 + 99
    g = torch.Generator().manual_seed(0)
    cols = (2 * d if split else d) + 8  # a row stride wider than the row, a multiple of every vector width
    # positive inputs, so act(x) * y is never zero and the mask reads off the output
    wide = (torch.rand(n, cols, generator=g) * 3 + 0.25).to(dtype)
    x = wide[:, : 2 * d] if split else wide[:, :d]
    y = None if split else (torch.rand(n, d, generator=g) + 0.5).to(dtype)
    dout = torch.randn(n, d, generator=g).to(dtype)
    out, dx, dy = _emulate(emulator, tmp_path, wide, y, dout, split=split, activation=activation, p=p, seed=seed,
                           vec=vec)

    keep = _replayed_keep(seed, p, n, d) if p > 0 else torch.ones(n, d, dtype=torch.bool)
    assert torch.equal(out != 0, keep), "the CUDA kernels' mask is the documented Philox scheme"
    scale = 1 / (1 - p)

    def masked_ref(x, y):
        return gated_act_ref(x, y, activation) * keep * scale

    def grads(x, y, dout):
        leaves = [t.clone().requires_grad_() for t in (x, y) if t is not None]
        out = masked_ref(*leaves, *([None] if split else []))
        return out, torch.autograd.grad(out, leaves, dout)

    out64, grads64 = grads(x.double(), None if split else y.double(), dout.double())
    out_t, grads_t = grads(x, y, dout)
    assert_close_to_ref(out, out64, out_t, atol=ATOL[dtype], name="out")
    assert_close_to_ref(dx, grads64[0], grads_t[0], atol=ATOL[dtype], name="dx")
    if not split:
        assert_close_to_ref(dy, grads64[1], grads_t[1], atol=ATOL[dtype], name="dy")

    # the Triton kernels on the same inputs and seed: the same mask bit for bit, the same values up to rounding
    impl = backends.launchers("triton", "gated_act")
    seed_t = torch.tensor([seed], dtype=torch.int64)
    out_tr = impl.gated_act_fwd(x, y, activation, p, seed_t)
    dx_tr, dy_tr = impl.gated_act_bwd(dout, x, y, activation, p, seed_t)
    assert torch.equal(out_tr != 0, out != 0)
    assert torch.equal(dx_tr[:, :d] != 0, dx[:, :d] != 0)
    for a, b in ((out, out_tr), (dx, dx_tr), *(() if split else ((dy, dy_tr),))):
        torch.testing.assert_close(a, b, atol=ATOL[dtype], rtol=2 * torch.finfo(dtype).eps)
