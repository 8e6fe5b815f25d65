"""attention kernels against attention_ref in float64: padded and packed layouts, masks, head dims, odd lengths,
gradients, dropout, fully masked rows, strided QKV views, torch.compile registration, errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import importlib
import math
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from fastenc import backends
from fastenc.ops import attention, attention_ref
from tests.helpers import assert_close_to_ref, backend_params, device_for

BACKENDS = backend_params()
WITH_SDPA = [*BACKENDS, pytest.param("sdpa", id="sdpa")]  # tests through the public function only
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _impl(backend: str):
    return backends.launchers(backend, "attention")


def _call(q, k, v, dropout_p: float = 0.0) -> backends.Call:
    """The dispatcher's description of attention(q, k, v, dropout_p=...) (layout from q's rank)."""
    packed = q.dim() == 3
    return backends.Call("attention", {"q": q, "k": k, "v": v}, length=q.shape[0 if packed else 1],
                         layout="packed" if packed else "padded", head_dim=q.shape[-1], dropout=dropout_p > 0)


def _skip_if_cuda_cannot(backend: str, q, k, v, dropout_p: float = 0.0) -> None:
    """The cuda backend covers fp16/bf16 and head dims 32/64/128 only (issue scope), sdpa's packed layout on GPUs
    what varlen_attn covers; cases outside what they report as supported skip for them, with their reasons. Never
    applied to triton, which must support every case here, nor to sdpa on CPU tensors, which supports them all."""
    if backend == "cuda" or (backend == "sdpa" and q.is_cuda):
        reasons = backends.not_supported_reasons(backend, _call(q, k, v, dropout_p))
        if reasons:
            pytest.skip(f"{backend} backend: " + "; ".join(reasons))


def _fused_qkv(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """q, k, v as strided views of one fused projection output: [*shape[:-2], 3, H, D] unbound on the '3' dim."""
    qkv = torch.randn(*shape[:-2], 3, *shape[-2:], dtype=dtype, device=device)
    return qkv.unbind(-3)


def _key_mask(kind: str, batch: int, seqlen: int, device: torch.device) -> torch.Tensor | None:
    """[B, S] key padding masks of several patterns; 'empty_row' has one batch row with no key at all."""
    if kind == "none":
        return None
    if kind == "right":
        lens = torch.randint(1, seqlen + 1, (batch,))
        return (torch.arange(seqlen)[None] < lens[:, None]).long().to(device)  # integer mask, like transformers'
    if kind == "left":
        lens = torch.randint(1, seqlen + 1, (batch,))
        return (torch.arange(seqlen)[None] >= seqlen - lens[:, None]).to(device)
    mask = torch.rand(batch, seqlen) > 0.4
    mask[:, 0] = True
    if kind == "empty_row":
        mask[-1] = False
    return mask.to(device)


def _ref64(q, k, v, do, **kw):
    """float64 reference output and gradients."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = attention_ref(*leaves, **kw)
    out.backward(do.double())
    return out.detach(), [t.grad for t in leaves]


