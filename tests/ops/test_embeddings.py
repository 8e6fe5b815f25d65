"""embeddings kernels against embeddings_ref in float64 (dropout off; dropout is in test_dropout.py): output and
the gradients of the three tables and the LayerNorm parameters, with and without token types, repeated ids,
padding rows (BERT word padding, RoBERTa positions), broadcast position ids, without a position table or a
LayerNorm bias (ModernBERT, GTE), fp32 and fp16, awkward sizes, id clamping in the kernel, the launchers' custom-op
registration, torch.compile and errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import pytest
import torch

from fastenc import backends
from fastenc.ops import embeddings, embeddings_ref
from tests.helpers import assert_close_to_ref, backend_params, device_for

BACKENDS = backend_params()
ATOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
NAMES = ("word", "position", "token_type", "weight", "bias")


def _tables(v, p, t, e, dtype, device, wdtype=None, bias=True):
    """word [v, e], position [p, e] (None if p == 0), token type [t, e] (None if t == 0), LayerNorm weight and
    bias [e] (None unless `bias`)."""
    wdtype = wdtype or dtype
    return [
        torch.randn(v, e, dtype=dtype, device=device),
        torch.randn(p, e, dtype=dtype, device=device) if p else None,
        torch.randn(t, e, dtype=dtype, device=device) if t else None,
        1 + 0.5 * torch.randn(e, dtype=wdtype, device=device),
        torch.randn(e, dtype=wdtype, device=device) if bias else None,
    ]


def _run(fn, tensors, dy):
    """fn's output and the gradients of every given tensor (None where the tensor is None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy))
    return y, [None if t is None else next(grads) for t in leaves]


def _check(backend, tables, ids, pos_ids, tt_ids, word_pad=None, pos_pad=None, eps=1e-5):
    dtype = tables[0].dtype

    def call(word, pos, tt, w, b):
        return embeddings(ids, word, pos_ids, pos, tt_ids, tt, w, b, eps, word_padding_idx=word_pad,
                          position_padding_idx=pos_pad, backend=backend)

    def ref(word, pos, tt, w, b):
        return embeddings_ref(ids, word, None if pos_ids is None else pos_ids.expand(ids.shape), pos, tt_ids, tt, w,
                              b, eps, 0.0, None, word_pad, pos_pad)

    shape = (*ids.shape, tables[0].shape[1])
    dy = torch.randn(shape, dtype=dtype, device=ids.device)
    y, grads = _run(call, tables, dy)
    y64, grads64 = _run(ref, [None if t is None else t.double() for t in tables], dy.double())
    y_t, grads_t = _run(ref, tables, dy)
    assert y.dtype == dtype and y.shape == shape
    assert_close_to_ref(y, y64, y_t, atol=ATOL[dtype], name="y")
    for name, g, g64, g_t, t in zip(NAMES, grads, grads64, grads_t, tables, strict=True):
        if t is None:
            continue
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close_to_ref(g, g64, g_t, atol=ATOL[dtype] * 4, name=f"d{name}")
    return grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("e", [1000, 1023, 48])
@pytest.mark.parametrize("token_types", [True, False])
def test_matches_ref(backend, dtype, e, token_types):
    device = device_for(backend)
    tables = _tables(9, 6, 2 if token_types else 0, e, dtype, device)
    ids = torch.randint(0, 9, (2, 5), device=device)  # 10 ids from 9 rows: repeats are certain
    pos_ids = torch.arange(5, device=device)  # broadcast over the batch
    tt_ids = torch.randint(0, 2, (2, 5), device=device) if token_types else None
    _check(backend, tables, ids, pos_ids, tt_ids)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("positions,token_types,bias", [(False, False, False), (False, True, True),
                                                        (False, True, False), (True, False, False)])
