"""The CUDA row kernels (csrc/add_layer_norm.cu and csrc/embeddings.cu over csrc/layer_norm.cuh and the column sums
of csrc/common.cu) run on the CPU through their own launchers (tests/ops/row_ops_emulation.cpp: a host thread per
CUDA thread, barriers for __syncthreads and the warp shuffles), and every output must match a float64 reference:
y, h, mean, rstd and every gradient, with and without residual, x_bias, LayerNorm bias, the returned h's gradient
(pre-LN), position and token type tables, dropout (the documented Philox mask), in both backward modes (one chunk
per thread in registers, and the looping mode with shared-memory sums), vector and scalar loads, fp32 and fp16.

The sources compile unchanged but for their launch syntax, which this module rewrites into calls of the emulator
(g++ cannot parse `<<<...>>>`). Needs g++ (C++20) and the CUDA headers; skipped without them. Shapes are a few
rows (a host thread per CUDA thread is slow): about a minute for the file on a 2-core machine, compile included.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close_to_ref
from tests.ops.test_attention import _philox4x32_10
from tests.test_cuda_build import build_host_emulation

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"f": torch.float32, "h": torch.float16}


def _emulable(src: str) -> str:
    """`src` with every `kernel<<<grid, block, smem, stream>>>(args)` as `::emu::launch(grid, block, smem, stream,
    [&] { kernel(args); })` and `extern __shared__ T name[];` as a pointer to the emulator's buffer."""
    out, i = [], 0
    while (j := src.find("<<<", i)) >= 0:
        k = j
        while src[k - 1].isspace():
            k -= 1
        end = k
        if src[k - 1] == ">":  # the kernel's template arguments
            depth = 0
            while True:
                k -= 1
                depth += {">": 1, "<": -1}.get(src[k], 0)
                if depth == 0:
                    break
        while src[k - 1].isalnum() or src[k - 1] in "_:":
            k -= 1
        cfg_end = src.index(">>>", j)
        a0 = src.index("(", cfg_end)
        m, depth = a0, 0
        while True:
            depth += {"(": 1, ")": -1}.get(src[m], 0)
            if depth == 0:
                break
            m += 1
        out += [src[i:k], f"::emu::launch({src[j + 3:cfg_end]}, [&] {{ {src[k:end]}({src[a0 + 1:m]}); }})"]
        i = m + 1
    out.append(src[i:])
    return re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* \2 = reinterpret_cast<\1*>(::emu::dyn_smem);",
                  "".join(out))


def test_emulable_rewrites_launches():
    src = "f<T, 2>\n  <<<g, b(x), 0, s>>>(op, (a + 1) / 2);\nextern __shared__ float acc[];"
    assert _emulable(src) == ("::emu::launch(g, b(x), 0, s, [&] { f<T, 2>(op, (a + 1) / 2); });\n"
                              "float* acc = reinterpret_cast<float*>(::emu::dyn_smem);")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("row_ops_sources")
    for f in (ROOT / "csrc").iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            (src / f.name).write_text(_emulable(f.read_text()))
    return build_host_emulation(ROOT / "tests" / "ops" / "row_ops_emulation.cpp",
                                tmp_path_factory.mktemp("row_ops_emulation"), "-fno-strict-aliasing", "-I", str(src))


