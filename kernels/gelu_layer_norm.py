"""Triton gelu_layer_norm: y = LayerNorm(gelu(x + x_bias)), forward and backward.

Forward: one program per row, the row in registers, statistics in fp32; the GELU output is never written.
Backward recomputes u = x + x_bias, gelu(u) and gelu'(u) from x (cheaper than reading a stored activation in a
memory-bound kernel) and, like add_layer_norm's backward, loops a fixed number of programs over rows with fp32
partial sums of dweight, dbias and dx_bias in registers, reduced by torch afterwards (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastenc.kernels import _fakes as fakes
from fastenc.kernels._common import (
    gelu,
    gelu_and_grad,
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
def _gelu_layer_norm_fwd_kernel(
    x_ptr,  # [N, D] input (a matmul output without its bias), row stride x_stride
    xb_ptr,  # [D] bias added to x, or None
    w_ptr,  # [D] LayerNorm weight
    b_ptr,  # [D] LayerNorm bias
    y_ptr,  # [N, D] output, contiguous
    mean_ptr,  # [N] fp32 row means of gelu(x + x_bias)
    rstd_ptr,  # [N] fp32 row 1/std
    x_stride,  # row stride of x
    D,  # hidden size
    eps,  # LayerNorm epsilon
    HAS_XB: tl.constexpr,
    APPROX_TANH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    u = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_XB:
        u += tl.load(xb_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    g = gelu(u, APPROX_TANH)
    mean, rstd = row_stats(g, mask, D, eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, ((g - mean) * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _gelu_layer_norm_bwd_kernel(
    dy_ptr,  # [N, D] gradient of y, contiguous
    x_ptr,  # [N, D] saved input, contiguous
    xb_ptr,  # [D] bias added to x, or None
    w_ptr,  # [D] LayerNorm weight
    mean_ptr,  # [N] fp32
    rstd_ptr,  # [N] fp32
    dx_ptr,  # [N, D] out: gradient of x
    dw_part_ptr,  # [P, D] fp32 out: per-program partial sums of dweight
    db_part_ptr,  # [P, D] fp32 out: per-program partial sums of dbias
    dxb_part_ptr,  # [P, D] fp32 out: per-program partial sums of dx_bias, or None
    N,  # rows
    D,  # hidden size
    HAS_XB: tl.constexpr,
    APPROX_TANH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_XB:
        xb = tl.load(xb_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dxb_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for row in tl.range(pid.to(tl.int64), N, tl.num_programs(0), num_stages=3):  # next rows' loads in flight
        u = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_XB:
            u += xb
        dy = tl.load(dy_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        g, dg = gelu_and_grad(u, APPROX_TANH)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(mask, (g - tl.load(mean_ptr + row)) * rstd, 0.0)
        dx = row_layer_norm_bwd(dy, xhat, w, rstd, mask, D) * dg
        tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
        dxb_acc += dx
    tl.store(dw_part_ptr + pid * D + cols, dw_acc, mask=mask)
    tl.store(db_part_ptr + pid * D + cols, db_acc, mask=mask)
    if HAS_XB:
        tl.store(dxb_part_ptr + pid * D + cols, dxb_acc, mask=mask)


def _check_x(x: torch.Tensor) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be a 2-D tensor with unit last stride, got shape {tuple(x.shape)}, "
                         f"strides {x.stride()}")


def _fwd_impl(
    x: torch.Tensor,
    x_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    tanh_approx: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_x(x)
    n, d = x.shape
    block = row_block(d)
    y = torch.empty((n, d), device=x.device, dtype=x.dtype)
    mean = torch.empty(n, device=x.device, dtype=torch.float32)
    rstd = torch.empty(n, device=x.device, dtype=torch.float32)
    if n:
        launch(
            _gelu_layer_norm_fwd_kernel, (n,),
            x, x_bias, weight, bias, y, mean, rstd, x.stride(0), d, eps,
            HAS_XB=x_bias is not None, APPROX_TANH=tanh_approx, BLOCK_D=block, num_warps=row_warps(block),
        )
    return y, mean, rstd


def _bwd_impl(
    dy: torch.Tensor,
    x: torch.Tensor,
    x_bias: torch.Tensor | None,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    tanh_approx: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_x(x)
    if not (dy.is_contiguous() and x.is_contiguous() and dy.shape == x.shape):
        raise ValueError(f"dy and x must be contiguous and of one shape, got {tuple(dy.shape)} and {tuple(x.shape)}")
    n, d = x.shape
    block = row_block(d)
    warps = reduce_warps(block)
    progs = reduce_programs(x.device, n, warps)
    has_xb = x_bias is not None
    dx = torch.empty_like(x)
    parts = partials(3 if has_xb else 2, progs, d, rows=n, device=x.device)
    if n:
        launch(
            _gelu_layer_norm_bwd_kernel, (progs,),
            dy, x, x_bias, weight, mean, rstd, dx, parts[0], parts[1], parts[2] if has_xb else None, n, d,
            HAS_XB=has_xb, APPROX_TANH=tanh_approx, BLOCK_D=block, num_warps=warps,
        )
    dweight, dbias, *dx_bias = sum_partials(parts, weight.dtype, weight.dtype, x.dtype)
    return dx, dx_bias[0] if has_xb else x.new_empty(0), dweight, dbias


# The launchers (contract: fastenc/ops/gelu_layer_norm.py); absent outputs come back as empty tensors.
gelu_layer_norm_fwd = register("gelu_layer_norm_fwd", _fwd_impl, fakes.gelu_layer_norm_fwd)
gelu_layer_norm_bwd = register("gelu_layer_norm_bwd", _bwd_impl, fakes.gelu_layer_norm_bwd)
SUPPORT = row_support("gelu_layer_norm")
not_supported_reasons = launch_reasons  # the backend's hook (fastenc.backends): what SUPPORT cannot say
