"""Triton add_layer_norm: y = LayerNorm(dropout(x + x_bias) + residual), forward and backward.

Forward: one program per row, the row in registers; h (the LayerNorm input) is written only when backward or the
caller (return_sum) needs it.
Backward: a fixed number of programs (a few per SM) each loop over rows, write dh and dx, and keep fp32 partial
sums of dweight, dbias and dx_bias in registers; torch sums the [programs, D] partials. At BERT sizes (hidden 256
to 1024) this reads dy and h once and touches each partial once per program instead of once per row, and needs no
atomics, so the reduction is deterministic. The dropout mask is regenerated from the seed (see _common). The
pre-LN step's gradient of the returned h is added to dh in the same pass; a bias-free LayerNorm compiles without the
bias load and the dbias sums.
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


@triton.jit
def _add_layer_norm_fwd_kernel(
    x_ptr,  # [N, D] input (a matmul output without its bias), row stride x_stride
    res_ptr,  # [N, D] residual, row stride res_stride, or None
    xb_ptr,  # [D] bias added to x, or None
    w_ptr,  # [D] LayerNorm weight
    b_ptr,  # [D] LayerNorm bias, or None (bias-free LayerNorm)
    y_ptr,  # [N, D] output, contiguous
    h_ptr,  # [N, D] LayerNorm input saved for backward (contiguous), or None
    mean_ptr,  # [N] fp32 row means
    rstd_ptr,  # [N] fp32 row 1/std
    seed_ptr,  # [1] int64 dropout seed, or None
    x_stride,  # row stride of x
    res_stride,  # row stride of residual
    D,  # hidden size
    eps,  # LayerNorm epsilon
    p,  # dropout probability
    HAS_RES: tl.constexpr,
    HAS_XB: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    STORE_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    # last, with a default: the flags above may be passed by position
    HAS_B: tl.constexpr = True,  # LayerNorm bias given
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    h = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_XB:
        h += tl.load(xb_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        keep = dropout_keep(seed_ptr, row, p, BLOCK_D)
        h = tl.where(keep, h * dropout_scale(p), 0.0)
    if HAS_RES:
        h += tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if STORE_H:
        tl.store(h_ptr + row * D + cols, h.to(h_ptr.dtype.element_ty), mask=mask)
    mean, rstd = row_stats(h, mask, D, eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = (h - mean) * rstd * w
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _add_layer_norm_bwd_kernel(
    dy_ptr,  # [N, D] gradient of y, contiguous
    h_ptr,  # [N, D] saved LayerNorm input, contiguous
    w_ptr,  # [D] LayerNorm weight
    mean_ptr,  # [N] fp32
    rstd_ptr,  # [N] fp32
    seed_ptr,  # [1] int64 dropout seed, or None
    dhx_ptr,  # [N, D] gradient of the returned h, added to dh (contiguous), or None
    dh_ptr,  # [N, D] out: gradient of h (the residual's gradient)
    dx_ptr,  # [N, D] out: gradient of x (dropout backward of dh), or None without dropout
    dw_part_ptr,  # [P, D] fp32 out: per-program partial sums of dweight
    db_part_ptr,  # [P, D] fp32 out: per-program partial sums of dbias, or None (no bias)
    dxb_part_ptr,  # [P, D] fp32 out: per-program partial sums of dx_bias, or None
    N,  # rows
    D,  # hidden size
    p,  # dropout probability
    HAS_DROPOUT: tl.constexpr,
    HAS_XB: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_DHX: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dxb_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for row in tl.range(pid.to(tl.int64), N, num_progs, num_stages=3):  # loads of the next rows in flight
        dy = tl.load(dy_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(mask, (h - mean) * rstd, 0.0)
        dh = row_layer_norm_bwd(dy, xhat, w, rstd, mask, D)
        if HAS_DHX:
            dh += tl.load(dhx_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dh_ptr + row * D + cols, dh.to(dh_ptr.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        if HAS_B:
            db_acc += dy
        if HAS_DROPOUT:
            keep = dropout_keep(seed_ptr, row, p, BLOCK_D)
            dx = tl.where(keep, dh * dropout_scale(p), 0.0)
            tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        else:
            dx = dh
        if HAS_XB:
            dxb_acc += dx
    tl.store(dw_part_ptr + pid * D + cols, dw_acc, mask=mask)
    if HAS_B:
        tl.store(db_part_ptr + pid * D + cols, db_acc, mask=mask)
    if HAS_XB:
        tl.store(dxb_part_ptr + pid * D + cols, dxb_acc, mask=mask)


def _check_rows(t: torch.Tensor, name: str, d: int) -> None:
    if t.dim() != 2 or t.shape[1] != d or t.stride(1) != 1:
        raise ValueError(f"{name} must be a 2-D [N, {d}] tensor with unit last stride, got shape {tuple(t.shape)} "
                         f"and strides {t.stride()}")


def _fwd_impl(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    x_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    store_h: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d = x.shape
    _check_rows(x, "x", d)
    if residual is not None:
        _check_rows(residual, "residual", d)
        if residual.shape[0] != n:
            raise ValueError(f"residual must have {n} rows like x, got {residual.shape[0]}")
    has_dropout = dropout_p > 0
    if has_dropout and seed is None:
        raise ValueError("seed must be given when dropout_p > 0")
    block = row_block(d)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    h = torch.empty_like(y) if store_h else None
    mean = torch.empty(n, device=x.device, dtype=torch.float32)
    rstd = torch.empty(n, device=x.device, dtype=torch.float32)
    if n:
        launch(
            _add_layer_norm_fwd_kernel, (n,),
            x, residual, x_bias, weight, bias, y, h, mean, rstd, seed if has_dropout else None,
            x.stride(0), residual.stride(0) if residual is not None else 0, d, eps, dropout_p,
            HAS_RES=residual is not None, HAS_XB=x_bias is not None, HAS_DROPOUT=has_dropout, HAS_B=bias is not None,
            STORE_H=store_h, BLOCK_D=block, num_warps=row_warps(block),
        )
    return y, dummy(h, x), mean, rstd


def _bwd_impl(
    dy: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dropout_p: float,
    seed: torch.Tensor | None,
    has_x_bias: bool,
    has_bias: bool = True,
    dh_extra: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d = h.shape
    if not (dy.is_contiguous() and h.is_contiguous() and dy.shape == h.shape):
        raise ValueError(f"dy and h must be contiguous [N, D] tensors of one shape, got {tuple(dy.shape)} "
                         f"and {tuple(h.shape)}")
    if dh_extra is not None and not (dh_extra.is_contiguous() and dh_extra.shape == h.shape):
        raise ValueError(f"dh_extra must be a contiguous [N, D] tensor of h's shape {tuple(h.shape)}, got "
                         f"{tuple(dh_extra.shape)}")
    has_dropout = dropout_p > 0
    if has_dropout and seed is None:
        raise ValueError("seed must be given when dropout_p > 0")
    block = row_block(d)
    warps = reduce_warps(block)
    progs = reduce_programs(h.device, n, warps)
    dh = torch.empty_like(h)
    dx = torch.empty_like(h) if has_dropout else None
    # partial sums in the order dweight, dbias, dx_bias, of those the call has
    parts = partials(1 + has_bias + has_x_bias, progs, d, rows=n, device=h.device)
    db_part = parts[1] if has_bias else None
    dxb_part = parts[-1] if has_x_bias else None
    if n:
        launch(
            _add_layer_norm_bwd_kernel, (progs,),
            dy, h, weight, mean, rstd, seed if has_dropout else None, dh_extra, dh, dx, parts[0], db_part, dxb_part,
            n, d, dropout_p,
            HAS_DROPOUT=has_dropout, HAS_XB=has_x_bias, HAS_B=has_bias, HAS_DHX=dh_extra is not None,
            BLOCK_D=block, num_warps=warps,
        )
    dweight, *rest = sum_partials(parts, weight.dtype, *([weight.dtype] if has_bias else []), h.dtype)
    dbias = rest.pop(0) if has_bias else None
    dx_bias = rest[0] if has_x_bias else None
    return dummy(dx, h), dh, dummy(dx_bias, h), dweight, dummy(dbias, h)


# The launchers (contract: fastenc/ops/add_layer_norm.py); absent outputs come back as empty tensors.
add_layer_norm_fwd = register("add_layer_norm_fwd", _fwd_impl, fakes.add_layer_norm_fwd)
add_layer_norm_bwd = register("add_layer_norm_bwd", _bwd_impl, fakes.add_layer_norm_bwd)
SUPPORT = row_support("add_layer_norm")
not_supported_reasons = launch_reasons  # the backend's hook (fastenc.backends): what SUPPORT cannot say
