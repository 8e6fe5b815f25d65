"""The references themselves: they are the oracle, so they are checked against independent formulas here."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastenc.ops import attention_ref, embeddings_ref


def _naive_attention(q, k, v, keep):
    """Per-(batch, head, query) loop in float64: softmax over the allowed keys only; no allowed key -> zeros."""
    B, S, H, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(S):
                idx = keep[b].nonzero().flatten()
                if idx.numel() == 0:
                    continue
                s = (k[b, idx, h] @ q[b, i, h]) / math.sqrt(D)
                p = torch.exp(s - s.max())
                out[b, i, h] = (p / p.sum()) @ v[b, idx, h]
    return out


def test_attention_ref_padded_matches_naive_and_masked_rows_are_zero():
    q, k, v = (torch.randn(3, 6, 2, 8, dtype=torch.float64) for _ in range(3))
    keep = torch.rand(3, 6) > 0.4
    keep[1] = False
    keep[2, 0] = True
    torch.testing.assert_close(attention_ref(q, k, v, key_padding_mask=keep), _naive_attention(q, k, v, keep))


def test_attention_ref_fully_masked_rows_have_zero_grad_and_no_nan():
    q, k, v = (torch.randn(2, 5, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0] = False
    out = attention_ref(q, k, v, key_padding_mask=keep)
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert t.grad[0].abs().max() == 0
        assert t.grad[1].abs().max() > 0


def test_attention_ref_packed_equals_padded():
    lens = [3, 1, 5]
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    q, k, v = (torch.randn(9, 2, 4, dtype=torch.float64) for _ in range(3))
    packed = attention_ref(q, k, v, cu_seqlens=cu, max_seqlen=5)
    for b, n in enumerate(lens):
        s = slice(int(cu[b]), int(cu[b + 1]))
        assert s.stop - s.start == n
        alone = attention_ref(q[s][None], k[s][None], v[s][None])[0]
        torch.testing.assert_close(packed[s], alone)


def test_attention_ref_additive_bias_and_probs():
    q, k, v = (torch.randn(2, 4, 2, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    out, probs = attention_ref(q, k, v, attn_bias=bias, return_probs=True)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8) + bias
    p = s.softmax(-1)
    torch.testing.assert_close(probs, p)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", p, v))


@pytest.mark.parametrize("with_types", [True, False])
def test_embeddings_ref_sum_order_and_padding_grad(with_types):
    V, P, T, E = 11, 7, 3, 6
    word, pos, typ = (torch.randn(n, E, dtype=torch.float64, requires_grad=True) for n in (V, P, T))
    w, b = torch.randn(E, dtype=torch.float64), torch.randn(E, dtype=torch.float64)
    ids = torch.tensor([[1, 0, 4, 4], [0, 2, 3, 10]])
    pids = torch.arange(4).expand(2, 4)
    tids = torch.randint(0, T, (2, 4))
    y = embeddings_ref(ids, word, pids, pos, tids if with_types else None, typ if with_types else None, w, b,
                       1e-12, word_padding_idx=0)
    h = word[ids] + (typ[tids] if with_types else 0) + pos[pids]
    torch.testing.assert_close(y, F.layer_norm(h, (E,), w, b, 1e-12))
    y.sum(dim=-1).pow(2).sum().backward()
    assert word.grad[0].abs().max() == 0  # padding_idx row gets no gradient
    assert word.grad[4].abs().max() > 0