def _torch_at_dtype(q, k, v, do, **kw):
    """PyTorch's own output and gradients at the inputs' dtype: the error budget of the tolerance rule."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention_ref(*leaves, **kw)
    out.backward(do)
    return out.detach(), [t.grad for t in leaves]


def _run(backend, q, k, v, do, **kw):
    """attention through the public function (AttentionFn), with gradients w.r.t. the strided views."""
    _skip_if_cuda_cannot(backend, q, k, v, kw.get("dropout_p", 0.0))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, backend=backend, **kw)
    out.backward(do)
    return out.detach(), [t.grad for t in leaves]


def _check_against_ref(backend, q, k, v, **kw):
    do = torch.randn(q.shape, dtype=q.dtype, device=q.device)
    out, grads = _run(backend, q, k, v, do, **kw)
    out64, grads64 = _ref64(q, k, v, do, **kw)
    out_t, grads_t = _torch_at_dtype(q, k, v, do, **kw)
    atol = ATOL[q.dtype]
    assert_close_to_ref(out, out64, out_t, atol=atol, name="o")
    for name, g, g64, gt in zip(("dq", "dk", "dv"), grads, grads64, grads_t, strict=True):
        assert g.shape == g64.shape, name
        assert_close_to_ref(g, g64, gt, atol=atol, name=name)
    return out, grads


PADDED_CASES = [
    # dtype, head_dim, seqlen, mask kind
    (torch.float32, 32, 17, "random"),
    (torch.float32, 64, 1, "none"),
    (torch.float32, 128, 17, "left"),
    (torch.float32, 40, 63, "empty_row"),
    (torch.float16, 64, 17, "right"),
    (torch.float16, 72, 63, "random"),
    (torch.float16, 32, 1, "empty_row"),
]


@pytest.mark.parametrize("backend", WITH_SDPA)
@pytest.mark.parametrize(("dtype", "head_dim", "seqlen", "mask_kind"), PADDED_CASES,
                         ids=[f"{str(c[0])[6:]}-d{c[1]}-s{c[2]}-{c[3]}" for c in PADDED_CASES])
def test_padded_matches_ref(backend, dtype, head_dim, seqlen, mask_kind):
    dev = device_for(backend)
    q, k, v = _fused_qkv((2, seqlen, 2, head_dim), dtype, dev)
    mask = _key_mask(mask_kind, 2, seqlen, dev)
    _check_against_ref(backend, q, k, v, key_padding_mask=mask)


PACKED_CASES = [
    # dtype, head_dim, sequence lengths
    (torch.float32, 64, [17, 1, 0, 5]),  # an empty sequence too
    (torch.float32, 128, [3, 9]),
    (torch.float16, 40, [63, 2]),
    (torch.float16, 32, [1]),
]


@pytest.mark.parametrize("backend", WITH_SDPA)
@pytest.mark.parametrize(("dtype", "head_dim", "lens"), PACKED_CASES,
                         ids=[f"{str(c[0])[6:]}-d{c[1]}-{'_'.join(map(str, c[2]))}" for c in PACKED_CASES])
def test_packed_matches_ref(backend, dtype, head_dim, lens):
    dev = device_for(backend)
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
    q, k, v = _fused_qkv((sum(lens), 2, head_dim), dtype, dev)
    _check_against_ref(backend, q, k, v, cu_seqlens=cu, max_seqlen=max(lens), softmax_scale=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_masks_past_full_key_blocks_and_every_pattern_in_one_batch(monkeypatch, backend, dropout_p):
    """The key loops run mask-free up to the first masked key of each row and masked up to its last allowed key
    (kernels/attention.py): rows whose first zero lies several blocks in, holes after it, right and left padding, a
    row with no key, all in one batch (the interpreter's blocks are 32 keys, its mask scan 16 entries a step)."""
    dev = device_for(backend)
    seqlen = 82
    q, k, v = _fused_qkv((5, seqlen, 1, 32), torch.float16, dev)
    _skip_if_cuda_cannot(backend, q, k, v, dropout_p)
    mask = torch.ones(5, seqlen, dtype=torch.bool)
    mask[0, 69] = False  # first zero in the third block, allowed keys after it
    mask[0, 77:] = False
    mask[1, 64:] = False  # right padding at a block boundary
    mask[2, :23] = False  # left padding
    mask[3] = False  # no key
    mask[4, 5::7] = False  # holes everywhere
    mask = mask.to(dev)
    kw = dict(key_padding_mask=mask)
    if dropout_p:
        seed = torch.tensor([7], dtype=torch.int64, device=dev)
        keep = _dropout_mask_fn(backend)(seed, 5, 1, seqlen, dropout_p)
        kw = dict(kw, dropout_p=dropout_p)
        do = torch.randn(q.shape, dtype=q.dtype, device=dev)
        out, grads = _run_with_seed(monkeypatch, backend, seed, q, k, v, do, **kw)
        out64, grads64 = _ref64(q, k, v, do, dropout_mask=keep, **kw)
        out_t, grads_t = _torch_at_dtype(q, k, v, do, dropout_mask=keep, **kw)
        for name, g, g64, gt in zip(("o", "dq", "dk", "dv"), [out, *grads], [out64, *grads64], [out_t, *grads_t],
                                    strict=True):
            assert_close_to_ref(g, g64, gt, atol=ATOL[q.dtype], name=name)
    else:
        _check_against_ref(backend, q, k, v, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_negative_softmax_scale(backend, packed):
    """A negative scale reverses the scores' order: the forward moves its sign onto q (the kernel needs scale > 0 for
    the row max of raw scores); gradients still flow to the caller's q."""
    dev = device_for(backend)
    if packed:
        cu = torch.tensor([0, 9, 30], dtype=torch.int32, device=dev)
        q, k, v = _fused_qkv((30, 2, 32), torch.float16, dev)
        _check_against_ref(backend, q, k, v, cu_seqlens=cu, max_seqlen=21, softmax_scale=-0.3)
    else:
        q, k, v = _fused_qkv((2, 21, 2, 32), torch.float16, dev)
        _check_against_ref(backend, q, k, v, key_padding_mask=_key_mask("right", 2, 21, dev), softmax_scale=-0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lse_is_natural_log_sum_exp_in_both_layouts(backend):
    dev = device_for(backend)
    lens = [5, 11]
    cu = torch.tensor([0, 5, 16], dtype=torch.int32, device=dev)
    q, k, v = _fused_qkv((16, 2, 32), torch.float32, dev)
    _skip_if_cuda_cannot(backend, q, k, v)
    scale = 0.2
    _, lse = _impl(backend).attention_fwd(q, k, v, None, cu, 11, scale, 0.0, None)
    assert lse.shape == (2, 16) and lse.dtype == torch.float32
    for s0, n in zip([0, 5], lens, strict=True):
        scores = torch.einsum("ihd,jhd->hij", q[s0:s0 + n].double(), k[s0:s0 + n].double()) * scale
        torch.testing.assert_close(lse[:, s0:s0 + n].double(), scores.logsumexp(-1), atol=1e-5, rtol=1e-5)

    qp, kp, vp = _fused_qkv((2, 7, 2, 32), torch.float32, dev)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0, 1], [0] * 7], device=dev).bool()
    _, lse = _impl(backend).attention_fwd(qp, kp, vp, mask, None, 7, scale, 0.0, None)
    assert lse.shape == (2, 2, 7)
    scores = torch.einsum("bihd,bjhd->bhij", qp.double(), kp.double()) * scale
    scores = scores.masked_fill(~mask[:, None, None, :], -math.inf)
    torch.testing.assert_close(lse[0].double(), scores[0].logsumexp(-1), atol=1e-5, rtol=1e-5)
    assert (lse[1] == math.inf).all()  # no key: +inf, so every recomputed probability of the row is 0


