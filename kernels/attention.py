"""Triton flash attention (FlashAttention-2 scheme) over padded [B, S, H, D] or packed [T, H, D] batches.

Forward: one program per (query block, sequence, head) streams the key blocks with an online softmax in fp32 and base-2
exponentials (one FMA and one exp2 per score), and saves the log-sum-exp per query row. Backward recomputes the
probabilities from that lse: one kernel per key block accumulates dk, dv over the query blocks, computing S^T = K Q^T so
that P^T and dS^T are the A operands of its dots as they come, a second per query block accumulates dq over the key
blocks. The key loops of the forward and dq kernels are split in two: the blocks before the first masked key run with
no mask at all, the rest (up to the last key allowed) with one. Without a key padding mask the masked part is the
last, partial block (cols < length); with one, each program first scans its sequence's mask row once for the first
zero and the last nonzero, so a right-padded batch (the models' padding) runs like per-sequence lengths, with no mask
load in its main loop, while any other mask pattern still runs exactly (its blocks past the first zero load the mask).
The dk/dv kernel owns its keys: it zeroes the rows of masked keys once, at the end, and splits its query loop the same
way (full blocks, then the partial one). Trade-off: the two backward kernels recompute q k^T and do v^T twice (7
matmuls instead of FA2's 5), in exchange for no atomics: dq, dk and dv are deterministic and need no fp32 scratch
buffer.

Local window (|i - j| <= window, WINDOW constexpr): a program visits only the blocks its rows' windows reach
(_window_range), in three loops: edge blocks (window and key masks), blocks inside every row's window and before the
first masked key (no mask), edge blocks again. Without a window the first loop has constant empty bounds
and the others are the two loops above, so that variant compiles as before; a window that masks nothing (>= seqlen -
1) runs it. Dropout coordinates do not change, so the mask stays the CUDA kernels'.

q, k, v are read in place through their strides (views of a fused QKV output need no copy). Head dims up to 128;
BLOCK_D is the next power of two and the extra columns are masked. fp32 inputs use tf32 tensor cores only when
torch.backends.cuda.matmul.allow_tf32 is set (as torch's own matmuls do), else exact fp32 ("ieee"); the CPU
interpreter always uses "ieee".

TMA (sm_90): the forward and dq kernels may read their unmasked key blocks of k and v through tensor descriptors made on
the device, one per head of each sequence ([length, D] from the sequence's first row, with its row stride; rows past the
length and columns past D read as 0, so a tile never reaches another sequence's rows), while the masked edge blocks keep
the masked pointer loads. The launcher picks it per call (the TMA constexpr, _tma): a GPU of compute capability 9.0 on,
fp16 / bf16, and tensors a descriptor describes exactly (16-byte aligned data and strides, rows a multiple of 16 bytes),
else the pointer loads (and sm_80 binaries are the same as without it). Which kernels, block sizes and triton releases
take it is TMA_KERNELS, from the sm_90a binaries' main loops: kept only where no loop got longer and no wgmma got
serialised (dk/dv has none, nor any kernel with a local window). Trade-off: each program writes its descriptors to
global scratch (triton's allocator; the launcher sets one on torch's caching allocator when the caller has none) and
each tile waits on a barrier, in exchange for no per-thread address arithmetic or copy instructions for its tiles: on
small tiles the barrier costs about what the loads save.

Dropout: probability (b, h, i, j) (sequence, head, query, key; per-sequence coordinates in both layouts) is kept
iff the 8-bit slice u of (i, j) satisfies u >= t, t = ceil(dropout_p * 2**8): u is byte j % 2 + 2 ((i % 16) // 8) of
word (j % 32) // 8 of Philox4x32-7 with key (seed & 0xffffffff, seed >> 32) and counter
(b, 4 (j // 32) + (j % 8) // 2, h, 8 (i // 16) + i % 8). One call gives the decisions of the rows i, i + 8 of a 16-row
group at the keys 2q, 2q + 1, 2q + 8, ..., 2q + 25 of a 32-key block (q = (j % 8) // 2): what one thread holds of a
16 x 32 patch of an mma tile (wgmma or mma.sync), so each thread draws the calls of its own scores and no words move
between threads. Sequence and head are the counter words Philox's first round multiplies, so the first three rounds
take their products on the rows or the key blocks alone, shared by every call of a row or key block. The exact keep
probability is 1 - t / 2**8 (within 2**-8 of 1 - dropout_p, exact for multiples of 2**-8 such as 0.5, 0.25, 0.125);
kept probabilities are scaled by 1 / (1 - dropout_p), like torch's dropout, so the output's expectation is off by at
most 2**-8 / (1 - dropout_p) relative where dropout_p * 2**8 is not an integer. Trade-off: 7 rounds (the fewest with
which Philox4x32 passes BigCrush, Salmon et al. 2011) and 8-bit slices draw 2.9x fewer rounds per decision than
Philox4x32-10 with 16-bit slices, for that coarser keep probability; a call's 16 decisions span two rows and 32 keys,
so every tile is a multiple of 16 rows and 32 keys (all configs are). The scheme depends on no block size beyond
that, so the backward kernels regenerate the forward mask exactly, the CUDA kernels (csrc/attention.cu) draw the same
mask, and `attention_dropout_mask` returns it as a tensor for tests. Compiled code takes two steps in inline PTX (_PTX;
the interpreter runs the same arithmetic in Triton, and tests/ops/test_attention_ptx.py runs the PTX on the CPU): each
Philox product is one 32 x 32 -> 64-bit multiply, and the forward drops its 16-bit probabilities two at a time (one
PRMT and one AND per register pair, where a bit test and a select per score cost twice that).

Rows with no key to attend to give o = 0 and lse = +inf, so every recomputed probability of that row is 0 and its
gradients are 0.

Launchers (the contract of fastenc.ops.attention) are torch.library custom ops with fake implementations, so that
torch.compile traces them as single opaque nodes without graph breaks; in eager mode they are called directly (the
dispatcher's Python custom-op path costs about 100 us a call).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastenc.kernels import _configs
from fastenc.kernels import _fakes as fakes
from fastenc.kernels import _triton_internals as ti
from fastenc.kernels._common import FLOAT_DTYPES, cdiv, interpreter_on, launch_reasons, next_pow2, register
from fastenc.kernels._launch import launch

MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634
_MAX_GRID_YZ = 65535  # CUDA limit of grid dims y (sequences) and z (heads)


# ---------------------------------------------------------------------------------------------------------------
# Shared device helpers


@triton.jit
def _sequence(cu_seqlens_ptr, b, seqlen_padded, PACKED: tl.constexpr):
    """(first token row, length) of sequence b: packed rows cu[b]:cu[b+1], or padded rows 0:S."""
    if PACKED:
        start = tl.load(cu_seqlens_ptr + b).to(tl.int64)
        seqlen = (tl.load(cu_seqlens_ptr + b + 1) - tl.load(cu_seqlens_ptr + b)).to(tl.int32)
    else:
        start = b * 0
        seqlen = seqlen_padded
    return start, seqlen


@triton.jit
def _load_rows(ptr, base, rows, seqlen, stride_s, offs_d, HEAD_DIM: tl.constexpr):
    """Tile [rows, BLOCK_D] of one head; rows past seqlen and columns past HEAD_DIM read as 0."""
    ptrs = ptr + base + rows[:, None].to(tl.int64) * stride_s + offs_d[None, :]
    return tl.load(ptrs, mask=(rows[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def _load_full_rows(ptr, base, rows, stride_s, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tile [rows, BLOCK_D] of one head whose rows all exist: only the columns past HEAD_DIM are masked (none when
    BLOCK_D == HEAD_DIM, the usual head dims)."""
    ptrs = ptr + base + rows[:, None].to(tl.int64) * stride_s + offs_d[None, :]
    if HEAD_DIM == BLOCK_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _rows_desc(ptr, base, seqlen, stride_s, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               TMA: tl.constexpr):
    """With TMA: a tensor descriptor of one head of one sequence, [seqlen, HEAD_DIM] from ptr + base with row stride
    stride_s, read in [BLOCK_ROWS, BLOCK_D] tiles (rows past seqlen and columns past HEAD_DIM read as 0); without,
    ptr itself (unused: _load_block reads through pointers)."""
    if TMA:  # one return of one type per variant (both branches' returns would have to agree)
        desc = tl.make_tensor_descriptor(ptr + base, shape=[seqlen, HEAD_DIM], strides=[stride_s, 1],
                                         block_shape=[BLOCK_ROWS, BLOCK_D])
    else:
        desc = ptr
    return desc


