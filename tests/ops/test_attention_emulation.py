"""The CUDA attention kernels (csrc/attention_kernels.cuh) run unchanged on the CPU over an emulation of their PTX
(tests/ops/attention_emulation.cpp: a host thread per CUDA thread, ldmatrix / mma.sync fragments from the PTX ISA's
layouts, deferred cp.async that poisons its destination until waited for; shared-memory bounds, alignment and
ldmatrix bank conflicts checked), and their outputs must match a float64 attention: o and the log-sum-exp, and dQ,
dK, dV with key masks, packed sequences, dropout (the documented Philox mask), rows with no key, q / k / v as
strided views of one fused projection (padded cases), and a local window (|i - j| <= window: the kernels' kWindow
instantiations, with windows small enough that blocks skip whole tiles, window 0, masks and dropout). This checks
what no nvcc build can: which rows each warp's row tiles cover, where the per-row softmax statistics live, which
shared-memory rows each tile reads and writes, and the cp.async / barrier order of the double buffers.

Needs g++ (C++20) and the CUDA headers; skipped without them. Shapes are a few blocks per kernel (a host thread per
CUDA thread is slow): about 30-60 s for the file on a 2-core machine, compile included.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fastenc.ops import attention_ref
from tests.helpers import assert_close_to_ref
from tests.ops.test_attention import _attention_keep
from tests.test_cuda_build import build_host_emulation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    return build_host_emulation(ROOT / "tests" / "ops" / "attention_emulation.cpp",
                                tmp_path_factory.mktemp("attention_emulation"), "-fno-strict-aliasing")


def _dropout_keep(seed: int, p: float, batch: int, heads: int, seqlen: int) -> torch.Tensor:
    """[B, H, S, S] keep mask of the documented scheme (fastenc.kernels.attention)."""
    b, h, i, j = np.meshgrid(*(np.arange(n) for n in (batch, heads, seqlen, seqlen)), indexing="ij")
    return torch.from_numpy(_attention_keep(seed, p, b, h, i, j))


def _emulate(exe: Path, workdir: Path, q, k, v, do, *, dtype, mask=None, cu=None, max_seqlen, scale, p, seed,
             fused, window=-1):
    packed = cu is not None
    batch = cu.numel() - 1 if packed else q.shape[0]
    heads, d = q.shape[-2], q.shape[-1]
    rows = q.shape[0] if packed else q.shape[1]
    code = "h" if dtype == torch.float16 else "b"
    (workdir / "params.txt").write_text(f"{code} {d} {batch} {heads} {max_seqlen} {rows} {int(packed)} "
                                        f"{scale!r} {p!r} {seed} 1 {window}\n")
    inputs = [("qkv", torch.stack([q, k, v], -3))] if fused else [("q", q), ("k", k), ("v", v)]
    for name, t in [*inputs, ("dout", do)]:
        t.contiguous().view(torch.int16).numpy().tofile(workdir / f"{name}.bin")
    if mask is not None:
        mask.to(torch.uint8).numpy().tofile(workdir / "mask.bin")
    if cu is not None:
        cu.numpy().tofile(workdir / "cu.bin")
    run = subprocess.run([str(exe), str(workdir)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["ldmatrix_conflicts", "0"], run.stdout  # the padded rows (D + 8) keep them apart

    def read(name, dt, shape):
        raw = np.fromfile(workdir / f"{name}.bin", dtype=np.int16 if dt != torch.float32 else np.float32)
        return torch.from_numpy(raw).view(dt).reshape(shape)

    lse_shape = (heads, rows) if packed else (batch, heads, max_seqlen)
    return [read(n, dtype, q.shape) for n in ("o", "dq", "dk", "dv")], read("lse", torch.float32, lse_shape)


def _reference(q, k, v, do, dtype, **kw):
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention_ref(*leaves, **kw)
    out.backward(do.to(dtype))
    return [out.detach(), *(t.grad for t in leaves)]


def _pad_packed(x, cu, max_seqlen):
    """[T, ...] packed rows -> ([B, max_seqlen, ...] zero-padded, keep mask [B, max_seqlen])."""
    lens = (cu[1:] - cu[:-1]).long()
    keep = torch.arange(max_seqlen)[None, :] < lens[:, None]
    out = x.new_zeros(len(lens), max_seqlen, *x.shape[1:])
    out[keep] = x
    return out, keep


def _window_bias(window, seqlen):
    """Additive [S, S] bias of a window: 0 where |i - j| <= window, -inf elsewhere."""
    i = torch.arange(seqlen)
    return torch.where((i[:, None] - i[None, :]).abs() <= window, 0.0, -math.inf)


def _lse64(q, k, scale, mask, cu, max_seqlen, window=-1):
    """Natural-log log-sum-exp of the scaled scores, +inf for a row with no key; the kernels' lse layout."""
    if cu is not None:
        (q, mask), (k, _) = _pad_packed(q, cu, max_seqlen), _pad_packed(k, cu, max_seqlen)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
    if mask is not None:
        s = s.masked_fill(~mask.bool()[:, None, None, :], -math.inf)
    if window >= 0:
        s = s + _window_bias(window, max_seqlen).double()
    lse = torch.logsumexp(s, -1)
    lse = torch.where(torch.isneginf(lse), math.inf, lse)
    return lse.permute(1, 0, 2)[:, mask] if cu is not None else lse


