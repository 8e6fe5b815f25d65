"""Triton bias_gelu: y = gelu(x + bias), forward and backward, exact erf or tanh form.

Element-wise on [BLOCK_M, BLOCK_N] tiles, so a program loads its slice of the bias once for BLOCK_M rows and the
column index needs no modulo. Backward recomputes gelu'(x + bias) from x and writes per-tile-row fp32 partial sums
of dbias ([cdiv(N, BLOCK_M), D]), which torch sums: deterministic, no atomics, at the cost of a partial buffer
1/BLOCK_M the size of dx.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastenc.kernels import _fakes as fakes
from fastenc.kernels._common import (
    cdiv,
    dummy,
    gelu,
    gelu_and_grad,
    launch_reasons,
    partials,
    register,
    row_support,
)
from fastenc.kernels._launch import launch

_BLOCK_M = 16
_BLOCK_N = 256
_BWD_BLOCK_M = 64
_BWD_BLOCK_N = 64
# 16 elements per thread (8 in the forward): ptxas (sm_90) uses about 100 registers in the backward here, 183 with
# 4 warps; neither spills
_WARPS = 8


@triton.jit
def _bias_gelu_fwd_kernel(
    x_ptr,  # [N, D] input, row stride x_stride
    b_ptr,  # [D] bias, or None
    y_ptr,  # [N, D] output, contiguous
    N,  # rows
    D,  # columns
    x_stride,  # row stride of x
    HAS_BIAS: tl.constexpr,
    APPROX_TANH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    u = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    y = gelu(u, APPROX_TANH)
    tl.store(y_ptr + rows[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    dy_ptr,  # [N, D] gradient of y, contiguous
    x_ptr,  # [N, D] saved input, contiguous
    b_ptr,  # [D] bias, or None
    dx_ptr,  # [N, D] out: gradient of x, contiguous
    db_part_ptr,  # [cdiv(N, BLOCK_M), D] fp32 out: per-tile-row partial sums of dbias, or None
    N,  # rows
    D,  # columns
    HAS_BIAS: tl.constexpr,
    APPROX_TANH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    offs = rows[:, None] * D + cols[None, :]
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    _, dg = gelu_and_grad(u, APPROX_TANH)
    dx = tl.where(mask, dy * dg, 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(db_part_ptr + pid_m * D + cols, tl.sum(dx, axis=0), mask=cols < D)


def _check(x: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be a 2-D tensor with unit last stride, got shape {tuple(x.shape)}, "
                         f"strides {x.stride()}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"bias must have shape [{x.shape[1]}], got {tuple(bias.shape)}")


def _fwd_impl(x: torch.Tensor, bias: torch.Tensor | None, tanh_approx: bool) -> torch.Tensor:
    _check(x, bias)
    n, d = x.shape
    y = torch.empty((n, d), device=x.device, dtype=x.dtype)
    if y.numel():
        grid = (cdiv(n, _BLOCK_M), cdiv(d, _BLOCK_N))
        launch(
            _bias_gelu_fwd_kernel, grid,
            x, bias, y, n, d, x.stride(0), HAS_BIAS=bias is not None, APPROX_TANH=tanh_approx,
            BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=_WARPS,
        )
    return y


def _bwd_impl(
    dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, tanh_approx: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, bias)
    if not (dy.is_contiguous() and x.is_contiguous() and dy.shape == x.shape):
        raise ValueError(f"dy and x must be contiguous and of one shape, got {tuple(dy.shape)} and {tuple(x.shape)}")
    n, d = x.shape
    dx = torch.empty_like(x)
    m_blocks = cdiv(n, _BWD_BLOCK_M)
    parts = partials(m_blocks, d, rows=n, device=x.device) if bias is not None else None
    if dx.numel():
        launch(
            _bias_gelu_bwd_kernel, (m_blocks, cdiv(d, _BWD_BLOCK_N)),
            dy, x, bias, dx, parts, n, d, HAS_BIAS=bias is not None, APPROX_TANH=tanh_approx,
            BLOCK_M=_BWD_BLOCK_M, BLOCK_N=_BWD_BLOCK_N, num_warps=_WARPS,
        )
    dbias = parts.sum(dim=0).to(bias.dtype) if bias is not None else None
    return dx, dummy(dbias, x)


# The launchers (contract: fastenc/ops/bias_gelu.py); absent outputs come back as empty tensors.
bias_gelu_fwd = register("bias_gelu_fwd", _fwd_impl, fakes.bias_gelu_fwd)
bias_gelu_bwd = register("bias_gelu_bwd", _bwd_impl, fakes.bias_gelu_bwd)
SUPPORT = row_support("bias_gelu", max_hidden=None)
not_supported_reasons = launch_reasons  # the backend's hook (fastenc.backends): what SUPPORT cannot say