def _keep(seed: int, p: float, n: int, d: int) -> torch.Tensor:
    """[n, d] keep mask of the documented row-wise scheme (fastenc.kernels._common)."""
    row, col = np.meshgrid(np.arange(n), np.arange(d), indexing="ij")
    words = _philox4x32_10(seed, np.stack(np.broadcast_arrays(col // 4, row, 0, 0x7E1), -1).astype(np.uint32))
    word = np.take_along_axis(words, (col % 4)[..., None], -1)[..., 0]
    return torch.from_numpy(word >= math.floor(float(np.float32(p)) * 2**32 + 0.5))


def _run(exe: Path, workdir: Path, params: str, inputs: dict[str, torch.Tensor]) -> None:
    (workdir / "params.txt").write_text(params + "\n")
    for name, t in inputs.items():
        t.contiguous().numpy().tofile(workdir / f"{name}.bin")
    run = subprocess.run([str(exe), str(workdir)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _read(workdir: Path, name: str, dtype: torch.dtype, shape) -> torch.Tensor:
    raw = np.fromfile(workdir / f"{name}.bin", dtype=np.float32 if dtype == torch.float32 else np.int16)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


ALN_CASES = {  # dtype, param dtype, n, d, residual, x_bias, bias, dh_extra, dropout_p
    "post_ln": ("f", "f", 5, 40, 1, 1, 1, 0, 0.0),
    "pre_ln_bias_free": ("f", "f", 5, 40, 1, 0, 0, 1, 0.0),
    "pre_ln_dropout": ("f", "f", 4, 48, 1, 1, 0, 1, 0.3),
    "no_residual_dropout_bias": ("h", "f", 3, 64, 0, 1, 1, 1, 0.25),
    "fp16_vec8": ("h", "h", 3, 1000, 1, 0, 0, 1, 0.0),
    "scalar_loads": ("f", "f", 3, 37, 1, 1, 0, 1, 0.2),
    "looping_mode": ("f", "f", 2, 2100, 1, 1, 0, 1, 0.1),
}


@pytest.mark.parametrize("case", ALN_CASES)
def test_add_layer_norm(emulator, tmp_path, case):
    dt, pdt, n, d, has_res, has_xb, has_b, has_dhx, p = ALN_CASES[case]
    dtype, pdtype = DTYPES[dt], DTYPES[pdt]
    seed, eps = 2**33 + 77, 1e-5
    r = lambda *s, dtype=dtype: torch.randn(*s, dtype=dtype)  # noqa: E731
    x, res, xb = r(n, d), r(n, d) if has_res else None, r(d) if has_xb else None
    w, b = (1 + 0.5 * r(d, dtype=pdtype)), r(d, dtype=pdtype) if has_b else None
    dy, dhx = r(n, d), r(n, d) if has_dhx else None
    inputs = {"x": x, "w": w, "dy": dy, "res": res, "xb": xb, "b": b, "dhx": dhx}
    _run(emulator, tmp_path, f"aln {dt} {pdt} {n} {d} {has_res} {has_xb} {has_b} {has_dhx} {p!r} {seed} {eps!r}",
         {k: v for k, v in inputs.items() if v is not None})
    out = {name: _read(tmp_path, name, dtype, (n, d)) for name in ("y", "h", "dx", "dh")}
    out |= {name: _read(tmp_path, name, torch.float32, (n,)) for name in ("mean", "rstd")}
    out |= {"dxb": _read(tmp_path, "dxb", dtype, (d,))} | {k: _read(tmp_path, k, pdtype, (d,)) for k in ("dw", "db")}

    keep = _keep(seed, p, n, d) if p > 0 else torch.ones(n, d, dtype=torch.bool)
    leaves = {k: v.double().requires_grad_() for k, v in inputs.items() if v is not None and k not in ("dy", "dhx")}
    h = leaves["x"] + leaves["xb"] if has_xb else leaves["x"]
    h = h * keep / (1 - p)
    h = h + leaves["res"] if has_res else h
    y = F.layer_norm(h, (d,), leaves["w"], leaves.get("b"), eps)
    h.retain_grad()
    torch.autograd.backward([y, h] if has_dhx else [y], [dy.double(), dhx.double()] if has_dhx else [dy.double()])
    atol = 2e-5 if dtype == torch.float32 else 4e-3
    assert_close_to_ref(out["h"], h.detach(), atol=atol, name="h")
    assert_close_to_ref(out["y"], y.detach(), atol=atol * 4, rtol=1e-3, name="y")
    assert_close_to_ref(out["mean"], h.detach().mean(-1), atol=atol, name="mean")
    assert_close_to_ref(out["rstd"], (h.detach().var(-1, unbiased=False) + eps).rsqrt(), atol=atol * 10, rtol=1e-3,
                        name="rstd")
    gatol = atol * 20 if dtype == torch.float32 else 3e-2
    dh64 = leaves["res"].grad if has_res else h.grad  # the residual's gradient is dL/dh, dh_extra included
    assert_close_to_ref(out["dh"], dh64, atol=gatol, rtol=1e-3, name="dh")
    if p > 0:
        assert_close_to_ref(out["dx"], leaves["x"].grad, atol=gatol, rtol=1e-3, name="dx")
    else:
        assert (out["dx"] == 0).all()  # not written: dx is dh
        assert_close_to_ref(out["dh"], leaves["x"].grad, atol=gatol, rtol=1e-3, name="dx")
    assert_close_to_ref(out["dw"], leaves["w"].grad, atol=gatol * 5, rtol=1e-3, name="dweight")
    if has_b:
        assert_close_to_ref(out["db"], leaves["b"].grad, atol=gatol * 5, rtol=1e-3, name="dbias")
    else:
        assert (out["db"] == 0).all()  # not written
    if has_xb:
        assert_close_to_ref(out["dxb"], leaves["xb"].grad, atol=gatol * 5, rtol=1e-3, name="dx_bias")


EMB_CASES = {  # dtype, param dtype, n, e, V, P, T, bias, dropout_p
    "bert": ("f", "f", 6, 40, 9, 7, 2, 1, 0.0),
    "modernbert": ("f", "f", 6, 40, 9, 0, 0, 0, 0.0),
    "modernbert_dropout": ("f", "f", 5, 48, 9, 0, 0, 0, 0.2),
    "gte": ("h", "f", 6, 64, 9, 0, 2, 1, 0.0),
    "positions_bias_free_fp16": ("h", "h", 4, 1000, 7, 5, 0, 0, 0.1),
    "looping_mode": ("f", "f", 3, 2100, 5, 0, 3, 0, 0.0),
}


@pytest.mark.parametrize("case", EMB_CASES)
def test_embeddings(emulator, tmp_path, case):
    dt, pdt, n, e, vocab, npos, ntt, has_b, p = EMB_CASES[case]
    dtype, pdtype = DTYPES[dt], DTYPES[pdt]
    seed, eps, word_pad, pos_pad = 12345, 1e-5, 1, 0
    ids = torch.randint(0, vocab, (n,))
    ids[0] = word_pad
    tables = {"word": torch.randn(vocab, e, dtype=dtype), "w": 1 + 0.5 * torch.randn(e, dtype=pdtype)}
    inputs = {"ids": ids}
    if npos:
        inputs["pos_ids"], tables["pos"] = torch.randint(0, npos, (n,)), torch.randn(npos, e, dtype=dtype)
        inputs["pos_ids"][1] = pos_pad
    if ntt:
        inputs["tt_ids"], tables["tt"] = torch.randint(0, ntt, (n,)), torch.randn(ntt, e, dtype=dtype)
    if has_b:
        tables["b"] = torch.randn(e, dtype=pdtype)
    dy = torch.randn(n, e, dtype=dtype)
    _run(emulator, tmp_path, f"emb {dt} {pdt} {n} {e} {vocab} {npos} {ntt} {has_b} {p!r} {seed} {eps!r} {word_pad} "
         f"{pos_pad}", {**inputs, **tables, "dy": dy})

    leaves = {k: v.double().requires_grad_() for k, v in tables.items()}
    h = F.embedding(ids, leaves["word"], word_pad)
    if ntt:
        h = h + F.embedding(inputs["tt_ids"], leaves["tt"])
    if npos:
        h = h + F.embedding(inputs["pos_ids"], leaves["pos"], pos_pad)
    keep = _keep(seed, p, n, e) if p > 0 else torch.ones(n, e, dtype=torch.bool)
    y = F.layer_norm(h, (e,), leaves["w"], leaves.get("b"), eps) * keep / (1 - p)
    y.backward(dy.double())
    atol = 2e-5 if dtype == torch.float32 else 4e-3
    assert_close_to_ref(_read(tmp_path, "y", dtype, (n, e)), y.detach(), atol=atol * 4, rtol=1e-3, name="y")
    assert_close_to_ref(_read(tmp_path, "mean", torch.float32, (n,)), h.detach().mean(-1), atol=atol, name="mean")
    gatol = atol * 20 if dtype == torch.float32 else 3e-2
    grads = {"dword": ("word", (vocab, e), torch.float32), "dpos": ("pos", (npos, e), torch.float32),
             "dtt": ("tt", (ntt, e), torch.float32), "dw": ("w", (e,), pdtype), "db": ("b", (e,), pdtype)}
    for out_name, (name, shape, dtype_out) in grads.items():
        got = _read(tmp_path, out_name, dtype_out, shape)
        if name in leaves:
            assert_close_to_ref(got, leaves[name].grad, atol=gatol * 5, rtol=1e-3, name=out_name)
        else:
            assert (got == 0).all(), out_name  # no table, no bias: nothing written
    assert (_read(tmp_path, "dword", torch.float32, (vocab, e))[word_pad] == 0).all()
