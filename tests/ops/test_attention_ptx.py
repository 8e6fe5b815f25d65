"""The inline PTX of the compiled Triton attention (kernels/attention.py: MUL_HI_LO_PTX in Philox's rounds,
DROP_PAIR_PTX in the forward's dropout), run on the CPU by tests/ptx_emulation.py: the products are exact, and
dropping 16-bit probabilities two at a time zeroes exactly what the keep-mask drops, whichever two scores the
compiler packs into one register (the kernel's words and selectors come from an interpreted probe of
_dropout_selectors). On a GPU the dropout tests of test_attention.py run the compiled PTX itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from fastenc.kernels import attention as A
from tests import ptx_emulation
from tests.helpers import device_for


def test_mul_hi_lo_ptx_gives_the_high_and_low_words_of_the_product():
    rng = np.random.default_rng(7)
    a = np.concatenate([rng.integers(0, 2**32, 4096, dtype=np.uint64), [0, 1, 2**32 - 1]]).astype(np.uint64)
    for m in (0xD2511F53, 0xCD9E8D57):
        asm, constraints = A.MUL_HI_LO_PTX
        hi, lo = ptx_emulation.run(asm, constraints, [a, np.full_like(a, m)])
        exact = [int(x) * m for x in a]
        assert hi.tolist() == [x >> 32 for x in exact]
        assert lo.tolist() == [x & 0xFFFFFFFF for x in exact]


@triton.jit
def _selectors_probe(seed_ptr, words_ptr, sel_ptr, keep_ptr, b, h, row_start, col_start, dropout_p,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    seed = tl.load(seed_ptr)
    threshold = A._dropout_threshold(dropout_p)
    words, sel = A._dropout_selectors(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N)
    keep = A._dropout_keep(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N)
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tl.store(words_ptr + offs, words.to(tl.int32, bitcast=True))
    tl.store(sel_ptr + offs, sel.to(tl.int32, bitcast=True))
    tl.store(keep_ptr + offs, keep.to(tl.int8))


def _pairings(bm: int, bn: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[n / 2, 2] flat indices of the tile: the keys 2q, 2q + 1 of a row (what the mma layouts hold in one register),
    rows i, i + 8 of a key, and a random pairing."""
    idx = np.arange(bm * bn).reshape(bm, bn)
    rows8 = idx.reshape(bm // 16, 2, 8, bn).transpose(0, 2, 3, 1).reshape(-1, 2)
    return {"adjacent keys": idx.reshape(-1, 2), "rows i, i + 8": rows8,
            "random": rng.permutation(bm * bn).reshape(-1, 2)}


@pytest.mark.parametrize("p", [0.1 + 2**-10, 0.5, 0.7 + 2**-10])
def test_drop_pair_ptx_zeroes_exactly_the_dropped_scores_of_any_pair(p):
    """Thresholds below and from 128 on (_bytes_ge's two cases); a tile at a row and key offset."""
    bm, bn = 32, 64
    dev = device_for("triton")
    words, sel = (torch.empty(bm, bn, dtype=torch.int32, device=dev) for _ in range(2))
    keep = torch.empty(bm, bn, dtype=torch.int8, device=dev)
    _selectors_probe[(1,)](torch.tensor([2**33 + 5], dtype=torch.int64, device=dev), words, sel, keep, 3, 2, 48, 96,
                           p, BLOCK_M=bm, BLOCK_N=bn)
    words, sel = (t.cpu().numpy().view(np.uint32).astype(np.uint64).ravel() for t in (words, sel))
    keep = keep.cpu().numpy().astype(bool).ravel()
    assert 0.2 * (1 - p) < keep.mean() < 1.8 * (1 - p)  # a mask, not all or nothing
    rng = np.random.default_rng(11)
    x = rng.standard_normal(bm * bn).astype(np.float16).view(np.uint16).astype(np.uint64)
    expected = np.where(keep, x, 0)
    asm, constraints = A.DROP_PAIR_PTX
    for name, pairs in _pairings(bm, bn, rng).items():
        e0, e1 = pairs[:, 0], pairs[:, 1]
        (out,) = ptx_emulation.run(asm, constraints, [x[e0] | (x[e1] << np.uint64(16)), words[e0], words[e1],
                                                      sel[e0], sel[e1]])
        got = np.empty_like(x)
        got[e0], got[e1] = out & np.uint64(0xFFFF), out >> np.uint64(16)
        assert np.array_equal(got, expected), f"{name}: {np.count_nonzero(got != expected)} scores differ"


def test_the_emulator_rejects_instructions_it_does_not_know():
    with pytest.raises(NotImplementedError, match="or.b32"):
        ptx_emulation.run("or.b32 $0, $1, $2;", "=r,r,r", [np.uint64(1), np.uint64(2)])