@pytest.mark.parametrize("backend", WITH_SDPA)
def test_fully_masked_rows_give_zero_output_and_zero_grads(backend):
    dev = device_for(backend)
    q, k, v = _fused_qkv((3, 9, 2, 32), torch.float16, dev)
    mask = torch.ones(3, 9, dtype=torch.bool, device=dev)
    mask[0] = False
    mask[2, 4:] = False
    do = torch.randn(q.shape, dtype=q.dtype, device=dev)
    out, (dq, dk, dv) = _run(backend, q, k, v, do, key_padding_mask=mask)
    for name, t in (("o", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), name
        assert t[0].abs().max() == 0, f"{name} of the batch row with no key"
        assert t[1].abs().max() > 0, f"{name} of a normal row"
    assert dk[2, 4:].abs().max() == 0 and dv[2, 4:].abs().max() == 0  # masked keys get no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_qkv_views_equal_contiguous_inputs_and_backward_is_deterministic(backend):
    dev = device_for(backend)
    qkv = torch.randn(2, 13, 3, 2, 64, device=dev)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    mask = _key_mask("random", 2, 13, dev)
    do = torch.randn(q.shape, device=dev)
    out, grads = _run(backend, q, k, v, do, key_padding_mask=mask)
    out_c, grads_c = _run(backend, q.contiguous(), k.contiguous(), v.contiguous(), do, key_padding_mask=mask)
    out_again, grads_again = _run(backend, q, k, v, do, key_padding_mask=mask)
    assert torch.equal(out, out_c)
    for g, gc, ga in zip(grads, grads_c, grads_again, strict=True):
        assert torch.equal(g, gc)
        assert torch.equal(g, ga)


# ---------------------------------------------------------------------------------------------------------------
# Dropout


def _dropout_mask_fn(backend: str):
    fn = getattr(_impl(backend), "attention_dropout_mask", None)
    if fn is None:
        pytest.skip(f"backend {backend!r} exposes no attention_dropout_mask to replay its dropout")
    return fn


def _run_with_seed(monkeypatch, backend, seed, q, k, v, do, **kw):
    """AttentionFn with the seed pinned, so the test knows which mask the kernels drew."""
    monkeypatch.setattr(importlib.import_module("fastenc.ops.attention"), "dropout_seed", lambda device: seed)
    return _run(backend, q, k, v, do, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("p", [0.25, 0.625])  # kernels compiled for thresholds below 128, and the general compare
def test_dropout_matches_ref_with_the_kernel_mask(monkeypatch, backend, packed, p):
    dev = device_for(backend)
    seed = torch.tensor([987654321], dtype=torch.int64, device=dev)
    if packed:
        lens = [7, 18, 3]
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
        q, k, v = _fused_qkv((sum(lens), 2, 32), torch.float32, dev)
        kw = dict(cu_seqlens=cu, max_seqlen=18)
        batch, seqlen = 3, 18
    else:
        q, k, v = _fused_qkv((2, 18, 2, 32), torch.float32, dev)
        kw = dict(key_padding_mask=_key_mask("random", 2, 18, dev))
        batch, seqlen = 2, 18
    keep = _dropout_mask_fn(backend)(seed, batch, 2, seqlen, p)
    assert keep.shape == (batch, 2, seqlen, seqlen) and keep.dtype == torch.bool
    do = torch.randn(q.shape, device=dev)
    out, grads = _run_with_seed(monkeypatch, backend, seed, q, k, v, do, dropout_p=p, **kw)
    out64, grads64 = _ref64(q, k, v, do, dropout_p=p, dropout_mask=keep, **kw)
    assert_close_to_ref(out, out64, atol=1e-5, rtol=1e-4, name="o")
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, grads64, strict=True):
        assert_close_to_ref(g, g64, atol=1e-5, rtol=1e-4, name=name)
    out_no_drop = attention_ref(q.double(), k.double(), v.double(), **kw)
    assert (out.double() - out_no_drop).abs().max() > 1e-2  # dropout did something

    other = torch.tensor([12345], dtype=torch.int64, device=dev)
    out_other, _ = _run_with_seed(monkeypatch, backend, other, q, k, v, do, dropout_p=p, **kw)
    out_same, _ = _run_with_seed(monkeypatch, backend, seed, q, k, v, do, dropout_p=p, **kw)
    assert torch.equal(out, out_same)
    assert not torch.equal(out, out_other)


def _philox4x32_10(seed: int, counters: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32-10 (Salmon et al. 2011) on uint32 counters [..., 4]; the key is (seed low, seed high). `rounds`
    gives the reduced variants (attention dropout: Philox4x32-7)."""
    mask32 = np.uint64(0xFFFFFFFF)
    c = [counters[..., i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(rounds):
        p0 = np.uint64(0xD2511F53) * c[0]
        p2 = np.uint64(0xCD9E8D57) * c[2]
        c = [((p2 >> np.uint64(32)) ^ c[1] ^ k0) & mask32, p2 & mask32,
             ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask32, p0 & mask32]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask32, (k1 + np.uint64(0xBB67AE85)) & mask32
    return np.stack(c, -1)


def _attention_keep(seed: int, p: float, b, h, i, j) -> np.ndarray:
    """The attention dropout scheme (fastenc.kernels.attention's module doc), written out: (b, h, i, j) is kept iff
    byte j % 2 + 2 ((i % 16) // 8) of word (j % 32) // 8 of Philox4x32-7(seed; b, 4 (j // 32) + (j % 8) // 2, h,
    8 (i // 16) + i % 8) is >= ceil(p * 2**8)."""
    b, h, i, j = np.broadcast_arrays(b, h, i, j)
    counters = np.stack([b, 4 * (j // 32) + (j % 8) // 2, h, 8 * (i // 16) + i % 8], -1).astype(np.uint32)
    words = _philox4x32_10(seed, counters, rounds=7)
    word = np.take_along_axis(words, ((j % 32) // 8)[..., None], -1)[..., 0]
    u = (word >> (np.uint64(8) * (j % 2 + 2 * ((i % 16) // 8)).astype(np.uint64))) & np.uint64(0xFF)
    return u >= math.ceil(np.float32(p) * 256)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_mask_follows_the_documented_philox_scheme(backend):
    """keep(b, h, i, j) = _attention_keep, in every sequence's own coordinates: independent of the batch's padded
    length (and so of the layout and the kernels' block sizes); the keep probability is 1 - ceil(p * 2**8) / 2**8."""
    dev = device_for(backend)
    seed_value = 2**33 + 77
    # p * 2**8 not an integer (the threshold rounds up), thresholds below and from 128 on, and 256 (nothing kept)
    for p in (0.4, 0.1 + 2**-10, 0.5, 0.7 + 2**-10, 0.999):
        seed = torch.tensor([seed_value], dtype=torch.int64, device=dev)
        keep = _dropout_mask_fn(backend)(seed, 2, 3, 37, p).cpu()
        b, h, i, j = np.meshgrid(*(np.arange(n) for n in keep.shape), indexing="ij")
        assert torch.equal(keep, torch.from_numpy(_attention_keep(seed_value, p, b, h, i, j)))
    shorter = _dropout_mask_fn(backend)(seed, 2, 3, 6, p).cpu()
    assert torch.equal(shorter, keep[:, :, :6, :6])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate_and_independence(backend, p):
    """Statistically like torch's dropout: keep rate 1 - p, and bits of different heads / rows / keys independent."""
    keep = _dropout_mask_fn(backend)(torch.tensor([31337], device=device_for(backend)), 2, 2, 96, p).double()
    n = keep.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
    # agreement of two independent Bernoulli(1 - p) fields is p^2 + (1 - p)^2
    agree = p * p + (1 - p) ** 2
    for a, b in ((keep[:, 0], keep[:, 1]), (keep[0], keep[1]), (keep[..., :-1, :], keep[..., 1:, :]),
                 (keep[..., :-1], keep[..., 1:])):
        rate = (a == b).double().mean().item()
        assert abs(rate - agree) < 5 * math.sqrt(agree * (1 - agree) / a.numel())


# ---------------------------------------------------------------------------------------------------------------
# torch.compile, dispatch, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    dev = device_for(backend)
    dtype = torch.float16 if backend == "cuda" else torch.float32
    qkv = torch.randn(2, 9, 3, 2, 32, device=dev, dtype=dtype, requires_grad=True)
    mask = _key_mask("left", 2, 9, dev)

    def f(qkv, mask):
        q, k, v = qkv.unbind(2)
        return attention(q, k, v, key_padding_mask=mask, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(qkv, mask), qkv)
    (grad_eager,) = torch.autograd.grad(f(qkv, mask), qkv)
    torch.testing.assert_close(grad, grad_eager, atol=0, rtol=0)


def test_custom_ops_pass_opcheck():
    """The launchers are torch.library custom ops: schema, fake kernels (metadata of the real outputs) and
    aot_dispatch checked by torch.library.opcheck, for both layouts, with and without dropout."""
    impl = _impl("triton")
    dev = device_for("triton")
    cu = torch.tensor([0, 4, 13], dtype=torch.int32, device=dev)
    q, k, v = _fused_qkv((13, 2, 24), torch.float16, dev)
    seed = torch.tensor([5], device=dev)
    packed = (None, cu, 9, 0.2, 0.1, seed)
    o, lse = impl.attention_fwd(q, k, v, *packed)
    torch.library.opcheck(impl.attention_fwd.op, (q, k, v, *packed))
    torch.library.opcheck(impl.attention_bwd.op, (torch.randn_like(o), q, k, v, o, lse, *packed))
    qp, kp, vp = _fused_qkv((2, 7, 2, 24), torch.float32, dev)
    torch.library.opcheck(impl.attention_fwd.op, (qp, kp, vp, _key_mask("random", 2, 7, dev), None, 7, 0.2, 0.0, None))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_calls_say_why(backend):
    dev = device_for(backend)
    q, k, v = _fused_qkv((1, 4, 2, 160), torch.float32, dev)
    with pytest.raises(backends.BackendNotSupportedError, match="head_dim 160"):
        attention(q, k, v, backend=backend)
    q, k, v = _fused_qkv((1, 4, 2, 16), torch.float64, dev)
    with pytest.raises(backends.BackendNotSupportedError, match="float64"):
        attention(q, k, v, backend=backend)
    q, k, v = _fused_qkv((1, 4, 2, 32), torch.float16, dev)  # in every backend's scope
    assert backends.not_supported_reasons(backend, _call(q, k, v, 0.1)) == []
    with pytest.raises(ValueError, match="seed"):
        _impl(backend).attention_fwd(q, k, v, None, None, 4, 0.25, 0.1, None)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, k, v, key_padding_mask=torch.ones(1, 5, device=dev), backend=backend)
    with pytest.raises(ValueError, match="cu_seqlens"):
        attention(q[0], k[0], v[0], cu_seqlens=torch.tensor([0, 4], device=dev), max_seqlen=4, backend=backend)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.0, backend=backend)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastenc.kernels.attention as A

def signature(fn, dtype, const):
    ptrs = {"mask_ptr": "*i64", "cu_seqlens_ptr": "*i32", "seed_ptr": "*i64", "lse_ptr": "*fp32",
            "delta_ptr": "*fp32", "out_ptr": "*u8"}
    floats = ("qk_scale", "dropout_p", "softmax_scale")
    return {n: "constexpr" if n in const else ptrs.get(n, "*" + dtype) if n.endswith("_ptr") else
            "fp32" if n in floats else "i32" for n in fn.arg_names}

def build(kernel, dtype, const, arch, warps=4, stages=2):
    fn = kernel.fn if hasattr(kernel, "configs") else kernel  # unwrap the autotuner
    const = {k: v for k, v in const.items() if k in fn.arg_names}  # SCAN, TMA: forward and dq only
    src = ASTSource(fn, signature(fn, dtype, const), const)
    triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))

variants = ((90, "fp16", 64, True, False, True), (80, "bf16", 40, False, True, False))
for arch, dtype, d, mask, packed, dropout in variants:
    shared = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), PACKED=packed)
    const = dict(shared, HAS_MASK=mask, DROPOUT=dropout, INPUT_PRECISION="ieee", BLOCK_M=64, BLOCK_N=64, SCAN=512,
                 TMA=64 if arch >= 90 else 0)  # fwd and dq: tensor-descriptor loads on sm_90
    for kernel in (A._attention_fwd_kernel, A._attention_bwd_dkdv_kernel, A._attention_bwd_dq_kernel):
        build(kernel, dtype, const, arch)
    build(A._attention_bwd_preprocess_kernel, dtype, dict(shared, BLOCK_M=64), arch)
build(A._attention_dropout_mask_kernel, "i64", dict(BLOCK_M=64, BLOCK_N=64), 80)
"""


def test_kernels_compile_for_ampere_and_hopper():
    """The interpreter does not run Triton's compiler; this compiles every kernel for sm_80 and sm_90 (no GPU
    needed) in a process without TRITON_INTERPRET, with and without mask, packing and dropout."""
    triton_backends = pytest.importorskip("triton.backends")
    if "nvidia" not in triton_backends.backends:
        pytest.skip("triton has no nvidia backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------------------
# GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seqlen", [512, 2048])
def test_gpu_long_sequences(backend, dtype, seqlen):
    q, k, v = _fused_qkv((2, seqlen, 4, 64), dtype, torch.device("cuda"))
    mask = _key_mask("right", 2, seqlen, torch.device("cuda"))
    _check_against_ref(backend, q, k, v, key_padding_mask=mask)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_packed_bf16_head_dims(backend):
    lens = [300, 1, 77, 512]
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device="cuda")
    for head_dim in (32, 64, 80, 128):
        q, k, v = _fused_qkv((sum(lens), 3, head_dim), torch.bfloat16, torch.device("cuda"))
        _check_against_ref(backend, q, k, v, cu_seqlens=cu, max_seqlen=max(lens))


# ---------------------------------------------------------------------------------------------------------------
# Backend "sdpa" beyond the shared cases above (it runs on CPU tensors, so these run everywhere)


def test_sdpa_additive_bias_with_key_mask_matches_ref():
    dev = device_for("sdpa")
    q, k, v = _fused_qkv((2, 7, 2, 16), torch.float32, dev)
    bias = torch.randn(2, 1, 7, 7, device=dev)
    bias[..., 3] = -math.inf  # a key no query may see, as a 4-D mask writes it
    mask = _key_mask("right", 2, 7, dev)
    _check_against_ref("sdpa", q, k, v, key_padding_mask=mask, attn_bias=bias)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sdpa_dropout_follows_torch_rng_and_keeps_the_mean(packed):
    """sdpa's dropout is torch's (no mask to replay): same seed -> same output, other seed -> other output, and on
    average over many draws the output approaches the no-dropout output."""
    dev = device_for("sdpa")
    if packed and dev.type == "cuda":
        pytest.skip("varlen_attn has no dropout: sdpa reports the packed layout with dropout unsupported on GPUs")
    lens = [6, 3]
    if packed:
        q, k, v = _fused_qkv((9, 2, 8), torch.float32, dev)
        kw = dict(cu_seqlens=torch.tensor([0, 6, 9], dtype=torch.int32, device=dev), max_seqlen=6)
    else:
        q, k, v = _fused_qkv((2, 6, 2, 8), torch.float32, dev)
        kw = dict(key_padding_mask=(torch.arange(6)[None] < torch.tensor(lens)[:, None]).to(dev))
    plain = attention(q, k, v, backend="sdpa", **kw)
    torch.manual_seed(3)
    a = attention(q, k, v, dropout_p=0.3, backend="sdpa", **kw)
    torch.manual_seed(3)
    b = attention(q, k, v, dropout_p=0.3, backend="sdpa", **kw)
    c = attention(q, k, v, dropout_p=0.3, backend="sdpa", **kw)
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    mean = torch.stack([attention(q, k, v, dropout_p=0.3, backend="sdpa", **kw) for _ in range(400)]).mean(0)
    assert (mean - plain).abs().max() < 0.25 * plain.abs().max()


def test_sdpa_named_never_falls_back():
    q, k, v = _fused_qkv((1, 4, 2, 16), torch.float64, torch.device("cpu"))
    with pytest.raises(backends.BackendNotSupportedError, match=r"sdpa: dtype torch.float64 not supported") as info:
        attention(q, k, v, backend="sdpa")
    assert "torch: supported" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Local window (|i - j| <= window within each sequence)

WINDOW_BACKENDS = WITH_SDPA


def _skip_unless_window(backend: str, q, k, v, dropout_p: float = 0.0) -> None:
    """cuda gets the window from another change; until it declares "window" its cases skip with its reasons."""
    if backend == "cuda":
        call = _call(q, k, v, dropout_p)
        call.features = ("window",)
        reasons = backends.not_supported_reasons(backend, call)
        if reasons:
            pytest.skip("cuda backend: " + "; ".join(reasons))


def test_window_ref_counts_distance_within_each_sequence():
    q, k, v = _fused_qkv((3, 9, 2, 8), torch.float64, torch.device("cpu"))
    plain = attention_ref(q, k, v)
    assert torch.equal(attention_ref(q, k, v, window=8), plain)  # every |i - j| <= S - 1
    assert not torch.allclose(attention_ref(q, k, v, window=7), plain)
    torch.testing.assert_close(attention_ref(q, k, v, window=0), v)  # each query sees only its own key
    pos = torch.arange(9)
    band = torch.where((pos[:, None] - pos[None, :]).abs() <= 2, 0.0, -math.inf).double()
    torch.testing.assert_close(attention_ref(q, k, v, window=2), attention_ref(q, k, v, attn_bias=band))
    # packed: positions restart at each sequence, so each sequence equals its own padded call
    lens = [5, 9, 1]
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
    qp, kp, vp = _fused_qkv((sum(lens), 2, 8), torch.float64, torch.device("cpu"))
    out = attention_ref(qp, kp, vp, cu_seqlens=cu, max_seqlen=9, window=2)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        own = attention_ref(qp[a:b][None], kp[a:b][None], vp[a:b][None], window=2)[0]
        torch.testing.assert_close(out[a:b], own)


WINDOW_PADDED_CASES = [
    # dtype, seqlen, window, mask kind
    (torch.float32, 50, 5, "none"),  # whole key blocks outside the window
    (torch.float32, 50, 0, "random"),
    (torch.float16, 37, 16, "right"),
    (torch.float32, 17, 17, "left"),  # window = seqlen
    (torch.float32, 17, 40, "none"),  # window > seqlen: no effect
    (torch.float16, 50, 20, "empty_row"),
]


@pytest.mark.parametrize("backend", WINDOW_BACKENDS)
@pytest.mark.parametrize(("dtype", "seqlen", "window", "mask_kind"), WINDOW_PADDED_CASES,
                         ids=[f"{str(c[0])[6:]}-s{c[1]}-w{c[2]}-{c[3]}" for c in WINDOW_PADDED_CASES])
def test_window_padded_matches_ref(backend, dtype, seqlen, window, mask_kind):
    dev = device_for(backend)
    q, k, v = _fused_qkv((2, seqlen, 2, 32), dtype, dev)
    _skip_unless_window(backend, q, k, v)
    mask = _key_mask(mask_kind, 2, seqlen, dev)
    _check_against_ref(backend, q, k, v, key_padding_mask=mask, window=window)


@pytest.mark.parametrize("backend", WINDOW_BACKENDS)
@pytest.mark.parametrize("window", [0, 7, 100])
def test_window_packed_matches_ref(backend, window):
    dev = device_for(backend)
    lens = [50, 3, 0, 21]
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
    q, k, v = _fused_qkv((sum(lens), 2, 32), torch.float32, dev)
    _skip_unless_window(backend, q, k, v)
    _check_against_ref(backend, q, k, v, cu_seqlens=cu, max_seqlen=max(lens), window=window)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_window_with_dropout_matches_ref_with_the_kernel_mask(monkeypatch, backend, packed):
    dev = device_for(backend)
    p, window = 0.25, 6
    seed = torch.tensor([24680], dtype=torch.int64, device=dev)
    if packed:
        lens = [40, 9]
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
        q, k, v = _fused_qkv((sum(lens), 2, 32), torch.float32, dev)
        kw = dict(cu_seqlens=cu, max_seqlen=40)
        batch, seqlen = 2, 40
    else:
        q, k, v = _fused_qkv((2, 40, 2, 32), torch.float32, dev)
        kw = dict(key_padding_mask=_key_mask("random", 2, 40, dev))
        batch, seqlen = 2, 40
    _skip_unless_window(backend, q, k, v, p)
    keep = _dropout_mask_fn(backend)(seed, batch, 2, seqlen, p)
    do = torch.randn(q.shape, device=dev)
    out, grads = _run_with_seed(monkeypatch, backend, seed, q, k, v, do, dropout_p=p, window=window, **kw)
    out64, grads64 = _ref64(q, k, v, do, dropout_p=p, dropout_mask=keep, window=window, **kw)
    assert_close_to_ref(out, out64, atol=1e-5, rtol=1e-4, name="o")
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, grads64, strict=True):
        assert_close_to_ref(g, g64, atol=1e-5, rtol=1e-4, name=name)
    no_drop = attention_ref(q.double(), k.double(), v.double(), window=window, **kw)
    assert (out.double() - no_drop).abs().max() > 1e-2  # dropout did something


def test_sdpa_window_with_additive_bias_and_key_mask_matches_ref():
    dev = device_for("sdpa")
    q, k, v = _fused_qkv((2, 9, 2, 16), torch.float32, dev)
    bias = torch.randn(2, 1, 1, 9, device=dev)  # a key bias broadcast over the queries
    _check_against_ref("sdpa", q, k, v, key_padding_mask=_key_mask("right", 2, 9, dev), attn_bias=bias, window=2)


@pytest.mark.parametrize("backend", WINDOW_BACKENDS)
def test_window_errors_name_the_argument(backend):
    dev = device_for(backend)
    q, k, v = _fused_qkv((1, 4, 2, 16), torch.float32, dev)
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="window"):
            attention(q, k, v, window=bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_window_skips_the_blocks_outside_it(backend, packed):
    """Blocks no row of a program can reach are never read: NaN in the tokens from 72 on (in the last block, 64..79)
    cannot reach the output and dq of rows 0..31 (their windows end at key 34, in block 32..47), nor the dk, dv of
    keys 0..31 (the rows that reach them end at 34, in a block whose forward reads keys up to 50 only). A kernel
    that read the last block there, even masked, would multiply a zero probability by NaN (the interpreter's blocks
    are 16 rows; CUDA blocks are larger, so this case runs on triton only)."""
    if backend != "triton":
        pytest.skip("the block layout of this case is the Triton interpreter's (16 x 16)")
    dev = device_for(backend)
    window, seqlen = 3, 80
    shape = (seqlen, 2, 32) if packed else (1, seqlen, 2, 32)
    q, k, v = _fused_qkv(shape, torch.float32, dev)
    do = torch.randn(q.shape, device=dev)
    kw = dict(cu_seqlens=torch.tensor([0, seqlen], dtype=torch.int32, device=dev), max_seqlen=seqlen) if packed else {}
    tok = (slice(None),) if packed else (slice(None), slice(None))  # index of the token dim
    far = (*tok[:-1], slice(72, None))
    near = (*tok[:-1], slice(0, 32))
    poisoned = [t.detach().clone() for t in (q, k, v)]
    for t in poisoned:
        t[far] = math.nan
    do_poisoned = do.clone()
    do_poisoned[far] = math.nan
    out, grads = _run(backend, *poisoned, do_poisoned, window=window, **kw)
    out64, grads64 = _ref64(q, k, v, do, window=window, **kw)  # the clean inputs: equal on the near rows and keys
    assert_close_to_ref(out[near], out64[near], atol=1e-5, rtol=1e-4, name="o")
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, grads64, strict=True):
        assert_close_to_ref(g[near], g64[near], atol=1e-5, rtol=1e-4, name=name)
    assert torch.isnan(out[far]).all()  # the poison is there: the far rows read it


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_torch_compile_fullgraph_and_opcheck(backend):
    """The window travels through the custom ops as their last argument (the fakes take it too)."""
    dev = device_for(backend)
    dtype = torch.float16 if backend == "cuda" else torch.float32
    qkv = torch.randn(2, 20, 3, 2, 32, device=dev, dtype=dtype, requires_grad=True)
    mask = _key_mask("right", 2, 20, dev)
    _skip_unless_window(backend, *qkv.unbind(2))

    def f(qkv, mask):
        q, k, v = qkv.unbind(2)
        return attention(q, k, v, key_padding_mask=mask, window=4, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(qkv, mask), qkv)
    (grad_eager,) = torch.autograd.grad(f(qkv, mask), qkv)
    torch.testing.assert_close(grad, grad_eager, atol=0, rtol=0)
    if backend == "triton":
        impl = _impl(backend)
        q, k, v = (t.detach() for t in qkv.unbind(2))
        args = (mask.bool().contiguous(), None, 20, 0.2, 0.0, None, 4)
        o, lse = impl.attention_fwd(q, k, v, *args)
        torch.library.opcheck(impl.attention_fwd.op, (q, k, v, *args))
        torch.library.opcheck(impl.attention_bwd.op, (torch.randn_like(o), q, k, v, o, lse, *args))


# ---------------------------------------------------------------------------------------------------------------
# TMA (tensor-descriptor loads of the full blocks, sm_90+; forced on under the interpreter)


@pytest.fixture
def tma_launches(monkeypatch):
    """TMA forced on for the forward and dq kernels (every key block size, every release) where it can run (the
    interpreter, or a GPU with TMA): `.seen` records the TMA constexpr of each fwd / dkdv / dq launch (None: dk/dv
    has none), `.off()` turns the switch off again."""
    kernels = importlib.import_module("fastenc.kernels.attention")
    if torch.cuda.is_available() and not kernels._tma_device():
        pytest.skip("needs a GPU with TMA (compute capability 9.0 on) or the interpreter")
    monkeypatch.setattr(kernels, "_tma_device", lambda: True)
    monkeypatch.setattr(kernels, "TMA_KERNELS", {"fwd": (16, (0, 0)), "dq": (16, (0, 0))})
    seen: list[int | None] = []
    real = kernels._configs.launch

    def spy(tuner, grid, key, *args, **consts):
        seen.append(consts.get("TMA"))
        return real(tuner, grid, key, *args, **consts)

    monkeypatch.setattr(kernels._configs, "launch", spy)
    return types.SimpleNamespace(seen=seen, off=lambda: monkeypatch.setattr(kernels, "_tma_device", lambda: False))


def _run_views(q, k, v, do, **kw):
    """The triton backend on q, k, v as they are (strided views reach the kernels in place: clone() would make them
    contiguous), with the gradients w.r.t. them."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, backend="triton", **kw)
    out.backward(do)
    return out.detach(), [t.grad for t in leaves]


def _run_twice_tma(tma_launches, q, k, v, do, **kw):
    """The triton backend with TMA (the fwd and dq launches must take it), then without; under the interpreter the
    two give the same bits (the same values loaded, the same arithmetic)."""
    assert not q.is_contiguous()  # the views of a fused projection, read in place
    res = _run_views(q, k, v, do, **kw)
    assert tma_launches.seen == [16, None, 16], tma_launches.seen  # fwd, dkdv, dq
    tma_launches.off()
    plain = _run_views(q, k, v, do, **kw)
    assert tma_launches.seen[3:] == [0, None, 0]
    if not torch.cuda.is_available():
        for a, b in zip([res[0], *res[1]], [plain[0], *plain[1]], strict=True):
            assert torch.equal(a, b)
    return res


def _check_tma(tma_launches, q, k, v, keep=None, tma=True, **kw):
    """TMA (or, with tma=False, the pointer loads the launcher must pick) against the float64 reference
    (FlashAttention's rule at q's dtype), replaying the kernel's dropout mask `keep` if given; with TMA also bit-equal
    to the pointer loads under the interpreter."""
    do = torch.randn(q.shape, dtype=q.dtype, device=q.device)
    if tma:
        out, grads = _run_twice_tma(tma_launches, q, k, v, do, **kw)
    else:
        tma_launches.seen.clear()
        out, grads = _run_views(q, k, v, do, **kw)
        assert tma_launches.seen == [0, None, 0]
    ref_kw = dict(kw, dropout_mask=keep) if keep is not None else kw
    out64, grads64 = _ref64(q, k, v, do, **ref_kw)
    out_t, grads_t = _torch_at_dtype(q, k, v, do, **ref_kw)
    for name, g, g64, gt in zip(("o", "dq", "dk", "dv"), [out, *grads], [out64, *grads64], [out_t, *grads_t],
                                strict=True):
        assert_close_to_ref(g, g64, gt, atol=ATOL[q.dtype], name=name)


TMA_PADDED_CASES = [
    # dtype, head_dim, mask kind; seqlen 50 = a full key block of the interpreter's 32 and a partial one
    # (fp16 only: the interpreter's bf16 arithmetic is wrong on both releases, with or without TMA)
    (torch.float16, 64, "right"),
    (torch.float16, 40, "right"),  # BLOCK_D 64: the descriptor's columns past 40 read as 0
    (torch.float16, 40, "random"),
    (torch.float16, 64, "empty_row"),
]


@pytest.mark.parametrize(("dtype", "head_dim", "mask_kind"), TMA_PADDED_CASES,
                         ids=[f"{str(c[0])[6:]}-d{c[1]}-{c[2]}" for c in TMA_PADDED_CASES])
def test_tma_padded_strided_qkv_matches_ref(tma_launches, dtype, head_dim, mask_kind):
    """Views of a fused [B, S, 3, H, D] output, right padding and arbitrary masks: the full blocks read through the
    descriptors never reach another sequence's rows or the padding past a right-padded length."""
    dev = device_for("triton")
    q, k, v = _fused_qkv((3, 50, 2, head_dim), dtype, dev)
    _check_tma(tma_launches, q, k, v, key_padding_mask=_key_mask(mask_kind, 3, 50, dev))


@pytest.mark.parametrize("head_dim", [64, 40])
def test_tma_packed_strided_qkv_matches_ref(tma_launches, head_dim):
    """Views of a fused packed [T, 3, H, D] output; sequences that start mid-block, one of a single full block, an
    empty one."""
    dev = device_for("triton")
    lens = [37, 16, 0, 50, 5]
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
    q, k, v = _fused_qkv((sum(lens), 2, head_dim), torch.float16, dev)
    _check_tma(tma_launches, q, k, v, cu_seqlens=cu, max_seqlen=max(lens))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_tma_dropout_matches_ref_with_the_kernel_mask_and_a_window_keeps_pointer_loads(monkeypatch, tma_launches,
                                                                                       packed):
    """Dropout (the mask attention_dropout_mask returns) with TMA; with a local window too the launcher keeps the
    pointer loads (TMA_KERNELS), still right."""
    dev = device_for("triton")
    p = 0.25
    seed = torch.tensor([1357], dtype=torch.int64, device=dev)
    monkeypatch.setattr(importlib.import_module("fastenc.ops.attention"), "dropout_seed", lambda device: seed)
    if packed:
        lens = [50, 21]
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
        q, k, v = _fused_qkv((sum(lens), 2, 64), torch.float16, dev)
        kw = dict(cu_seqlens=cu, max_seqlen=50)
    else:
        q, k, v = _fused_qkv((2, 50, 2, 64), torch.float16, dev)
        kw = dict(key_padding_mask=_key_mask("right", 2, 50, dev))
    keep = _dropout_mask_fn("triton")(seed, 2, 2, 50, p)
    _check_tma(tma_launches, q, k, v, keep, dropout_p=p, **kw)
    monkeypatch.setattr(importlib.import_module("fastenc.kernels.attention"), "_tma_device", lambda: True)  # on again
    _check_tma(tma_launches, q, k, v, keep, tma=False, dropout_p=p, window=24, **kw)


def test_tma_falls_back_where_a_descriptor_cannot_describe_the_tensors(tma_launches):
    """Rows of 72 bytes (head dim 36, fp16), a base 2 bytes off 16-byte alignment, a head stride of 40 bytes, fp32:
    the launcher picks the pointer loads (TMA 0), and the result is still right."""
    kernels = importlib.import_module("fastenc.kernels.attention")
    dev = device_for("triton")
    odd_dim = _fused_qkv((2, 20, 2, 36), torch.float16, dev)
    shifted = [torch.randn(2 * 20 * 2 * 32 + 1, dtype=torch.float16, device=dev)[1:].view(2, 20, 2, 32)
               for _ in range(3)]
    narrow = [torch.randn(2, 20, 2, 20, dtype=torch.float16, device=dev)[..., :16] for _ in range(3)]
    assert kernels._tma("fwd", False, *_fused_qkv((2, 20, 2, 32), torch.float16, dev)) == 16  # the control
    assert kernels._tma("fwd", False, *odd_dim) == 0
    assert kernels._tma("fwd", False, *shifted) == 0
    assert kernels._tma("fwd", False, *narrow) == 0
    assert kernels._tma("fwd", False, *(t.float() for t in odd_dim)) == 0
    mask = _key_mask("random", 2, 20, dev)
    for q, k, v in (odd_dim, shifted, narrow):
        _check_tma(tma_launches, q, k, v, tma=False, key_padding_mask=mask)


def test_tma_is_kept_where_the_sm90a_loops_got_no_longer(monkeypatch):
    """TMA_KERNELS as the report found (benchmarks/results/2026-12-07-sm90a-tma/): the forward's key blocks of 64+,
    dq's from triton 3.9 on, dk/dv never, none with a local window; the kernels' TMA constexpr follows it on a TMA
    GPU."""
    kernels = importlib.import_module("fastenc.kernels.attention")
    from fastenc.kernels import _triton_internals as ti

    monkeypatch.setattr(kernels, "_tma_device", lambda: True)
    q, k, v = _fused_qkv((2, 20, 2, 64), torch.float16, device_for("triton"))
    assert kernels._tma("fwd", False, k, v) == 64
    assert kernels._tma("dq", False, k, v) == (16 if ti.release() >= (3, 9) else 0)
    assert kernels._tma("dkdv", False, q, k, v) == 0
    assert kernels._tma("fwd", True, k, v) == kernels._tma("dq", True, k, v) == 0
    monkeypatch.setattr(kernels, "_tma_device", lambda: False)
    assert kernels._tma("fwd", False, k, v) == 0