def test_without_position_table_or_bias(backend, dtype, positions, token_types, bias):
    """ModernBERT: word only, bias-free LayerNorm; GTE: word + token type, no position table; BERT-like tables
    with a bias-free LayerNorm. No position gradient without a table, no dbias without a bias."""
    device = device_for(backend)
    tables = _tables(9, 6 if positions else 0, 2 if token_types else 0, 40, dtype, device, bias=bias)
    ids = torch.randint(0, 9, (2, 5), device=device)
    pos_ids = torch.arange(5, device=device) if positions else None
    tt_ids = torch.randint(0, 2, (2, 5), device=device) if token_types else None
    _check(backend, tables, ids, pos_ids, tt_ids, word_pad=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("token_types", [True, False])
def test_without_position_table_or_bias_dropout(backend, token_types):
    """Dropout on the bias-free LayerNorm output of a table sum without positions: the mask read back from y, every
    gradient against a float64 reference that applies it (backward regenerates the forward's mask)."""
    device = device_for(backend)
    p, eps = 0.25, 1e-5
    tables = _tables(9, 0, 2 if token_types else 0, 48, torch.float32, device, bias=False)
    ids = torch.randint(0, 9, (3, 6), device=device)
    tt_ids = torch.randint(0, 2, (3, 6), device=device) if token_types else None
    dy = torch.randn(3, 6, 48, device=device)
    y, grads = _run(lambda word, pos, tt, w, b: embeddings(ids, word, None, pos, tt_ids, tt, w, b, eps, dropout_p=p,
                                                           backend=backend), tables, dy)
    keep = y != 0
    assert 0.6 < keep.float().mean().item() < 0.9

    def ref(word, pos, tt, w, b):
        return embeddings_ref(ids, word, None, pos, tt_ids, tt, w, b, eps)

    y64, grads64 = _run(ref, [None if t is None else t.double() for t in tables], dy.double() * keep / (1 - p))
    assert_close_to_ref(y, y64 * keep / (1 - p), atol=2e-5, name="y")
    for name, g, g64, t in zip(NAMES, grads, grads64, tables, strict=True):
        if t is not None:
            assert_close_to_ref(g, g64, atol=1e-4, name=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_position_table_launcher_outputs(backend):
    """Absent table and bias: empty outputs, and word-table gradients that equal the full op's scatter."""
    device = device_for(backend)
    word, _, _, w, _ = _tables(5, 0, 0, 32, torch.float32, device, bias=False)
    impl = backends.launchers(backend, "embeddings")
    ids = torch.tensor([0, 3, 3, 4], device=device)
    y, mean, rstd = impl.embeddings_fwd(ids, None, None, word, None, None, w, None, 1e-5, 0.0, None)
    assert_close_to_ref(y, embeddings_ref(ids, word.double(), None, None, None, None, w.double(), None, 1e-5),
                        atol=1e-5)
    dword, dpos, dtt, dw, db = impl.embeddings_bwd(torch.randn_like(y), ids, None, None, word, None, None, w, mean,
                                                   rstd, 0.0, None, -1, -1, False)
    assert dpos.numel() == dtt.numel() == db.numel() == 0 and dw.shape == (32,)
    assert (dword[[1, 2]] == 0).all() and (dword[3] != 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_token(backend):
    device = device_for(backend)
    tables = _tables(4, 3, 2, 40, torch.float32, device)
    ids = torch.tensor([[3]], device=device)
    _check(backend, tables, ids, torch.tensor([[2]], device=device), torch.tensor([[1]], device=device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ids_equal_accumulate(backend):
    """Every token hits the same rows: the table gradients are sums over all 24 tokens."""
    device = device_for(backend)
    tables = _tables(5, 4, 3, 64, torch.float32, device)
    ids = torch.full((3, 8), 2, device=device)
    _check(backend, tables, ids, torch.full((3, 8), 1, device=device), torch.full((3, 8), 0, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_types", [1, 3, 7])
def test_token_type_table_sizes(backend, num_types):
    """Up to 4 rows the token type gradient is summed in registers (3: a padded power of two), above with atomics."""
    device = device_for(backend)
    tables = _tables(6, 5, num_types, 40, torch.float32, device)
    ids = torch.randint(0, 6, (3, 5), device=device)
    _check(backend, tables, ids, torch.arange(5, device=device), torch.randint(0, num_types, (3, 5), device=device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_rows_get_no_gradient(backend):
    """RoBERTa: word padding_idx 1, positions counted from padding_idx + 1 with padded tokens at padding_idx."""
    device = device_for(backend)
    tables = _tables(11, 12, 1, 56, torch.float32, device)
    pad = 1
    ids = torch.tensor([[0, 5, 7, 5, 2, pad, pad], [0, 3, 9, 9, 10, 4, 2]], device=device)
    keep = (ids != pad).long()
    pos_ids = torch.cumsum(keep, dim=1) * keep + pad
    grads = _check(backend, tables, ids, pos_ids, torch.zeros_like(ids), word_pad=pad, pos_pad=pad)
    assert (grads[0][pad] == 0).all() and (grads[1][pad] == 0).all()
    assert (grads[0][5] != 0).any() and (grads[1][pad + 1] != 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_layer_norm_params_with_fp16_tables(backend):
    device = device_for(backend)
    tables = _tables(9, 6, 2, 96, torch.float16, device, wdtype=torch.float32)
    ids = torch.randint(0, 9, (2, 4), device=device)
    _check(backend, tables, ids, torch.arange(4, device=device), torch.randint(0, 2, (2, 4), device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_ref_gpu(backend, dtype):
    device = device_for(backend)
    tables = _tables(30522, 512, 2, 768, dtype, device)
    ids = torch.randint(0, 30522, (32, 512), device=device)
    ids[:, :8] = 101  # a very frequent id
    _check(backend, tables, ids, torch.arange(512, device=device), torch.randint(0, 2, (32, 512), device=device),
           word_pad=0, eps=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_clamps_bad_ids(backend):
    """Ids outside a table never read out of bounds: the kernel clamps them (the op raises before that)."""
    device = device_for(backend)
    word, pos, tt, w, b = _tables(5, 4, 2, 32, torch.float32, device)
    impl = backends.launchers(backend, "embeddings")
    bad = [torch.tensor(t, device=device) for t in ([-3, 2, 10**9], [7, -1, 1], [5, -9, 0])]
    clamped = [torch.tensor(t, device=device) for t in ([0, 2, 4], [3, 0, 1], [1, 0, 0])]
    y_bad = impl.embeddings_fwd(*bad, word, pos, tt, w, b, 1e-5, 0.0, None)[0]
    y_ok = impl.embeddings_fwd(*clamped, word, pos, tt, w, b, 1e-5, 0.0, None)[0]
    torch.testing.assert_close(y_bad, y_ok)


def test_custom_ops_registered():
    from fastenc.kernels import embeddings as k

    word, pos, tt, w, b = _tables(7, 5, 2, 24, torch.float32, torch.device("cpu"))
    ids, pos_ids, tt_ids = torch.randint(0, 7, (6,)), torch.randint(0, 5, (6,)), torch.randint(0, 2, (6,))
    seed = torch.tensor([3], dtype=torch.int64)
    torch.library.opcheck(k.embeddings_fwd.op, (ids, pos_ids, tt_ids, word, pos, tt, w, b, 1e-5, 0.1, seed))
    y, mean, rstd = k.embeddings_fwd.op(ids, pos_ids, tt_ids, word, pos, tt, w, b, 1e-5, 0.1, seed)
    dy = torch.randn_like(y)
    bwd = k.embeddings_bwd.op
    torch.library.opcheck(bwd, (dy, ids, pos_ids, tt_ids, word, pos, tt, w, mean, rstd, 0.1, seed, 1, -1))
    torch.library.opcheck(bwd, (dy, ids, pos_ids, None, word, pos, None, w, mean, rstd, 0.0, None, -1, 0))
    # no position table, bias-free LayerNorm
    torch.library.opcheck(k.embeddings_fwd.op, (ids, None, tt_ids, word, None, tt, w, None, 1e-5, 0.1, seed))
    y, mean, rstd = k.embeddings_fwd.op(ids, None, tt_ids, word, None, tt, w, None, 1e-5, 0.1, seed)
    torch.library.opcheck(bwd, (dy, ids, None, tt_ids, word, None, tt, w, mean, rstd, 0.1, seed, 1, -1, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_for(backend)
    tables = _tables(7, 5, 2, 32, torch.float32, device)
    ids, tt_ids = torch.randint(0, 7, (2, 5), device=device), torch.randint(0, 2, (2, 5), device=device)
    pos_ids = torch.arange(5, device=device)
    dy = torch.randn(2, 5, 32, device=device)

    def f(word, pos, tt, w, b):
        return embeddings(ids, word, pos_ids, pos, tt_ids, tt, w, b, 1e-5, word_padding_idx=0, backend=backend)

    y, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), tables, dy)
    y_e, grads_e = _run(f, tables, dy)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_without_position_table_or_bias(backend):
    device = device_for(backend)
    word, _, tt, w, _ = _tables(7, 0, 2, 32, torch.float32, device, bias=False)
    ids, tt_ids = torch.randint(0, 7, (2, 5), device=device), torch.randint(0, 2, (2, 5), device=device)
    dy = torch.randn(2, 5, 32, device=device)

    def f(word, tt, w):
        return embeddings(ids, word, None, None, tt_ids, tt, w, None, 1e-5, backend=backend)

    y, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), [word, tt, w], dy)
    y_e, grads_e = _run(f, [word, tt, w], dy)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    device = device_for(backend)
    word, pos, tt, w, b = _tables(5, 4, 2, 32, torch.float32, device)
    ids, pos_ids, tt_ids = torch.randint(0, 5, (2, 3), device=device), torch.arange(3, device=device), None

    def call(ids=ids, pos_ids=pos_ids, tt_ids=tt_ids, tt=None, w=w):
        return embeddings(ids, word, pos_ids, pos, tt_ids, tt, w, b, backend=backend)

    with pytest.raises(IndexError, match="input_ids"):
        call(ids=torch.tensor([[0, 5]], device=device), pos_ids=torch.arange(2, device=device))
    with pytest.raises(IndexError, match="position_ids"):
        call(pos_ids=torch.tensor([0, 1, 4], device=device))
    with pytest.raises(TypeError, match="input_ids"):
        call(ids=ids.float())
    with pytest.raises(ValueError, match="position_ids"):
        call(pos_ids=torch.arange(4, device=device))
    with pytest.raises(ValueError, match="token_type"):
        call(tt_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="position_ids and position_embeddings"):
        embeddings(ids, word, None, pos, None, None, w, b, backend=backend)
    with pytest.raises(ValueError, match="position_ids and position_embeddings"):
        embeddings(ids, word, pos_ids, None, None, None, w, b, backend=backend)
    with pytest.raises(ValueError, match="weight"):
        call(w=w[:-1])
    impl = backends.launchers(backend, "embeddings")
    flat = ids.reshape(-1)
    with pytest.raises(ValueError, match="position_ids"):
        impl.embeddings_fwd(flat, flat.int(), None, word, pos, None, w, b, 1e-5, 0.0, None)
    with pytest.raises(TypeError, match="position_embeddings"):
        impl.embeddings_fwd(flat, flat, None, word, pos.double(), None, w, b, 1e-5, 0.0, None)
