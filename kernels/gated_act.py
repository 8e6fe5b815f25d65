"""Triton gated_act: out = dropout(act(x) * y), forward and backward, act = erf GELU, tanh GELU or SiLU.

Element-wise on [BLOCK_M, BLOCK_N] tiles of the [N, I] output, one pass each way. The act input and the gate are
two pointers with their own row strides, so the one-tensor form ([N, 2I], y=None) reads its halves in place and
backward writes both halves' gradients into one [N, 2I] tensor the same way. Backward recomputes act(x) and act'(x)
from x and regenerates the dropout mask from the seed: the row-wise Philox scheme of _common over the output's
(row, column), one Philox call per four columns of a tile row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastenc.kernels import _fakes as fakes
from fastenc.kernels._common import (
    cdiv,
    dropout_scale,
    dummy,
    gelu_and_grad,
    launch_reasons,
    register,
    row_support,
)
from fastenc.kernels._launch import launch

ACTIVATIONS = ("gelu", "gelu_tanh", "silu")  # the ACT code of the kernels is the index here
# 8 elements per thread in both kernels (tests/ops/test_gated_act.py compiles every variant for sm_80 and sm_90a and
# checks for spills; 16 per thread spilled in the sm_80 forward)
_BLOCK_M = 8
_BLOCK_N = 256
_BWD_BLOCK_M = 16
_BWD_BLOCK_N = 128
_WARPS = 8


@triton.jit
def _keep_tile(seed_ptr, rows, col0, p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] keep-mask of the output elements (rows, col0 + arange(BLOCK_N)), col0 a multiple of 4:
    the row-wise scheme of _common (dropout_keep) over a tile, its four Philox words in column order."""
    seed = tl.load(seed_ptr)
    quads = (col0 // 4 + tl.arange(0, BLOCK_N // 4)).to(tl.uint32)
    zero = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.uint32)
    c0 = zero + quads[None, :]
    row_lo = zero + (rows & 0xFFFFFFFF).to(tl.uint32)[:, None]
    row_hi = zero + (rows >> 32).to(tl.uint32)[:, None]
    r0, r1, r2, r3 = tl.philox(seed, c0, row_lo, row_hi, zero + 0x7E1)
    t = tl.minimum(tl.cast(p, tl.float64) * 4294967296.0 + 0.5, 4294967295.0).to(tl.uint32)
    return tl.reshape(tl.join(tl.join(r0 >= t, r2 >= t), tl.join(r1 >= t, r3 >= t)), [BLOCK_M, BLOCK_N])


@triton.jit
def _act_and_grad(u, ACT: tl.constexpr):
    """(act(u), act'(u)) of fp32 `u`; ACT indexes ACTIVATIONS."""
    if ACT == 2:
        s = tl.sigmoid(u)
        return u * s, s * (1.0 + u * (1.0 - s))
    else:
        return gelu_and_grad(u, ACT == 1)