CASES = {
    # name: dtype, head_dim, layout, dropout_p
    "fp16-d64-padded-dropout": (torch.float16, 64, "padded", 0.3),
    "bf16-d32-packed-dropout": (torch.bfloat16, 32, "packed", 0.1),
    "fp16-d128-padded": (torch.float16, 128, "padded", 0.0),
    "bf16-d128-packed-dropout": (torch.bfloat16, 128, "packed", 0.2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_emulated_cuda_kernels_match_float64(emulator, tmp_path, case):
    dtype, d, layout, p = CASES[case]
    gen = torch.Generator().manual_seed(len(case) * 1000 + d)
    heads, seed = (2 if d == 32 else 1), 2**33 + 77
    if layout == "packed":
        lens = [140, 1, 67] if d != 128 else [70, 9]
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
        shape, mask, max_seqlen, batch = (sum(lens), heads, d), None, max(lens), len(lens)
        kw = dict(cu_seqlens=cu, max_seqlen=max_seqlen)
    else:
        batch, max_seqlen = 2, (150 if d != 128 else 80)
        cu, shape = None, (batch, max_seqlen, heads, d)
        mask = torch.rand(batch, max_seqlen, generator=gen) > 0.3
        mask[0, 0] = True
        mask[-1, :] = False  # a batch row with no key at all
        kw = dict(key_padding_mask=mask)
    q, k, v, do = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    scale = 1.0 / math.sqrt(d)
    got, lse = _emulate(emulator, tmp_path, q, k, v, do, dtype=dtype, mask=mask, cu=cu, max_seqlen=max_seqlen,
                        scale=scale, p=p, seed=seed, fused=layout == "padded")
    ref_kw = dict(kw, softmax_scale=scale)
    if p > 0:
        ref_kw.update(dropout_p=p, dropout_mask=_dropout_keep(seed, p, batch, heads, max_seqlen))
    ref64 = _reference(q, k, v, do, torch.float64, **ref_kw)
    at_dtype = _reference(q, k, v, do, dtype, **ref_kw)
    atol = 2e-3 if dtype == torch.float16 else 1e-2
    for name, g, r, t in zip(("o", "dq", "dk", "dv"), got, ref64, at_dtype, strict=True):
        assert_close_to_ref(g, r, t, atol=atol, name=name)
    lse_ref = _lse64(q, k, scale, mask, cu, max_seqlen)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite) and (lse[~finite] > 0).all(), "lse: rows with no key must be +inf"
    torch.testing.assert_close(lse[finite].double(), lse_ref[finite], atol=1e-4, rtol=1e-5)
    if layout == "padded":
        for t in got:
            assert t[-1].abs().max() == 0  # the batch row with no key: zero output and zero gradients


WINDOW_CASES = {
    # name: dtype, head_dim, layout, dropout_p, window. Each sequence is longer than a block's rows plus twice the
    # window, so some blocks of every kernel skip whole tiles of the other side; window 0 leaves a query only its
    # own key (masked: a row with no key).
    "fp16-d64-padded-window-dropout": (torch.float16, 64, "padded", 0.2, 16),
    "bf16-d32-packed-window-dropout": (torch.bfloat16, 32, "packed", 0.1, 24),
    "fp16-d128-padded-window0": (torch.float16, 128, "padded", 0.0, 0),
    "bf16-d64-packed-window1-dropout": (torch.bfloat16, 64, "packed", 0.3, 1),
}


@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_emulated_cuda_kernels_with_window_match_float64(emulator, tmp_path, case):
    dtype, d, layout, p, window = WINDOW_CASES[case]
    gen = torch.Generator().manual_seed(len(case) * 1000 + d + window)
    heads, seed = 1, 2**35 + 11
    if layout == "packed":
        lens = [200, 1, 67]
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
        shape, mask, max_seqlen, batch = (sum(lens), heads, d), None, max(lens), len(lens)
    else:
        batch, max_seqlen = 2, (300 if d != 128 else 140)
        cu, shape = None, (batch, max_seqlen, heads, d)
        mask = torch.rand(batch, max_seqlen, generator=gen) > 0.2
        mask[0, 0] = True
    q, k, v, do = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    scale = 1.0 / math.sqrt(d)
    got, lse = _emulate(emulator, tmp_path, q, k, v, do, dtype=dtype, mask=mask, cu=cu, max_seqlen=max_seqlen,
                        scale=scale, p=p, seed=seed, fused=layout == "padded", window=window)
    # The reference runs padded (packed sequences padded here, the gradients read back at their rows), the window
    # an additive -inf bias.
    ref_kw = dict(softmax_scale=scale, attn_bias=_window_bias(window, max_seqlen))
    if p > 0:
        ref_kw.update(dropout_p=p, dropout_mask=_dropout_keep(seed, p, batch, heads, max_seqlen))
    inputs, keep = (q, k, v, do), None
    if cu is not None:
        padded = [_pad_packed(t, cu, max_seqlen) for t in inputs]
        inputs, keep = [t for t, _ in padded], padded[0][1]
    ref_kw["key_padding_mask"] = mask if cu is None else keep
    ref64 = _reference(*inputs, torch.float64, **ref_kw)
    at_dtype = _reference(*inputs, dtype, **ref_kw)
    if keep is not None:
        ref64, at_dtype = [t[keep] for t in ref64], [t[keep] for t in at_dtype]
    atol = 2e-3 if dtype == torch.float16 else 1e-2
    for name, g, r, t in zip(("o", "dq", "dk", "dv"), got, ref64, at_dtype, strict=True):
        assert_close_to_ref(g, r, t, atol=atol, name=name)
    lse_ref = _lse64(q, k, scale, mask, cu, max_seqlen, window)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite) and (lse[~finite] > 0).all(), "lse: rows with no key must be +inf"
    torch.testing.assert_close(lse[finite].double(), lse_ref[finite], atol=1e-4, rtol=1e-5)
    if window == 0 and mask is not None:
        assert not finite.all()  # masked keys left their own queries with no key: those rows must be zeros
        for t in got[:2]:
            assert t[~mask].abs().max() == 0


def test_emulated_window_skips_tiles(emulator, tmp_path):
    """Blocks step only over the tiles their rows reach: with a window, the kernels copy fewer rows into shared
    memory than without one (same inputs), and the outputs stay those of the window (checked above)."""
    gen = torch.Generator().manual_seed(7)
    q, k, v, do = (torch.randn(1, 300, 1, 32, generator=gen).to(torch.float16) for _ in range(4))
    copies = {}
    for window in (8, -1):
        workdir = tmp_path / f"window{window}"
        workdir.mkdir()
        _emulate(emulator, workdir, q, k, v, do, dtype=torch.float16, max_seqlen=300, scale=32**-0.5, p=0.0, seed=0,
                 fused=False, window=window)
        copies[window] = int((workdir / "cp_async_copies.txt").read_text())
    # without a window every block reads all 5 tiles of 64 rows of the other side; with 8, at most 4 and mostly 2-3
    assert 0 < copies[8] < 0.75 * copies[-1], copies
