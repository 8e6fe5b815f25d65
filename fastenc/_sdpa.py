"""Backend "sdpa": torch's own fused attention behind the contract of fastenc.ops.attention (attention only).

Padded layout: torch.nn.functional.scaled_dot_product_attention on [B, H, S, D] views of q, k, v (transposes, no
copy); the key mask becomes a bool [B, 1, 1, S] mask and an additive attn_bias is passed as SDPA's float mask (in
q's dtype, as transformers does), so torch picks its own kernel (FlashAttention-2 / cuDNN / memory-efficient on
GPUs, its fused flash kernel on CPUs). Rows with no key give zeros, as the reference does (torch >= 2.5).

Packed layout: on CUDA, torch.nn.attention.varlen.varlen_attn (torch >= 2.10), FlashAttention's varlen kernel on
the packed tokens, where it supports the call (fp16 / bf16, head dim a multiple of 8 up to 256, compute capability
8.0+, and no dropout: varlen_attn has no dropout argument). It has no CPU kernel (torch 2.13:
aten::_flash_attention_forward is CUDA-only), so on CPU SDPA runs once per sequence on views of the packed tokens
(reading cu_seqlens is no sync on the CPU): no compute on padding and no copy in, one concatenation out, at one
call per sequence. Padding to [B, max_seqlen, H, D] instead costs two copies of every tensor per layer and the
padded compute, which ate what packing saved; a block-diagonal mask costs O(tokens^2). Everything is
differentiable by torch's autograd: no backward of our own.

Window (|i - j| <= window): a bool [S, S] band combined with the key mask (padded, and per sequence on CPU), so SDPA
computes the whole [S, S] score matrix and skips nothing; varlen_attn's own window_size=(window, window) on CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fastenc.ops._common import FLOAT_DTYPES

if TYPE_CHECKING:
    from fastenc.backends import Call

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

SUPPORT = {
    "attention": dict(devices=("cpu", "cuda"), dtypes=FLOAT_DTYPES, layouts=("padded", "packed"),
                      features=("attn_bias", "window")),
}
_VARLEN_DTYPES = (torch.float16, torch.bfloat16)
_VARLEN_MAX_HEAD_DIM = 256


def not_supported_reasons(op: str, call: Call) -> list[str]:
    """What varlen_attn (packed layout on CUDA) cannot do; the padded layout and CPU take every declared call."""
    if call.layout != "packed" or call.device.type != "cuda":
        return []
    if varlen_attn is None:
        return [f"the packed layout on CUDA needs torch.nn.attention.varlen.varlen_attn (torch >= 2.10), "
                f"this is torch {torch.__version__}"]
    out = []
    if call.dtype not in _VARLEN_DTYPES:
        out.append(f"varlen_attn needs float16 or bfloat16, got {call.dtype}")
    if call.head_dim % 8 or call.head_dim > _VARLEN_MAX_HEAD_DIM:
        out.append(f"varlen_attn needs a head dim that is a multiple of 8 up to {_VARLEN_MAX_HEAD_DIM}, "
                   f"got {call.head_dim}")
    if call.dropout:
        out.append("varlen_attn has no dropout (the packed layout with dropout_p > 0 runs elsewhere)")
    if torch.cuda.get_device_capability(call.device) < (8, 0):
        out.append("varlen_attn needs compute capability 8.0 or newer")
    return out


def _band(seqlen: int, window: int, device: torch.device) -> torch.Tensor:
    """bool [S, S], True where |i - j| <= window."""
    pos = torch.arange(seqlen, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= window


def _padded(q, k, v, key_padding_mask, attn_bias, softmax_scale, dropout_p, window):
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.bool()[:, None, None, :]
    if window >= 0:
        band = _band(q.shape[1], window, q.device)
        mask = band if mask is None else mask & band
    if attn_bias is not None:
        bias = attn_bias.to(q.dtype)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                         dropout_p=dropout_p, scale=softmax_scale)
    return out.transpose(1, 2).contiguous()


def _packed_per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         softmax_scale: float, dropout_p: float, window: int) -> torch.Tensor:
    """CPU packed layout: one SDPA call per sequence on views of the packed tokens, outputs concatenated."""
    bounds = cu_seqlens.tolist()  # CPU tensors: a plain read, no device to wait for
    outs = [_padded(q[a:b][None], k[a:b][None], v[a:b][None], None, None, softmax_scale, dropout_p, window)[0]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return torch.cat(outs) if outs else torch.empty_like(q, memory_format=torch.contiguous_format)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
              cu_seqlens: torch.Tensor | None, max_seqlen: int, attn_bias: torch.Tensor | None,
              softmax_scale: float, dropout_p: float, window: int = -1) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in q's layout, contiguous (see fastenc.ops.attention; window -1 = none)."""
    if cu_seqlens is None:
        return _padded(q, k, v, key_padding_mask, attn_bias, softmax_scale, dropout_p, window)
    if q.is_cuda:
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=softmax_scale,
                           window_size=(window, window))
    return _packed_per_sequence(q, k, v, cu_seqlens, softmax_scale, dropout_p, window)