@triton.jit
def _gated_act_fwd_kernel(
    x_ptr,  # [N, D] act input, row stride x_stride, unit column stride
    g_ptr,  # [N, D] gate, row stride g_stride, unit column stride
    out_ptr,  # [N, D] output, contiguous
    seed_ptr,  # [1] int64 dropout seed, or None
    N,  # rows
    D,  # columns of the output
    x_stride,  # row stride of x
    g_stride,  # row stride of the gate
    p,  # dropout probability
    ACT: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col0 = tl.program_id(1) * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    u = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + rows[:, None] * g_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(u, ACT)
    out = a * g
    if HAS_DROPOUT:
        out = tl.where(_keep_tile(seed_ptr, rows, col0, p, BLOCK_M, BLOCK_N), out * dropout_scale(p), 0.0)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_act_bwd_kernel(
    dout_ptr,  # [N, D] gradient of the output, contiguous
    x_ptr,  # [N, D] saved act input, row stride x_stride
    g_ptr,  # [N, D] saved gate, row stride g_stride
    dx_ptr,  # [N, D] out: gradient of the act input, row stride dx_stride
    dg_ptr,  # [N, D] out: gradient of the gate, row stride dg_stride
    seed_ptr,  # [1] int64 dropout seed, or None
    N,  # rows
    D,  # columns of the output
    x_stride,  # row stride of x
    g_stride,  # row stride of the gate
    dx_stride,  # row stride of dx
    dg_stride,  # row stride of dg
    p,  # dropout probability
    ACT: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col0 = tl.program_id(1) * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    d = tl.load(dout_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        d = tl.where(_keep_tile(seed_ptr, rows, col0, p, BLOCK_M, BLOCK_N), d * dropout_scale(p), 0.0)
    u = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + rows[:, None] * g_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a, da = _act_and_grad(u, ACT)
    tl.store(dx_ptr + rows[:, None] * dx_stride + cols[None, :], (d * g * da).to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + rows[:, None] * dg_stride + cols[None, :], (d * a).to(dg_ptr.dtype.element_ty), mask=mask)


def _split(x: torch.Tensor, y: torch.Tensor | None, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(act input, gate) as [N, I] views, after checking the launcher contract."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 2 or (x.stride(1) != 1 and x.shape[1] > 1):
        raise ValueError(f"x must be a 2-D tensor with unit last stride, got shape {tuple(x.shape)}, "
                         f"strides {x.stride()}")
    if y is None:
        if x.shape[1] % 2:
            raise ValueError(f"x must have an even number of columns when y is None, got {tuple(x.shape)}")
        inter = x.shape[1] // 2
        return x[:, :inter], x[:, inter:]
    if y.shape != x.shape or (y.stride(1) != 1 and y.shape[1] > 1) or y.dtype != x.dtype:
        raise ValueError(f"y must be a tensor like x {tuple(x.shape)} {x.dtype} with unit last stride, got "
                         f"{tuple(y.shape)} {y.dtype}, strides {y.stride()}")
    return x, y


def _dropout_args(dropout_p: float, seed: torch.Tensor | None) -> tuple[bool, torch.Tensor | None]:
    if dropout_p > 0 and seed is None:
        raise ValueError("seed must be given when dropout_p > 0")
    return dropout_p > 0, seed if dropout_p > 0 else None


def _fwd_impl(
    x: torch.Tensor, y: torch.Tensor | None, activation: str, dropout_p: float, seed: torch.Tensor | None
) -> torch.Tensor:
    u, g = _split(x, y, activation)
    has_dropout, seed = _dropout_args(dropout_p, seed)
    n, inter = u.shape
    out = torch.empty((n, inter), device=x.device, dtype=x.dtype)
    if out.numel():
        launch(
            _gated_act_fwd_kernel, (cdiv(n, _BLOCK_M), cdiv(inter, _BLOCK_N)),
            u, g, out, seed, n, inter, u.stride(0), g.stride(0), dropout_p,
            ACT=ACTIVATIONS.index(activation), HAS_DROPOUT=has_dropout, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
            num_warps=_WARPS,
        )
    return out


def _bwd_impl(
    dout: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, activation: str, dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    u, g = _split(x, y, activation)
    has_dropout, seed = _dropout_args(dropout_p, seed)
    n, inter = u.shape
    if dout.shape != (n, inter) or not dout.is_contiguous():
        raise ValueError(f"dout must be contiguous of shape {(n, inter)}, got {tuple(dout.shape)}")
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dy = torch.empty_like(dout) if y is not None else None
    du, dg = (dx, dy) if y is not None else (dx[:, :inter], dx[:, inter:])
    if dout.numel():
        launch(
            _gated_act_bwd_kernel, (cdiv(n, _BWD_BLOCK_M), cdiv(inter, _BWD_BLOCK_N)),
            dout, u, g, du, dg, seed, n, inter, u.stride(0), g.stride(0), du.stride(0), dg.stride(0), dropout_p,
            ACT=ACTIVATIONS.index(activation), HAS_DROPOUT=has_dropout, BLOCK_M=_BWD_BLOCK_M,
            BLOCK_N=_BWD_BLOCK_N, num_warps=_WARPS,
        )
    return dx, dummy(dy, x)


# The launchers (contract: fastenc/ops/gated_act.py); absent outputs come back as empty tensors.
gated_act_fwd = register("gated_act_fwd", _fwd_impl, fakes.gated_act_fwd)
gated_act_bwd = register("gated_act_bwd", _bwd_impl, fakes.gated_act_bwd)
SUPPORT = row_support("gated_act", max_hidden=None)
not_supported_reasons = launch_reasons  # the backend's hook (fastenc.backends): what SUPPORT cannot say
