"""Triton embeddings: y = dropout(LayerNorm(word[ids] + token_type[tt_ids] + position[pos_ids])), fwd and bwd.

Forward: one program per token gathers its three table rows, sums them in fp32, normalises and applies dropout to
the normalised row, so the [N, E] sum is never written. Ids are clamped into their table before the gather, so a
bad id can never read out of bounds (the op checks ids in eager mode and raises a clear error first).

Backward: a fixed number of programs loop over tokens; each regathers the row, rebuilds xhat from the saved mean /
rstd, regenerates the dropout mask, and scatters the row gradient into fp32 copies of the word and position tables
with atomic adds (repeated ids accumulate; rows at a padding index are skipped). A token type table of at most 4
rows, which every token hits, is summed per program in registers instead (larger ones use atomics too). Atomics
make those table gradients non-deterministic in the last bits (the summation order varies between runs), in
exchange for no sort and no [N, E] gradient buffer. dweight, dbias and the small token type gradient are
per-program fp32 partial sums reduced by torch: deterministic. Without a position table (rotary models) or a
LayerNorm bias, constexpr flags drop that gather, its scatter and the dbias sums from the compiled kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastenc.kernels import _fakes as fakes
from fastenc.kernels._common import (
    dropout_keep,
    dropout_scale,
    dummy,
    launch_reasons,
    next_pow2,
    partials,
    reduce_programs,
    reduce_warps,
    register,
    row_block,
    row_layer_norm_bwd,
    row_stats,
    row_support,
    row_warps,
    sum_partials,
)
from fastenc.kernels._launch import launch

_MAX_TT_REGS = 4


@triton.jit
def _gather_row(ids_ptr, word_ptr, pos_ids_ptr, pos_ptr, tt_ids_ptr, tt_ptr, row, cols, mask,
                word_stride, pos_stride, tt_stride, V, P, T, HAS_TT: tl.constexpr, HAS_POS: tl.constexpr):
    """(clamped word id, position id, token type id, fp32 sum of the table rows) for token `row`; absent tables
    give id 0 and add nothing."""
    wid = tl.minimum(tl.maximum(tl.load(ids_ptr + row), 0), V - 1)
    h = tl.load(word_ptr + wid * word_stride + cols, mask=mask, other=0.0).to(tl.float32)
    pid = wid * 0
    if HAS_POS:
        pid = tl.minimum(tl.maximum(tl.load(pos_ids_ptr + row), 0), P - 1)
        h += tl.load(pos_ptr + pid * pos_stride + cols, mask=mask, other=0.0).to(tl.float32)
    tid = wid * 0
    if HAS_TT:
        tid = tl.minimum(tl.maximum(tl.load(tt_ids_ptr + row), 0), T - 1)
        h += tl.load(tt_ptr + tid * tt_stride + cols, mask=mask, other=0.0).to(tl.float32)
    return wid, pid, tid, h


@triton.jit
def _embeddings_fwd_kernel(
    ids_ptr,  # [N] int64 word ids
    pos_ids_ptr,  # [N] int64 position ids, or None
    tt_ids_ptr,  # [N] int64 token type ids, or None
    word_ptr,  # [V, E] word table, row stride word_stride
    pos_ptr,  # [P, E] position table, row stride pos_stride, or None
    tt_ptr,  # [T, E] token type table, row stride tt_stride, or None
    w_ptr,  # [E] LayerNorm weight
    b_ptr,  # [E] LayerNorm bias, or None (bias-free LayerNorm)
    y_ptr,  # [N, E] output, contiguous
    mean_ptr,  # [N] fp32 row means
    rstd_ptr,  # [N] fp32 row 1/std
    seed_ptr,  # [1] int64 dropout seed, or None
    word_stride,  # row stride of the word table
    pos_stride,  # row stride of the position table
    tt_stride,  # row stride of the token type table
    V,  # word table rows
    P,  # position table rows
    T,  # token type table rows
    E,  # embedding size
    eps,  # LayerNorm epsilon
    p,  # dropout probability
    HAS_TT: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    # last, with defaults: the flags above may be passed by position
    HAS_POS: tl.constexpr = True,  # position table given
    HAS_B: tl.constexpr = True,  # LayerNorm bias given
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    mask = cols < E
    _, _, _, h = _gather_row(ids_ptr, word_ptr, pos_ids_ptr, pos_ptr, tt_ids_ptr, tt_ptr, row, cols, mask,
                             word_stride, pos_stride, tt_stride, V, P, T, HAS_TT, HAS_POS)
    mean, rstd = row_stats(h, mask, E, eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = (h - mean) * rstd * w
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        keep = dropout_keep(seed_ptr, row, p, BLOCK_E)
        y = tl.where(keep, y * dropout_scale(p), 0.0)
    tl.store(y_ptr + row * E + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _embeddings_bwd_kernel(
    dy_ptr,  # [N, E] gradient of y, contiguous
    ids_ptr,  # [N] int64 word ids
    pos_ids_ptr,  # [N] int64 position ids, or None
    tt_ids_ptr,  # [N] int64 token type ids, or None
    word_ptr,  # [V, E] word table, row stride word_stride
    pos_ptr,  # [P, E] position table, row stride pos_stride, or None
    tt_ptr,  # [T, E] token type table, row stride tt_stride, or None
    w_ptr,  # [E] LayerNorm weight
    mean_ptr,  # [N] fp32
    rstd_ptr,  # [N] fp32
    seed_ptr,  # [1] int64 dropout seed, or None
    dword_ptr,  # [V, E] fp32 out (zero-filled): word table gradient, accumulated atomically
    dpos_ptr,  # [P, E] fp32 out (zero-filled): position table gradient, or None
    dtt_ptr,  # fp32 out, token type table gradient: [programs, TT_REGS, E] per-program partial sums
    #           if TT_REGS, else [T, E] accumulated atomically; None without token types
    dw_part_ptr,  # [programs, E] fp32 out: per-program partial sums of dweight
    db_part_ptr,  # [programs, E] fp32 out: per-program partial sums of dbias, or None (no bias)
    word_stride,  # row stride of the word table
    pos_stride,  # row stride of the position table
    tt_stride,  # row stride of the token type table
    N,  # tokens
    V,  # word table rows
    P,  # position table rows
    T,  # token type table rows
    E,  # embedding size
    p,  # dropout probability
    word_pad,  # word padding index (no gradient), -1 for none
    pos_pad,  # position padding index (no gradient), -1 for none
    HAS_TT: tl.constexpr,
    TT_REGS: tl.constexpr,  # rows of a small token type table (a power of two >= T) summed in registers, or 0
    HAS_DROPOUT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    # last, with defaults: the flags above may be passed by position
    HAS_POS: tl.constexpr = True,  # position table given
    HAS_B: tl.constexpr = True,  # LayerNorm bias given
):
    prog = tl.program_id(0)
    cols = tl.arange(0, BLOCK_E)
    mask = cols < E
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    if TT_REGS:
        tt_rows = tl.arange(0, TT_REGS)
        tt_acc = tl.zeros([TT_REGS, BLOCK_E], dtype=tl.float32)
    for row in tl.range(prog.to(tl.int64), N, tl.num_programs(0), num_stages=3):  # next rows' loads in flight
        wid, pid, tid, h = _gather_row(ids_ptr, word_ptr, pos_ids_ptr, pos_ptr, tt_ids_ptr, tt_ptr, row, cols,
                                       mask, word_stride, pos_stride, tt_stride, V, P, T, HAS_TT, HAS_POS)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(mask, (h - tl.load(mean_ptr + row)) * rstd, 0.0)
        dy = tl.load(dy_ptr + row * E + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            keep = dropout_keep(seed_ptr, row, p, BLOCK_E)
            dy = tl.where(keep, dy * dropout_scale(p), 0.0)
        dh = row_layer_norm_bwd(dy, xhat, w, rstd, mask, E)
        dw_acc += dy * xhat
        if HAS_B:
            db_acc += dy
        # the ids are broadcast to the row before comparing: the interpreter rejects a scalar-derived atomic mask
        word_ok = (tl.zeros_like(cols) + wid) != word_pad
        tl.atomic_add(dword_ptr + wid * E + cols, dh, mask=mask & word_ok, sem="relaxed")
        if HAS_POS:
            pos_ok = (tl.zeros_like(cols) + pid) != pos_pad
            tl.atomic_add(dpos_ptr + pid * E + cols, dh, mask=mask & pos_ok, sem="relaxed")
        if TT_REGS:
            tt_acc += tl.where(tt_rows[:, None] == tid, dh[None, :], 0.0)
        elif HAS_TT:
            tl.atomic_add(dtt_ptr + tid * E + cols, dh, mask=mask, sem="relaxed")
    tl.store(dw_part_ptr + prog * E + cols, dw_acc, mask=mask)
    if HAS_B:
        tl.store(db_part_ptr + prog * E + cols, db_acc, mask=mask)
    if TT_REGS:
        tl.store(dtt_ptr + (prog * TT_REGS + tt_rows[:, None]) * E + cols[None, :], tt_acc, mask=mask[None, :])


def _check_inputs(ids, pos_ids, tt_ids, word, pos, tt, weight) -> None:
    if (pos_ids is None) != (pos is None):
        raise ValueError("position_ids and position_embeddings must be given together")
    n = ids.shape[0]
    for name, t in (("input_ids", ids), ("position_ids", pos_ids), ("token_type_ids", tt_ids)):
        if t is not None and (t.dtype != torch.int64 or t.dim() != 1 or t.shape[0] != n or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous int64 [{n}] tensor, got {t.dtype} {tuple(t.shape)}")
    if (tt_ids is None) != (tt is None):
        raise ValueError("token_type_ids and token_type_embeddings must be given together")
    e = word.shape[1]
    for name, t in (("word_embeddings", word), ("position_embeddings", pos), ("token_type_embeddings", tt)):
        if t is not None and (t.dim() != 2 or t.shape[1] != e or t.stride(1) != 1 or t.shape[0] == 0):
            raise ValueError(f"{name} must be a non-empty [rows, {e}] table with unit last stride, got "
                             f"{tuple(t.shape)}")
        if t is not None and t.dtype != word.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected {word.dtype} like word_embeddings")
    if weight.shape != (e,):
        raise ValueError(f"weight must have shape [{e}], got {tuple(weight.shape)}")


def _fwd_impl(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    word: torch.Tensor,
    position: torch.Tensor | None,
    token_type: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_inputs(input_ids, position_ids, token_type_ids, word, position, token_type, weight)
    has_dropout = dropout_p > 0
    if has_dropout and seed is None:
        raise ValueError("seed must be given when dropout_p > 0")
    n, e = input_ids.shape[0], word.shape[1]
    block = row_block(e, "the embedding size")
    y = torch.empty(n, e, device=word.device, dtype=word.dtype)
    mean = torch.empty(n, device=word.device, dtype=torch.float32)
    rstd = torch.empty(n, device=word.device, dtype=torch.float32)
    has_tt, has_pos = token_type is not None, position is not None
    if n:
        launch(
            _embeddings_fwd_kernel, (n,),
            input_ids, position_ids, token_type_ids, word, position, token_type, weight, bias, y, mean, rstd,
            seed if has_dropout else None, word.stride(0), position.stride(0) if has_pos else 0,
            token_type.stride(0) if has_tt else 0, word.shape[0], position.shape[0] if has_pos else 1,
            token_type.shape[0] if has_tt else 1, e, eps, dropout_p,
            HAS_TT=has_tt, HAS_DROPOUT=has_dropout, BLOCK_E=block, HAS_POS=has_pos, HAS_B=bias is not None,
            num_warps=row_warps(block),
        )
    return y, mean, rstd


def _bwd_impl(
    dy: torch.Tensor,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    word: torch.Tensor,
    position: torch.Tensor | None,
    token_type: torch.Tensor | None,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dropout_p: float,
    seed: torch.Tensor | None,
    word_padding_idx: int,
    position_padding_idx: int,
    has_bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_inputs(input_ids, position_ids, token_type_ids, word, position, token_type, weight)
    n, e = input_ids.shape[0], word.shape[1]
    if not dy.is_contiguous() or dy.shape != (n, e):
        raise ValueError(f"dy must be a contiguous [{n}, {e}] tensor, got {tuple(dy.shape)}")
    has_dropout = dropout_p > 0
    if has_dropout and seed is None:
        raise ValueError("seed must be given when dropout_p > 0")
    has_tt, has_pos = token_type is not None, position is not None
    block = row_block(e, "the embedding size")
    warps = reduce_warps(block)
    progs = reduce_programs(word.device, n, warps, regs=128)
    f32 = dict(device=word.device, dtype=torch.float32)
    dword = torch.zeros(word.shape, **f32)
    dpos = torch.zeros(position.shape, **f32) if has_pos else None
    # a small token type table (BERT's has 2 rows) is hit by every token: summing it per program in registers
    # avoids N-way atomic contention on its few rows
    tt_regs = next_pow2(token_type.shape[0]) if has_tt and token_type.shape[0] <= _MAX_TT_REGS else 0
    if tt_regs:
        dtt = partials(progs, tt_regs, e, rows=n, device=word.device)
    else:
        dtt = torch.zeros(token_type.shape, **f32) if has_tt else None
    parts = partials(1 + has_bias, progs, e, rows=n, device=word.device)
    if n:
        launch(
            _embeddings_bwd_kernel, (progs,),
            dy, input_ids, position_ids, token_type_ids, word, position, token_type, weight, mean, rstd,
            seed if has_dropout else None, dword, dpos, dtt, parts[0], parts[1] if has_bias else None,
            word.stride(0), position.stride(0) if has_pos else 0, token_type.stride(0) if has_tt else 0,
            n, word.shape[0], position.shape[0] if has_pos else 1, token_type.shape[0] if has_tt else 1, e,
            dropout_p, word_padding_idx, position_padding_idx,
            HAS_TT=has_tt, TT_REGS=tt_regs, HAS_DROPOUT=has_dropout, BLOCK_E=block, HAS_POS=has_pos,
            HAS_B=has_bias, num_warps=warps,
        )
    dweight, *dbias = sum_partials(parts, weight.dtype, weight.dtype)
    dbias = dbias[0] if has_bias else None
    if tt_regs:
        dtt = dtt.sum(dim=0)[: token_type.shape[0]]
    dtt = dtt.to(word.dtype) if has_tt else None
    dpos = dpos.to(word.dtype) if has_pos else None
    return dword.to(word.dtype), dummy(dpos, word), dummy(dtt, word), dweight, dummy(dbias, word)


# The launchers (contract: fastenc/ops/embeddings.py); absent outputs come back as empty tensors.
embeddings_fwd = register("embeddings_fwd", _fwd_impl, fakes.embeddings_fwd)
embeddings_bwd = register("embeddings_bwd", _bwd_impl, fakes.embeddings_bwd)
SUPPORT = row_support("embeddings")
not_supported_reasons = launch_reasons  # the backend's hook (fastenc.backends): what SUPPORT cannot say
