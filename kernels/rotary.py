"""Triton rotary: rotate-half RoPE of q and k in one launch, forward and backward (the rotation by -angle).

One program per (token block, head block) works on [BLOCK_T, BLOCK_H, D/2] tiles of both halves of q and k: the
angles pos * inv_freq are computed once per [BLOCK_T, D/2] and shared by every head of the block and by q and k,
so the transcendentals (exp2 for inv_freq, cos and sin) cost a fraction of an element's loads. inv_freq is computed
in fp64 and rounded to fp32 (the reference's fp32 inv_freq; fp32 exp2 / log2 errors of a few ulps would show at
thousands of radians), BLOCK_D2 values per program. The angle is reduced
to [-pi, pi] (Cody-Waite, two constants) before cos / sin, so their accuracy does not depend on how the backend
lowers them (fast approximations lose accuracy on large arguments; positions reach thousands of radians). q and k
are read through their token and head strides (views of a fused QKV output need no copy); outputs are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastenc.kernels import _fakes as fakes
from fastenc.kernels._common import FLOAT_DTYPES, cdiv, launch_reasons, next_pow2, register
from fastenc.kernels._launch import launch

MAX_HEAD_DIM = 512
_TILE = 1024  # elements of one [BLOCK_T, BLOCK_H, BLOCK_D2] half-tile: four of them (q, k halves) per program
_WARPS = 4


@triton.jit
def _rotate_store(x_ptr, o_ptr, tok, heads, cols, mask, x_stride_t, x_stride_h, H, cos, sin,
                  HALF: tl.constexpr):
    """Rotate one tensor's [BLOCK_T, BLOCK_H, BLOCK_D2] tile pair (x[i], x[i + HALF]) and store it contiguously."""
    src = x_ptr + tok[:, None, None] * x_stride_t + heads[None, :, None] * x_stride_h + cols[None, None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = o_ptr + (tok[:, None, None] * H + heads[None, :, None]) * (2 * HALF) + cols[None, None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,  # [N, H, D] input q (forward) or dq_rot (backward), strides (q_stride_t, q_stride_h, 1)
    k_ptr,  # [N, H, D] input k or dk_rot, strides (k_stride_t, k_stride_h, 1)
    pos_ptr,  # [N] int32 / int64 positions, contiguous
    qo_ptr,  # [N, H, D] out: rotated q (or dq), contiguous
    ko_ptr,  # [N, H, D] out: rotated k (or dk), contiguous
    N,  # tokens
    H,  # heads
    theta,  # fp32 base of the frequencies
    q_stride_t,  # token stride of q
    q_stride_h,  # head stride of q
    k_stride_t,  # token stride of k
    k_stride_h,  # head stride of k
    HALF: tl.constexpr,  # D // 2
    INVERSE: tl.constexpr,  # rotate by -angle (the backward)
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D2: tl.constexpr,  # next power of two of HALF
):
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_D2)
    pos = tl.load(pos_ptr + tok, mask=tok < N, other=0).to(tl.float32)
    # inv_freq_i = theta ** (-2 i / D) = exp2(-(i / HALF) * log2(theta)), in fp64 and rounded to fp32 like the
    # reference's own fp32 inv_freq: at thousands of radians an fp32 exp2 / log2 error of a few ulps would show
    inv_freq = tl.exp2(cols.to(tl.float64) * (-tl.log2(tl.cast(theta, tl.float64)) / HALF)).to(tl.float32)
    angle = pos[:, None] * inv_freq[None, :]
    # angle - turns * 2 pi, with 2 pi = 6.28125 (exact in 8 bits, so turns * 6.28125 is exact below 2**16 turns)
    # + 0.0019353071795864769
    turns = tl.floor(angle * 0.15915494309189535 + 0.5)
    r = (angle - turns * 6.28125) - turns * 0.0019353071795864769
    cos = tl.cos(r)[:, None, :]
    sin = tl.sin(r)[:, None, :]
    if INVERSE:
        sin = -sin
    mask = (tok < N)[:, None, None] & (heads < H)[None, :, None] & (cols < HALF)[None, None, :]
    _rotate_store(q_ptr, qo_ptr, tok, heads, cols, mask, q_stride_t, q_stride_h, H, cos, sin, HALF)
    _rotate_store(k_ptr, ko_ptr, tok, heads, cols, mask, k_stride_t, k_stride_h, H, cos, sin, HALF)


def _blocks(h: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_H, BLOCK_D2): all heads of a token in one program where they fit in _TILE, tokens filling
    the rest."""
    block_d2 = next_pow2(d // 2)
    block_h = min(next_pow2(h), max(1, _TILE // block_d2))
    return max(1, _TILE // (block_d2 * block_h)), block_h, block_d2


def _check(a: torch.Tensor, b: torch.Tensor, positions: torch.Tensor, names: tuple[str, str]) -> None:
    for name, t in zip(names, (a, b), strict=True):
        if t.dim() != 3 or (t.stride(2) != 1 and t.shape[2] > 1):
            raise ValueError(f"{name} must be a 3-D [tokens, heads, head_dim] tensor with unit last stride, got "
                             f"shape {tuple(t.shape)}, strides {t.stride()}")
    if b.shape != a.shape or b.dtype != a.dtype:
        raise ValueError(f"{names[1]} must have {names[0]}'s shape and dtype, got {tuple(b.shape)} {b.dtype} and "
                         f"{tuple(a.shape)} {a.dtype}")
    if a.shape[2] % 2 or a.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be even and at most {MAX_HEAD_DIM}, got {a.shape[2]}")
    if positions.shape != (a.shape[0],) or positions.dtype not in (torch.int32, torch.int64) \
            or not positions.is_contiguous():
        raise ValueError(f"positions must be a contiguous int32 / int64 [{a.shape[0]}] tensor, got "
                         f"{positions.dtype} {tuple(positions.shape)}")


def _rotate(a: torch.Tensor, b: torch.Tensor, positions: torch.Tensor, theta: float, inverse: bool,
            names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check(a, b, positions, names)
    n, h, d = a.shape
    a_out = torch.empty((n, h, d), device=a.device, dtype=a.dtype)
    b_out = torch.empty((n, h, d), device=a.device, dtype=a.dtype)
    if a_out.numel():
        block_t, block_h, block_d2 = _blocks(h, d)
        launch(
            _rotary_kernel, (cdiv(n, block_t), cdiv(h, block_h)),
            a, b, positions, a_out, b_out, n, h, float(theta), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            HALF=d // 2, INVERSE=inverse, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D2=block_d2, num_warps=_WARPS,
        )
    return a_out, b_out


def _fwd_impl(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    return _rotate(q, k, positions, theta, False, ("q", "k"))


def _bwd_impl(dq_rot: torch.Tensor, dk_rot: torch.Tensor, positions: torch.Tensor, theta: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    return _rotate(dq_rot, dk_rot, positions, theta, True, ("dq_rot", "dk_rot"))


# The launchers (contract: fastenc/ops/rotary.py).
rotary_fwd = register("rotary_fwd", _fwd_impl, fakes.rotary_fwd)
rotary_bwd = register("rotary_bwd", _bwd_impl, fakes.rotary_bwd)
SUPPORT = {"rotary": dict(devices=("cuda", "cpu"), dtypes=FLOAT_DTYPES, max_head_dim=MAX_HEAD_DIM)}
not_supported_reasons = launch_reasons  # the backend's hook (fastenc.backends): what SUPPORT cannot say