@triton.jit
def _load_block(ptr, desc, base, row_start, seqlen, stride_s, offs_d, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr, TMA: tl.constexpr):
    """Rows row_start + arange(BLOCK_ROWS): _load_rows when rows past seqlen may be in the block (MASK_ROWS), else
    one tile load through `desc` (_rows_desc) with TMA, or _load_full_rows without."""
    rows = row_start + tl.arange(0, BLOCK_ROWS)
    if MASK_ROWS:
        return _load_rows(ptr, base, rows, seqlen, stride_s, offs_d, HEAD_DIM)
    if TMA:
        return desc.load([row_start, 0])
    return _load_full_rows(ptr, base, rows, stride_s, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _key_allowed(mask_ptr, b, mask_stride_b, mask_stride_s, cols, seqlen, HAS_MASK: tl.constexpr):
    """[BLOCK_N] bool, True where key column `cols` exists and is not padding (the key padding mask, if any)."""
    if HAS_MASK:
        m = tl.load(mask_ptr + b * mask_stride_b + cols.to(tl.int64) * mask_stride_s, mask=cols < seqlen, other=0)
        return m != 0
    else:
        return cols < seqlen


@triton.jit
def _key_range(mask_ptr, b, mask_stride_b, mask_stride_s, seqlen, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr,
               SCAN: tl.constexpr):
    """(full_end, kv_end): the keys below full_end (a multiple of BLOCK_N) are all allowed, those from kv_end on all
    masked. Without a mask (seqlen // BLOCK_N * BLOCK_N, seqlen); with one, from the first zero and the last nonzero
    of the sequence's mask row, scanned SCAN keys at a time (a right-padded row of length n gives n's)."""
    kv_end = seqlen
    first_zero = seqlen
    if HAS_MASK:
        last = tl.zeros([SCAN], dtype=tl.int32)
        zero = tl.full([SCAN], 2**30, dtype=tl.int32)
        for s0 in range(0, seqlen, SCAN):
            cols = s0 + tl.arange(0, SCAN)
            ok = _key_allowed(mask_ptr, b, mask_stride_b, mask_stride_s, cols, seqlen, True)
            last = tl.maximum(last, tl.where(ok, cols + 1, 0))
            zero = tl.minimum(zero, tl.where(ok | (cols >= seqlen), 2**30, cols))
        kv_end = tl.max(last, 0)
        first_zero = tl.minimum(tl.min(zero, 0), kv_end)
    return first_zero // BLOCK_N * BLOCK_N, kv_end


@triton.jit
def _window_range(own_start, window, full_end, end, OWN: tl.constexpr, STEP: tl.constexpr):
    """(lo, mid_start, mid_end, hi): the blocks of STEP positions that rows own_start + arange(OWN) may reach within
    |i - j| <= window, in three loops: [lo, mid_start) and [mid_end, hi) are edge blocks (window mask and the key or row
    mask), [mid_start, mid_end) lie inside the window for every owned row and below full_end (no mask at all). lo,
    mid_start and mid_end are multiples of STEP (or hi); hi <= end. window < the sequence length, so nothing
    overflows."""
    lo = tl.maximum(own_start - window, 0) // STEP * STEP
    hi = tl.minimum(end, own_start + OWN + window)
    inside_lo = (tl.maximum(own_start + OWN - 1 - window, 0) + STEP - 1) // STEP * STEP
    inside_hi = (own_start + window + 1) // STEP * STEP  # a block c with c + STEP <= own_start + window + 1
    mid_start = tl.minimum(tl.maximum(inside_lo, lo), hi)
    mid_end = tl.maximum(mid_start, tl.minimum(inside_hi, full_end))
    return lo, mid_start, mid_end, hi


@triton.jit
def _in_window(rows, cols, window):
    """[len(rows), len(cols)] bool: |i - j| <= window."""
    d = rows[:, None] - cols[None, :]
    return (d <= window) & (d >= -window)


_DROPOUT_ROUNDS: tl.constexpr = tl.constexpr(7)
# compiled code takes a few steps in inline PTX (_mul_hi_lo, _drop_pairs); the interpreter runs no PTX
_PTX: tl.constexpr = tl.constexpr(not interpreter_on())
# (asm, constraints) of each; tests/ptx_emulation.py runs them on the CPU
MUL_HI_LO_PTX: tl.constexpr = tl.constexpr((
    "{\n.reg .b64 fe_p;\nmul.wide.u32 fe_p, $2, $3;\nmov.b64 {$1, $0}, fe_p;\n}",
    "=r,=r,r,r"))  # $0, $1 = high, low of $2 * $3
DROP_PAIR_PTX: tl.constexpr = tl.constexpr((
    "{\n.reg .b32 fe_sel, fe_keep;\nprmt.b32 fe_sel, $4, $5, 0x50;\nprmt.b32 fe_keep, $2, $3, fe_sel;\n"
    "and.b32 $0, $1, fe_keep;\n}", "=r,r,r,r,r,r"))  # $0 = pair $1 masked by words $2, $3 and selectors $4, $5


@triton.jit
def _mul_hi_lo(a, m: tl.constexpr, WIDE: tl.constexpr, PTX_MUL: tl.constexpr):
    """(high, low) words of a * m (uint32 a, constant m): with WIDE one 32 x 32 -> 64-bit multiply, in PTX if PTX_MUL
    and compiled (an elementwise op to Triton's layout passes) or else as a 64-bit multiply in Triton (which those
    passes may place in a layout of its own, the words then crossing to their threads through shared memory);
    without WIDE umulhi and a multiply."""
    if PTX_MUL and _PTX:
        return tl.inline_asm_elementwise(MUL_HI_LO_PTX[0], MUL_HI_LO_PTX[1], [a, tl.full([], m, tl.uint32)],
                                         dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)
    elif WIDE:
        p = a.to(tl.uint64) * m
        return (p >> 32).to(tl.uint32), p.to(tl.uint32)
    else:
        return tl.math.umulhi(a, tl.full([], m, tl.uint32)), a * tl.full([], m, tl.uint32)


@triton.jit
def _philox4x32(k0, k1, c0, c1, c2, c3, ROUNDS: tl.constexpr, PTX_MUL: tl.constexpr):
    """Philox4x32 (Random123's round; Salmon et al. 2011) with key (k0, k1) and uint32 counter words, which may be
    tensors of different (broadcastable) shapes: each round's products are taken on the shapes their inputs have, so
    counter words that vary along different dims mix only where a round first combines them. Products: every round's
    in PTX if PTX_MUL (compiled), else the first three rounds' as umulhi and a multiply, the others' as 64-bit
    multiplies (_mul_hi_lo)."""
    for r in tl.static_range(ROUNDS):
        h0, l0 = _mul_hi_lo(c0, 0xD2511F53, r >= 3, PTX_MUL)
        h2, l2 = _mul_hi_lo(c2, 0xCD9E8D57, r >= 3, PTX_MUL)
        c0, c1, c2, c3 = h2 ^ c1 ^ k0, l2, h0 ^ c3 ^ k1, l0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _dropout_words(seed, b, h, row_start, col_start, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PTX_MUL: tl.constexpr):
    """The four words of every Philox call of the [BLOCK_M, BLOCK_N] tile at (row_start, col_start) (multiples of 16
    and 32): each [BLOCK_M // 16, 8, BLOCK_N // 32, 4] uint32, call (16-row group, row % 8, 32-key block, q) with
    counter (b, 4 (key block) + q, h, 8 (row group) + row % 8) (module doc). Sequence and head are the counter words
    the first round multiplies, so that round and the next two take their products on the rows or the keys alone.
    PTX_MUL (_philox4x32): the forward's draw (_dropout_selectors) only: from the binaries (fastenc precompile
    --report), it shortened the forward's loops and lengthened some backward ones (sm_80 d128 dk/dv by 19% on
    triton 3.6), whose transposed or later draws the layout passes then place in the mma layout, several threads
    computing each call."""
    tl.static_assert(BLOCK_M % 16 == 0 and BLOCK_N % 32 == 0, "dropout tiles are whole 16 x 32 patches")
    rows = (row_start // 16 + tl.arange(0, BLOCK_M // 16))[:, None] * 8 + tl.arange(0, 8)[None, :]
    calls = (col_start // 32 + tl.arange(0, BLOCK_N // 32))[:, None] * 4 + tl.arange(0, 4)[None, :]
    seed = seed.to(tl.uint64)
    return _philox4x32((seed & 0xFFFFFFFF).to(tl.uint32), (seed >> 32).to(tl.uint32), b.to(tl.uint32),
                       calls[None, None, :, :].to(tl.uint32), h.to(tl.uint32), rows[:, :, None, None].to(tl.uint32),
                       _DROPOUT_ROUNDS, PTX_MUL)


@triton.jit
def _bytes_ge(w, threshold):
    """The four 8-bit slices u of each uint32 w against the integer threshold t (0 <= t <= 256) at once: the top bit
    of each byte of the result is set iff u >= t. d = (w | 0x80808080) - t7 per byte (no borrow crosses a byte)
    has its top bit set iff u's low 7 bits >= t7; below 128 (t7 = t) u passes if its top bit or d's is set, from 128
    on (t7 = t - 128, so t = 256 passes nothing) if both are: the majority of (w, d, low)."""
    low = (threshold - 128) >> 31  # all ones below 128, else 0
    d = (w | 0x80808080) - (threshold - (128 & ~low)).to(tl.uint32) * 0x01010101
    low = low.to(tl.uint32)
    return (w & d) | (w & low) | (d & low)


@triton.jit
def _dropout_flags(seed, b, h, row_start, col_start, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PTX_MUL: tl.constexpr):
    """The keep decisions of the [BLOCK_M, BLOCK_N] tile at (row_start, col_start) against the integer `threshold` of
    _dropout_threshold (module doc), as (flags, byte): flags [BLOCK_M // 16, 1, 8, BLOCK_N // 32, 4, 4, 1] uint32,
    each call's words with the top bit of each byte set iff kept (_bytes_ge: four decisions at once), and byte
    [1, 2, 1, 1, 1, 1, 2] int32, the byte of its word that decides each score. Broadcast together they are the tile
    as [row group, (i % 16) // 8, row % 8, key block, word, q, key % 2], which reshapes to [BLOCK_M, BLOCK_N]: the
    call of row i and key j gives j the byte j % 2 + 2 ((i % 16) // 8) of word (j % 32) // 8. The dims are arranged
    so that the words land in the registers of the threads whose scores they decide (an mma tile's thread holds rows
    i, i + 8 and keys 2q, 2q + 1 of each 8)."""
    r0, r1, r2, r3 = _dropout_words(seed, b, h, row_start, col_start, BLOCK_M, BLOCK_N, PTX_MUL)
    # [row group, row % 8, key block, q, word]: word w = 2 x + y of join(join(f0, f2), join(f1, f3))[..., x, y]
    flags = tl.join(tl.join(_bytes_ge(r0, threshold), _bytes_ge(r2, threshold)),
                    tl.join(_bytes_ge(r1, threshold), _bytes_ge(r3, threshold)))
    flags = tl.permute(tl.reshape(flags, [BLOCK_M // 16, 8, BLOCK_N // 32, 4, 4]), (0, 1, 2, 4, 3))
    flags = tl.reshape(flags, [BLOCK_M // 16, 1, 8, BLOCK_N // 32, 4, 4, 1])
    byte = tl.arange(0, 2)[:, None, None, None, None, None] * 2 + tl.arange(0, 2)[None, None, None, None, None, :]
    return flags, byte[None, :, :, :, :, :, :]


@triton.jit
def _dropout_keep(seed, b, h, row_start, col_start, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool keep-mask of (query row_start + arange(BLOCK_M), key col_start + arange(BLOCK_N))
    (_dropout_flags): each score tests its bit."""
    flags, byte = _dropout_flags(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N, False)
    bit = tl.full(byte.shape, 0x80, tl.uint32) << (byte * 8).to(tl.uint32)
    return tl.reshape((flags & bit) != 0, [BLOCK_M, BLOCK_N])


@triton.jit
def _drop(x, keep, threshold):
    """x with the entries that `keep` (_dropout_keep) drops set to 0. The zero is a run-time product (t * 0.0, which
    the compiler may not fold), so the select stays on x and is not moved past a following cast to 16 bits, where it
    would cost a split and a repack of each pair of halves."""
    return tl.where(keep, x, threshold.to(tl.float32) * 0.0)


@triton.jit
def _dropout_selectors(seed, b, h, row_start, col_start, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keep decisions of the tile as _drop_pairs takes them: (words, sel), [BLOCK_M, BLOCK_N] uint32 each, every
    score's word of flags (_dropout_flags) and a selector of its deciding byte in two forms: bits 0-7 the two PRMT
    nibbles 8 | byte (that byte of the first source operand, its top bit replicated), bits 8-15 the nibbles
    8 | (4 + byte) (the same byte of the second operand). Constant along the key loop but for the words."""
    flags, byte = _dropout_flags(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N, True)
    shape: tl.constexpr = [BLOCK_M // 16, 2, 8, BLOCK_N // 32, 4, 4, 2]
    sel = ((8 | byte) * 0x11 | (12 | byte) * 0x1100).to(tl.uint32)
    return (tl.reshape(tl.broadcast_to(flags, shape), [BLOCK_M, BLOCK_N]),
            tl.reshape(tl.broadcast_to(sel, shape), [BLOCK_M, BLOCK_N]))


@triton.jit
def _drop_pairs(x, words, sel):
    """x (16-bit floats) with the entries that (words, sel) of _dropout_selectors drop set to +0, two at a time:
    whichever two scores the compiler packs into one 32-bit register (x0 in the low half), a PRMT replicates the
    top bit of x0's deciding byte over the low half and x1's over the high half (selector: x0's bits 0-7, x1's bits
    8-15), and an AND applies that to the pair: 2 instructions per 2 scores, where a select on each score after a
    bit test costs 4. Compiled code only (the interpreter runs no PTX: _PTX)."""
    return tl.inline_asm_elementwise(DROP_PAIR_PTX[0], DROP_PAIR_PTX[1], [x, words, sel], dtype=x.dtype, is_pure=True,
                                     pack=2)


@triton.jit
def _dropout_threshold(dropout_p):
    """t = ceil(dropout_p * 2**8) (exact in fp32): an 8-bit slice u is kept iff u >= t."""
    return tl.math.ceil(dropout_p * 256.0).to(tl.int32)


@triton.jit
def _attention_fwd_block(acc, l_i, m_i, q, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s,
                         mask_ptr, mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d,
                         qk_scale, seed, threshold, window, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         HAS_MASK: tl.constexpr,
                         MASK_KEYS: tl.constexpr, WINDOW_EDGE: tl.constexpr, DROPOUT: tl.constexpr,
                         INPUT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """One key block of the forward's online softmax: the updated (acc, l_i, m_i). qk_scale > 0 (the launcher moves
    a negative scale's sign onto q), so the row max of the raw scores gives the scaled one and each probability costs
    one FMA and one exp2. MASK_KEYS: the block may hold keys past seqlen or masked out (see _key_range); without it the
    block is read with no mask at all (through the descriptors k_desc, v_desc with TMA). WINDOW_EDGE: the block may
    hold keys outside some row's window."""
    cols = col_start + tl.arange(0, BLOCK_N)
    k = _load_block(k_ptr, k_desc, k_base, col_start, seqlen, k_stride_s, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D,
                    MASK_KEYS, TMA)
    v = _load_block(v_ptr, v_desc, v_base, col_start, seqlen, v_stride_s, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D,
                    MASK_KEYS, TMA)
    pairs: tl.constexpr = DROPOUT and _PTX and v.dtype.primitive_bitwidth == 16
    if pairs:  # drawn before the dots, whose tensor-core time the integer work can fill
        words, sel = _dropout_selectors(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N)
    elif DROPOUT:
        keep = _dropout_keep(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
    if MASK_KEYS:
        allowed = _key_allowed(mask_ptr, b, mask_stride_b, mask_stride_s, cols, seqlen, HAS_MASK)
        if WINDOW_EDGE:
            s = tl.where(allowed[None, :] & _in_window(rows, cols, window), s, float("-inf"))
        else:
            s = tl.where(allowed[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: keep exp2 away from -inf + inf
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s * qk_scale - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if pairs:
        p = _drop_pairs(p.to(v.dtype), words, sel)
    elif DROPOUT:
        p = _drop(p, keep, threshold)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return acc, l_i, m_new


# ---------------------------------------------------------------------------------------------------------------
# Kernels


@triton.autotune(configs=_configs.configs("fwd"), key=_configs.TUNE_KEY, cache_results=True,
                 prune_configs_by={"early_config_prune": _configs.prune("fwd")})
@triton.jit
def _attention_fwd_kernel(
    q_ptr,  # [B, S, H, D] padded or [T, H, D] packed; unit stride on D
    k_ptr,  # like q
    v_ptr,  # like q
    mask_ptr,  # [B, S] key padding mask, nonzero = attend (read only if HAS_MASK)
    cu_seqlens_ptr,  # [B + 1] int32 (read only if PACKED)
    seed_ptr,  # [1] int64 dropout seed (read only if DROPOUT)
    o_ptr,  # like q, contiguous
    lse_ptr,  # fp32 [B, H, S] padded or [H, T] packed, natural log
    q_stride_b, q_stride_s, q_stride_h,  # strides of q (stride_b 0 when packed; stride_s is the token stride)
    k_stride_b, k_stride_s, k_stride_h,  # strides of k
    v_stride_b, v_stride_s, v_stride_h,  # strides of v
    o_stride_b, o_stride_s, o_stride_h,  # strides of o
    mask_stride_b, mask_stride_s,  # strides of the key padding mask
    lse_stride_b, lse_stride_h, lse_stride_s,  # strides of lse (stride_b 0 when packed)
    seqlen_padded,  # S of the padded layout (unused when packed)
    seqlen_bucket,  # next power of two of max_seqlen: autotune key only
    qk_scale,  # softmax_scale * log2(e)
    dropout_p,  # probability of dropping an attention probability
    window,  # query i attends key j only if |i - j| <= window (read only if WINDOW; < the sequence length)
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D (at least 16)
    HAS_MASK: tl.constexpr,
    PACKED: tl.constexpr,
    DROPOUT: tl.constexpr,
    WINDOW: tl.constexpr,  # a local window: each program visits only the key blocks its rows' windows reach
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 dots
    TMA: tl.constexpr,  # 0, or: the unmasked key blocks through tensor descriptors if BLOCK_N >= TMA (sm_90, _tma)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SCAN: tl.constexpr,  # mask entries per step of the key-range scan (HAS_MASK)
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    start, seqlen = _sequence(cu_seqlens_ptr, b, seqlen_padded, PACKED)
    if pid_m * BLOCK_M >= seqlen:
        return
    tl.assume(seqlen > 0)  # else ptxas sees a path with no key block and serialises the wgmma (C7515)
    row_start = pid_m * BLOCK_M
    rows = row_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, b * q_stride_b + start * q_stride_s + h * q_stride_h, rows, seqlen, q_stride_s, offs_d,
                   HEAD_DIM)
    k_base = b * k_stride_b + start * k_stride_s + h * k_stride_h
    v_base = b * v_stride_b + start * v_stride_s + h * v_stride_h
    tma: tl.constexpr = (TMA > 0) & (BLOCK_N >= TMA)
    k_desc = _rows_desc(k_ptr, k_base, seqlen, k_stride_s, HEAD_DIM, BLOCK_N, BLOCK_D, tma)
    v_desc = _rows_desc(v_ptr, v_base, seqlen, v_stride_s, HEAD_DIM, BLOCK_N, BLOCK_D, tma)
    seed = tl.load(seed_ptr) if DROPOUT else 0
    threshold = _dropout_threshold(dropout_p)
    full_end, kv_end = _key_range(mask_ptr, b, mask_stride_b, mask_stride_s, seqlen, HAS_MASK, BLOCK_N, SCAN)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # key blocks: [lo, mid_start) window edge, [mid_start, mid_end) no mask, [mid_end, hi) masked (and window edge);
    # without a window the first loop is empty (constant bounds) and the others are the mask-free and masked parts
    lo, mid_start, mid_end, hi = 0, 0, full_end, kv_end
    if WINDOW:
        lo, mid_start, mid_end, hi = _window_range(row_start, window, full_end, kv_end, BLOCK_M, BLOCK_N)
    for col_start in range(lo, mid_start, BLOCK_N):
        acc, l_i, m_i = _attention_fwd_block(
            acc, l_i, m_i, q, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s, mask_ptr,
            mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d, qk_scale, seed, threshold,
            window, HEAD_DIM, BLOCK_D, HAS_MASK, True, True, DROPOUT, INPUT_PRECISION, tma, BLOCK_M, BLOCK_N)
    for col_start in range(mid_start, mid_end, BLOCK_N):
        acc, l_i, m_i = _attention_fwd_block(
            acc, l_i, m_i, q, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s, mask_ptr,
            mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d, qk_scale, seed, threshold,
            window, HEAD_DIM, BLOCK_D, HAS_MASK, False, False, DROPOUT, INPUT_PRECISION, tma, BLOCK_M, BLOCK_N)
    for col_start in range(mid_end, hi, BLOCK_N):
        acc, l_i, m_i = _attention_fwd_block(
            acc, l_i, m_i, q, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s, mask_ptr,
            mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d, qk_scale, seed, threshold,
            window, HEAD_DIM, BLOCK_D, HAS_MASK, True, WINDOW, DROPOUT, INPUT_PRECISION, tma, BLOCK_M, BLOCK_N)

    empty = l_i == 0.0
    o_scale = 1.0 / tl.where(empty, 1.0, l_i)
    if DROPOUT:
        o_scale = o_scale * (1.0 / (1.0 - dropout_p))  # kept probabilities scaled once per row, not per element
    o = acc * o_scale[:, None]
    o_ptrs = o_ptr + b * o_stride_b + (start + rows[:, None]) * o_stride_s + h * o_stride_h + offs_d[None, :]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    tl.store(lse_ptr + b * lse_stride_b + h * lse_stride_h + (start + rows) * lse_stride_s, lse, mask=rows < seqlen)


@triton.jit
def _attention_bwd_preprocess_kernel(
    o_ptr,  # like q, contiguous
    do_ptr,  # like q, contiguous
    delta_ptr,  # fp32 like lse: rowsum(do * o)
    cu_seqlens_ptr,  # [B + 1] int32 (read only if PACKED)
    o_stride_b, o_stride_s, o_stride_h,  # strides of o and do (both contiguous, same shape)
    lse_stride_b, lse_stride_h, lse_stride_s,  # strides of delta (like lse)
    seqlen_padded,  # S of the padded layout (unused when packed)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    start, seqlen = _sequence(cu_seqlens_ptr, b, seqlen_padded, PACKED)
    if pid_m * BLOCK_M >= seqlen:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    base = b * o_stride_b + start * o_stride_s + h * o_stride_h
    # rows past seqlen read the last row (their delta is not stored): no row mask on the loads (with one, triton 3.6's
    # sm_90a binary of the packed variant kept a 16-byte stack frame)
    rows_in = tl.minimum(rows, seqlen - 1)
    o = _load_full_rows(o_ptr, base, rows_in, o_stride_s, offs_d, HEAD_DIM, BLOCK_D).to(tl.float32)
    do = _load_full_rows(do_ptr, base, rows_in, o_stride_s, offs_d, HEAD_DIM, BLOCK_D).to(tl.float32)
    tl.store(delta_ptr + b * lse_stride_b + h * lse_stride_h + (start + rows) * lse_stride_s, tl.sum(o * do, 1),
             mask=rows < seqlen)


@triton.jit
def _row_stats(lse_ptr, delta_ptr, offs, rows, seqlen):
    """Per query row: lse in base 2 (+inf past seqlen, so its probabilities are 0) and delta = rowsum(do * o)."""
    lse2 = tl.load(lse_ptr + offs, mask=rows < seqlen, other=float("inf")) * 1.4426950408889634
    return lse2, tl.load(delta_ptr + offs, mask=rows < seqlen, other=0.0)


@triton.jit
def _attention_dq_block(dq, q, do, lse2, delta, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s,
                        mask_ptr, mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d,
                        qk_scale, seed, threshold, dropout_p, window, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        HAS_MASK: tl.constexpr, MASK_KEYS: tl.constexpr, WINDOW_EDGE: tl.constexpr,
                        DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """dq += dS K over one key block, with P recomputed from lse (one FMA and one exp2 per probability).
    MASK_KEYS, WINDOW_EDGE, TMA: see _attention_fwd_block."""
    cols = col_start + tl.arange(0, BLOCK_N)
    k = _load_block(k_ptr, k_desc, k_base, col_start, seqlen, k_stride_s, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D,
                    MASK_KEYS, TMA)
    v = _load_block(v_ptr, v_desc, v_base, col_start, seqlen, v_stride_s, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D,
                    MASK_KEYS, TMA)
    p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale - lse2[:, None])
    if MASK_KEYS:
        allowed = _key_allowed(mask_ptr, b, mask_stride_b, mask_stride_s, cols, seqlen, HAS_MASK)
        if WINDOW_EDGE:
            p = tl.where(allowed[None, :] & _in_window(rows, cols, window), p, 0.0)
        else:
            p = tl.where(allowed[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
    if DROPOUT:  # dP of the dropped probabilities, scaled by 1 / (1 - p) in the FMA that subtracts delta
        dp = _drop(dp, _dropout_keep(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N), threshold)
        ds = p * (dp * (1.0 / (1.0 - dropout_p)) - delta[:, None])
    else:
        ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION)


@triton.jit
def _attention_dkdv_block(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, q_base, do_base, lse_base,
                          q_stride_s, o_stride_s, lse_stride_s, b, h, row_start, col_start, seqlen, offs_d, qk_scale,
                          seed, threshold, dropout_p, window, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          MASK_ROWS: tl.constexpr, WINDOW_EDGE: tl.constexpr, DROPOUT: tl.constexpr,
                          INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dv += P^T dO and dk += dS^T Q over one query block (P^T recomputed from lse). MASK_ROWS: the block may hold
    rows past seqlen (read as q = do = 0, lse = +inf, so their probabilities are 0); without it no mask at all.
    WINDOW_EDGE: the block may hold rows outside some key's window (their probabilities are set to 0)."""
    rows = row_start + tl.arange(0, BLOCK_M)
    if MASK_ROWS:
        q = _load_rows(q_ptr, q_base, rows, seqlen, q_stride_s, offs_d, HEAD_DIM)
        do = _load_rows(do_ptr, do_base, rows, seqlen, o_stride_s, offs_d, HEAD_DIM)
        lse2, delta = _row_stats(lse_ptr, delta_ptr, lse_base + rows * lse_stride_s, rows, seqlen)
    else:
        q = _load_full_rows(q_ptr, q_base, rows, q_stride_s, offs_d, HEAD_DIM, BLOCK_D)
        do = _load_full_rows(do_ptr, do_base, rows, o_stride_s, offs_d, HEAD_DIM, BLOCK_D)
        lse2 = tl.load(lse_ptr + lse_base + rows * lse_stride_s) * 1.4426950408889634
        delta = tl.load(delta_ptr + lse_base + rows * lse_stride_s)
    if DROPOUT:  # drawn before the dots, whose tensor-core time the integer work can fill
        keep = tl.trans(_dropout_keep(seed, b, h, row_start, col_start, threshold, BLOCK_M, BLOCK_N))
    pt = tl.exp2(tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale - lse2[None, :])
    if WINDOW_EDGE:
        pt = tl.where(_in_window(col_start + tl.arange(0, BLOCK_N), rows, window), pt, 0.0)
    dpt = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
    if DROPOUT:
        # dP of the dropped probabilities, scaled by 1 / (1 - p) in the same FMA that subtracts delta; P^T kept is
        # scaled once, on dv at the end
        dv += tl.dot(_drop(pt, keep, threshold).to(do.dtype), do, input_precision=INPUT_PRECISION)
        dst = pt * (tl.where(keep, dpt, 0.0) * (1.0 / (1.0 - dropout_p)) - delta[None, :])
    else:
        dv += tl.dot(pt.to(do.dtype), do, input_precision=INPUT_PRECISION)
        dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.autotune(configs=_configs.configs("dkdv"), key=_configs.TUNE_KEY, cache_results=True,
                 prune_configs_by={"early_config_prune": _configs.prune("dkdv")})
@triton.jit
def _attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr,  # like in the forward kernel
    do_ptr,  # like q, contiguous (strides of o)
    lse_ptr,  # fp32 [B, H, S] or [H, T], from the forward kernel
    delta_ptr,  # fp32 like lse, from the preprocess kernel
    mask_ptr, cu_seqlens_ptr, seed_ptr,  # like in the forward kernel
    dk_ptr,  # like k, contiguous (strides of o)
    dv_ptr,  # like v, contiguous (strides of o)
    q_stride_b, q_stride_s, q_stride_h,  # strides of q
    k_stride_b, k_stride_s, k_stride_h,  # strides of k
    v_stride_b, v_stride_s, v_stride_h,  # strides of v
    o_stride_b, o_stride_s, o_stride_h,  # strides of do, dk, dv (contiguous, q's shape)
    mask_stride_b, mask_stride_s,  # strides of the key padding mask
    lse_stride_b, lse_stride_h, lse_stride_s,  # strides of lse and delta
    seqlen_padded, seqlen_bucket, qk_scale, dropout_p,  # like in the forward kernel
    softmax_scale,  # scale of q k^T, applied to dk
    window,  # like in the forward kernel
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr, PACKED: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    WINDOW: tl.constexpr,  # a local window: each program visits only the query blocks its keys' windows reach
    BLOCK_M: tl.constexpr,  # query rows per inner step
    BLOCK_N: tl.constexpr,  # key rows owned by the program
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    start, seqlen = _sequence(cu_seqlens_ptr, b, seqlen_padded, PACKED)
    col_start = pid_n * BLOCK_N
    if col_start >= seqlen:
        return
    tl.assume(seqlen > 0)  # else ptxas sees a path with no query block and serialises the wgmma (C7515)
    cols = col_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr, b * k_stride_b + start * k_stride_s + h * k_stride_h, cols, seqlen, k_stride_s, offs_d,
                   HEAD_DIM)
    v = _load_rows(v_ptr, b * v_stride_b + start * v_stride_s + h * v_stride_h, cols, seqlen, v_stride_s, offs_d,
                   HEAD_DIM)
    allowed = _key_allowed(mask_ptr, b, mask_stride_b, mask_stride_s, cols, seqlen, HAS_MASK)
    q_base = b * q_stride_b + start * q_stride_s + h * q_stride_h
    do_base = b * o_stride_b + start * o_stride_s + h * o_stride_h
    lse_base = b * lse_stride_b + h * lse_stride_h + start * lse_stride_s
    seed = tl.load(seed_ptr) if DROPOUT else 0
    threshold = _dropout_threshold(dropout_p)

    # Transposed orientation: rows are this program's keys, so P^T and dS^T come out of the dots as the A operands
    # of dV += P^T dO and dK += dS^T Q, with no transpose of a register tile between the dots.
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # query blocks: the full ones with no row mask, then the last, partial one; with a window only those its keys
    # reach: [lo, mid_start) window edge, [mid_start, mid_end) no mask, [mid_end, hi) row mask and window edge
    rows_full = seqlen // BLOCK_M * BLOCK_M
    lo, mid_start, mid_end, hi = 0, 0, rows_full, seqlen
    if WINDOW:
        lo, mid_start, mid_end, hi = _window_range(col_start, window, rows_full, seqlen, BLOCK_N, BLOCK_M)
    for row_start in range(lo, mid_start, BLOCK_M):
        dk, dv = _attention_dkdv_block(
            dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, q_base, do_base, lse_base, q_stride_s, o_stride_s,
            lse_stride_s, b, h, row_start, col_start, seqlen, offs_d, qk_scale, seed, threshold, dropout_p, window,
            HEAD_DIM, BLOCK_D, True, True, DROPOUT, INPUT_PRECISION, BLOCK_M, BLOCK_N)
    for row_start in range(mid_start, mid_end, BLOCK_M):
        dk, dv = _attention_dkdv_block(
            dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, q_base, do_base, lse_base, q_stride_s, o_stride_s,
            lse_stride_s, b, h, row_start, col_start, seqlen, offs_d, qk_scale, seed, threshold, dropout_p, window,
            HEAD_DIM, BLOCK_D, False, False, DROPOUT, INPUT_PRECISION, BLOCK_M, BLOCK_N)
    for row_start in range(mid_end, hi, BLOCK_M):
        dk, dv = _attention_dkdv_block(
            dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, q_base, do_base, lse_base, q_stride_s, o_stride_s,
            lse_stride_s, b, h, row_start, col_start, seqlen, offs_d, qk_scale, seed, threshold, dropout_p, window,
            HEAD_DIM, BLOCK_D, True, WINDOW, DROPOUT, INPUT_PRECISION, BLOCK_M, BLOCK_N)

    # rows of masked keys: zeroed here, once (each row of dk, dv depends only on its own key's row of P^T)
    out_ptrs = b * o_stride_b + (start + cols[:, None]) * o_stride_s + h * o_stride_h + offs_d[None, :]
    out_mask = (cols[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM)
    dk = tl.where(allowed[:, None], dk * softmax_scale, 0.0)
    tl.store(dk_ptr + out_ptrs, dk.to(dk_ptr.dtype.element_ty), mask=out_mask)
    dv = tl.where(allowed[:, None], dv, 0.0)
    if DROPOUT:
        dv = dv * (1.0 / (1.0 - dropout_p))
    tl.store(dv_ptr + out_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=out_mask)


@triton.autotune(configs=_configs.configs("dq"), key=_configs.TUNE_KEY, cache_results=True,
                 prune_configs_by={"early_config_prune": _configs.prune("dq")})
@triton.jit
def _attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr,  # like in the forward kernel
    do_ptr,  # like q, contiguous (strides of o)
    lse_ptr,  # fp32 [B, H, S] or [H, T], from the forward kernel
    delta_ptr,  # fp32 like lse, from the preprocess kernel
    mask_ptr, cu_seqlens_ptr, seed_ptr,  # like in the forward kernel
    dq_ptr,  # like q, contiguous (strides of o)
    q_stride_b, q_stride_s, q_stride_h,  # strides of q
    k_stride_b, k_stride_s, k_stride_h,  # strides of k
    v_stride_b, v_stride_s, v_stride_h,  # strides of v
    o_stride_b, o_stride_s, o_stride_h,  # strides of do and dq (contiguous, q's shape)
    mask_stride_b, mask_stride_s,  # strides of the key padding mask
    lse_stride_b, lse_stride_h, lse_stride_s,  # strides of lse and delta
    seqlen_padded, seqlen_bucket, qk_scale, dropout_p,  # like in the forward kernel
    softmax_scale,  # scale of q k^T, applied to dq
    window,  # like in the forward kernel
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr, PACKED: tl.constexpr,
    DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    WINDOW: tl.constexpr,  # like in the forward kernel
    TMA: tl.constexpr,  # like in the forward kernel
    BLOCK_M: tl.constexpr,  # query rows owned by the program
    BLOCK_N: tl.constexpr,  # key rows per inner step
    SCAN: tl.constexpr,  # mask entries per step of the key-range scan (HAS_MASK)
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    start, seqlen = _sequence(cu_seqlens_ptr, b, seqlen_padded, PACKED)
    if pid_m * BLOCK_M >= seqlen:
        return
    tl.assume(seqlen > 0)  # else ptxas sees a path with no key block and serialises the wgmma (C7515)
    row_start = pid_m * BLOCK_M
    rows = row_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, b * q_stride_b + start * q_stride_s + h * q_stride_h, rows, seqlen, q_stride_s, offs_d,
                   HEAD_DIM)
    do_base = b * o_stride_b + start * o_stride_s + h * o_stride_h
    do = _load_rows(do_ptr, do_base, rows, seqlen, o_stride_s, offs_d, HEAD_DIM)
    lse_offs = b * lse_stride_b + h * lse_stride_h + (start + rows) * lse_stride_s
    lse2, delta = _row_stats(lse_ptr, delta_ptr, lse_offs, rows, seqlen)
    k_base = b * k_stride_b + start * k_stride_s + h * k_stride_h
    v_base = b * v_stride_b + start * v_stride_s + h * v_stride_h
    tma: tl.constexpr = (TMA > 0) & (BLOCK_N >= TMA)
    k_desc = _rows_desc(k_ptr, k_base, seqlen, k_stride_s, HEAD_DIM, BLOCK_N, BLOCK_D, tma)
    v_desc = _rows_desc(v_ptr, v_base, seqlen, v_stride_s, HEAD_DIM, BLOCK_N, BLOCK_D, tma)
    seed = tl.load(seed_ptr) if DROPOUT else 0
    threshold = _dropout_threshold(dropout_p)

    full_end, kv_end = _key_range(mask_ptr, b, mask_stride_b, mask_stride_s, seqlen, HAS_MASK, BLOCK_N, SCAN)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # key blocks as in the forward kernel
    lo, mid_start, mid_end, hi = 0, 0, full_end, kv_end
    if WINDOW:
        lo, mid_start, mid_end, hi = _window_range(row_start, window, full_end, kv_end, BLOCK_M, BLOCK_N)
    for col_start in range(lo, mid_start, BLOCK_N):
        dq = _attention_dq_block(
            dq, q, do, lse2, delta, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s, mask_ptr,
            mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d, qk_scale, seed, threshold,
            dropout_p, window, HEAD_DIM, BLOCK_D, HAS_MASK, True, True, DROPOUT, INPUT_PRECISION, tma, BLOCK_M,
            BLOCK_N)
    for col_start in range(mid_start, mid_end, BLOCK_N):
        dq = _attention_dq_block(
            dq, q, do, lse2, delta, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s, mask_ptr,
            mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d, qk_scale, seed, threshold,
            dropout_p, window, HEAD_DIM, BLOCK_D, HAS_MASK, False, False, DROPOUT, INPUT_PRECISION, tma, BLOCK_M,
            BLOCK_N)
    for col_start in range(mid_end, hi, BLOCK_N):
        dq = _attention_dq_block(
            dq, q, do, lse2, delta, k_ptr, v_ptr, k_desc, v_desc, k_base, v_base, k_stride_s, v_stride_s, mask_ptr,
            mask_stride_b, mask_stride_s, b, h, row_start, rows, col_start, seqlen, offs_d, qk_scale, seed, threshold,
            dropout_p, window, HEAD_DIM, BLOCK_D, HAS_MASK, True, WINDOW, DROPOUT, INPUT_PRECISION, tma, BLOCK_M,
            BLOCK_N)

    dq_ptrs = dq_ptr + b * o_stride_b + (start + rows[:, None]) * o_stride_s + h * o_stride_h + offs_d[None, :]
    tl.store(dq_ptrs, (dq * softmax_scale).to(dq_ptr.dtype.element_ty),
             mask=(rows[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _attention_dropout_mask_kernel(
    seed_ptr,  # [1] int64
    out_ptr,  # [B, H, S, S] uint8 keep-mask, contiguous
    num_heads,  # H
    seqlen,  # S
    dropout_p,  # drop probability
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    b = bh // num_heads
    h = bh % num_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(tl.load(seed_ptr), b, h, pid_m * BLOCK_M, pid_n * BLOCK_N, _dropout_threshold(dropout_p),
                         BLOCK_M, BLOCK_N)
    ptrs = out_ptr + (bh * seqlen + rows[:, None]) * seqlen + cols[None, :]
    tl.store(ptrs, keep.to(tl.uint8), mask=(rows[:, None] < seqlen) & (cols[None, :] < seqlen))


# ---------------------------------------------------------------------------------------------------------------
# Launchers


def _block_d(head_dim: int) -> int:
    return max(16, next_pow2(head_dim))


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not interpreter_on() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _scan() -> int:
    """SCAN of the forward and dq kernels: small under the interpreter, so its tiny tests take several scan steps."""
    return 16 if interpreter_on() else 512


def _strides(t: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(batch, token, head) strides of a [B, S, H, D] or [T, H, D] tensor; batch stride 0 when packed."""
    return (0, t.stride(0), t.stride(1)) if packed else (t.stride(0), t.stride(1), t.stride(2))


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _tma_device() -> bool:
    """Whether the kernels run on a GPU with TMA (compute capability 9.0 on): never under the interpreter (its
    tests force the TMA variants on by replacing this function)."""
    return not interpreter_on() and _configs.arch() >= 90


def _describable(t: torch.Tensor) -> bool:
    """Whether a tensor descriptor reads every head of every sequence of `t` ([B, S, H, D] or [T, H, D], unit last
    stride) exactly: TMA needs a 16-byte aligned base and strides, and each program's base adds batch, token and head
    strides to the data pointer; rows of a multiple of 16 bytes (so at least 16)."""
    e = t.element_size()
    return t.data_ptr() % 16 == 0 and all(s * e % 16 == 0 for s in t.stride()[:-1]) and t.shape[-1] * e % 16 == 0


# The kernels whose unmasked key blocks go through tensor descriptors on sm_90 (TMA): kernel -> (the smallest key block
# that does, the first triton release that does); never with a local window. Kept where no main loop of the sm_90a
# report got longer (benchmarks/results/2026-12-07-sm90a-tma/): the forward's 32-key tiles and the dq kernel under
# triton 3.6 got longer loops with TMA (its barrier instructions cost about what the loads save), and so did dk/dv's
# query loop on both releases (its q, do tiles are a few of its loads: the per-row lse and delta take most), which
# has none; with a window, triton 3.6 serialised the wgmma of the d128 forward (C7515).
TMA_KERNELS: dict[str, tuple[int, tuple[int, int]]] = {"fwd": (64, (3, 6)), "dq": (16, (3, 9))}


def _tma(kernel: str, window: bool, *tensors: torch.Tensor) -> int:
    """The TMA constexpr of `kernel` reading `tensors` (0: pointer loads): TMA_KERNELS' smallest key block on a TMA
    GPU under a release it lists, without a local window, for fp16 / bf16 (what the sm_90a report measures), every
    tensor describable, and triton's scratch allocator available (set here to torch's caching allocator unless the
    caller set one: each program writes its descriptors to global scratch)."""
    policy = TMA_KERNELS.get(kernel)
    if policy is None or ti.release() < policy[1] or window or tensors[0].dtype not in (torch.float16, torch.bfloat16):
        return 0
    if not _tma_device() or not all(_describable(t) for t in tensors):
        return 0
    if interpreter_on():
        return policy[0]
    if ti.unavailable_reason(ti.TMA):
        return 0
    unset = ti.get("triton.runtime._allocation.NullAllocator")
    if isinstance(ti.get("triton.runtime._allocation._allocator").get(), unset):
        triton.set_allocator(_scratch)
    return policy[0]


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Triton's global scratch for one launch (the allocator of triton.set_allocator): torch's caching allocator on
    the current device (its blocks are 512-byte aligned)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


class _Layout:
    """Grid and the scalar kernel arguments shared by every attention kernel of one call."""

    def __init__(self, q: torch.Tensor, key_padding_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 max_seqlen: int, window: int):
        self.packed = cu_seqlens is not None
        if self.packed:
            self.batch, self.seqlen = cu_seqlens.shape[0] - 1, int(max_seqlen)
            self.heads, self.head_dim = q.shape[1], q.shape[2]
        else:
            self.batch, self.seqlen, self.heads, self.head_dim = q.shape
        if self.batch > _MAX_GRID_YZ:
            raise ValueError(f"attention kernels take at most {_MAX_GRID_YZ} sequences per call, got {self.batch}")
        self.cu_seqlens = cu_seqlens if self.packed else q
        mask = key_padding_mask
        if mask is not None and mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
        self.mask = mask if mask is not None else q
        self.mask_strides = (mask.stride(0), mask.stride(1)) if mask is not None else (0, 0)
        self.lse_shape = (self.heads, q.shape[0]) if self.packed else (self.batch, self.heads, self.seqlen)
        self.bucket, self.dtype = next_pow2(self.seqlen), q.dtype
        if not isinstance(window, int) or window < -1:
            raise ValueError(f"window must be an int >= 0, or -1 for none, got {window!r}")
        # a window of seqlen - 1 or more masks nothing: such calls run the kernels without one (and nothing overflows)
        self.window = window if 0 <= window < self.seqlen - 1 else 0
        self.consts = dict(HEAD_DIM=self.head_dim, BLOCK_D=_block_d(self.head_dim), HAS_MASK=mask is not None,
                           PACKED=self.packed, INPUT_PRECISION=_input_precision(q.dtype),
                           WINDOW=0 <= window < self.seqlen - 1)

    def lse_strides(self, lse: torch.Tensor) -> tuple[int, int, int]:
        return (0, lse.stride(0), lse.stride(1)) if self.packed else (lse.stride(0), lse.stride(1), lse.stride(2))

    def tuning_key(self, dropout_p: float, tma: int = 0) -> tuple:
        """What decides the autotuners' keys (TUNE_KEY and the arguments' dtypes): see _configs.launch."""
        return (self.bucket, self.dtype, dropout_p > 0, tma, *self.consts.values())

    def grid(self, block: str):
        return lambda meta: (cdiv(self.seqlen, meta[block]), self.batch, self.heads)


def _check_seed(dropout_p: float, seed: torch.Tensor | None) -> None:
    if dropout_p > 0 and (seed is None or seed.numel() != 1 or seed.dtype != torch.int64):
        raise ValueError(f"seed must be an int64 tensor of shape [1] when dropout_p > 0, got {seed!r}")


def _fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    softmax_scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    window: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: (o like q contiguous, lse fp32 [B, H, S] padded or [H, T] packed). See the module doc."""
    _check_seed(dropout_p, seed)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    if softmax_scale < 0:  # the kernel takes the row max of raw scores, so it needs scale > 0: the sign goes on q
        q, softmax_scale = -q, -softmax_scale
    lay = _Layout(q, key_padding_mask, cu_seqlens, max_seqlen, window)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lay.lse_shape, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return o, lse
    tma = _tma("fwd", lay.consts["WINDOW"], k, v)
    _configs.launch(
        _attention_fwd_kernel, lay.grid("BLOCK_M"), lay.tuning_key(dropout_p, tma),
        q, k, v, lay.mask, lay.cu_seqlens, seed if dropout_p > 0 else q, o, lse,
        *_strides(q, lay.packed), *_strides(k, lay.packed), *_strides(v, lay.packed), *_strides(o, lay.packed),
        *lay.mask_strides, *lay.lse_strides(lse),
        lay.seqlen, lay.bucket, softmax_scale * _LOG2E, dropout_p, lay.window,
        DROPOUT=dropout_p > 0, TMA=tma, SCAN=_scan(), **lay.consts,
    )
    return o, lse


def _bwd_impl(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    softmax_scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    window: int = -1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: (dq, dk, dv), contiguous, shaped like q, k, v. Deterministic (no atomics)."""
    _check_seed(dropout_p, seed)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    do, o = do.contiguous(), o.contiguous()
    lay = _Layout(q, key_padding_mask, cu_seqlens, max_seqlen, window)
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    if q.numel() == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    o_strides, lse_strides = _strides(o, lay.packed), lay.lse_strides(lse)
    preprocess_block = 16 if interpreter_on() else 64
    launch(
        _attention_bwd_preprocess_kernel, (cdiv(lay.seqlen, preprocess_block), lay.batch, lay.heads),
        o, do, delta, lay.cu_seqlens, *o_strides, *lse_strides, lay.seqlen,
        HEAD_DIM=lay.head_dim, BLOCK_D=lay.consts["BLOCK_D"], PACKED=lay.packed, BLOCK_M=preprocess_block,
    )
    common = (
        *_strides(q, lay.packed), *_strides(k, lay.packed), *_strides(v, lay.packed), *o_strides,
        *lay.mask_strides, *lse_strides,
        lay.seqlen, lay.bucket, softmax_scale * _LOG2E, dropout_p, softmax_scale, lay.window,
    )
    seed_arg = seed if dropout_p > 0 else q
    _configs.launch(
        _attention_bwd_dkdv_kernel, lay.grid("BLOCK_N"), lay.tuning_key(dropout_p),
        q, k, v, do, lse, delta, lay.mask, lay.cu_seqlens, seed_arg, dk, dv, *common,
        DROPOUT=dropout_p > 0, **lay.consts,
    )
    tma = _tma("dq", lay.consts["WINDOW"], k, v)
    _configs.launch(
        _attention_bwd_dq_kernel, lay.grid("BLOCK_M"), lay.tuning_key(dropout_p, tma),
        q, k, v, do, lse, delta, lay.mask, lay.cu_seqlens, seed_arg, dq, *common,
        DROPOUT=dropout_p > 0, TMA=tma, SCAN=_scan(), **lay.consts,
    )
    return dq, dk, dv


# The launchers (contract: fastenc/ops/attention.py): custom ops while torch.compile traces, direct calls otherwise.
attention_fwd = register("attention_fwd", _fwd_impl, fakes.attention_fwd)
attention_bwd = register("attention_bwd", _bwd_impl, fakes.attention_bwd)


def attention_dropout_mask(seed: torch.Tensor, batch: int, heads: int, seqlen: int, dropout_p: float) -> torch.Tensor:
    """The keep-mask the kernels apply for `seed`: bool [batch, heads, seqlen, seqlen], True = kept.

    Coordinates are per sequence (query i, key j of sequence b) for both layouts; for the packed layout pass
    seqlen = max_seqlen. Feed it to attention_ref(..., dropout_mask=mask) to replay the kernel's dropout."""
    _check_seed(max(dropout_p, 1e-9), seed)
    out = torch.empty(batch, heads, seqlen, seqlen, dtype=torch.uint8, device=seed.device)
    block = 32 if interpreter_on() else 64
    grid = (cdiv(seqlen, block), cdiv(seqlen, block), batch * heads)
    launch(_attention_dropout_mask_kernel, grid, seed, out, heads, seqlen, dropout_p, BLOCK_M=block, BLOCK_N=block)
    return out.bool()


SUPPORT = {
    "attention": dict(devices=("cuda", "cpu"), dtypes=FLOAT_DTYPES, max_head_dim=MAX_HEAD_DIM,
                      layouts=("padded", "packed"), features=("window",)),
}


def not_supported_reasons(op: str, call) -> list[str]:
    """What SUPPORT cannot declare ([] = none): launch_reasons, and the grid limits."""
    q = call.tensors["q"]
    out = launch_reasons(op, call)
    if q.shape[-2] > _MAX_GRID_YZ:
        out.append(f"{q.shape[-2]} heads > {_MAX_GRID_YZ} (grid limit)")
    if q.dim() == 4 and q.shape[0] > _MAX_GRID_YZ:
        out.append(f"batch {q.shape[0]} > {_MAX_GRID_YZ} (grid limit)")
    return out
