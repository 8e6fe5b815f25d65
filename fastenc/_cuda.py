"""The launchers of backend "cuda": the compiled extension fastenc._C behind the launcher contracts of fastenc/ops.

Importing this module imports fastenc._C, whose load registers the `torch.ops.fastenc.*` ops (TORCH_LIBRARY in
csrc/bindings.cpp); a missing or unloadable build raises here and fastenc.backends reports backend "cuda" as
unavailable with the reason. This module also registers the fake (meta) implementations that let torch.compile
trace the ops without running them.

The registered ops are the launchers, with no wrapper: like the Triton launchers they take None for an absent
input and return an empty tensor for an absent output (custom-op schemas cannot return None or alias one output to
another), and fastenc/ops reads only the outputs it asked for.
"""

from __future__ import annotations

import sys

import torch

import fastenc._C  # noqa: F401  (loads the library, which registers torch.ops.fastenc.*)
from fastenc.backends import Call, kernel_image_reason
from fastenc.ops._common import FLOAT_DTYPES

_ops = torch.ops.fastenc

# What the kernels support (see fastenc.backends); csrc/attention.cu instantiates exactly these head dims.
SUPPORT = {
    **{op: dict(devices=("cuda",), dtypes=FLOAT_DTYPES) for op in ("add_layer_norm", "bias_gelu", "gelu_layer_norm")},
    "embeddings": dict(devices=("cuda",), dtypes=FLOAT_DTYPES),
    "attention": dict(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16), head_dims=(32, 64, 128),
                      min_capability=(8, 0), layouts=("padded", "packed")),
}
# the architectures fastenc._C holds code for ("sm_80+sm_90a+compute_90"), set by setup.py; None in older builds
CUDA_ARCHS = getattr(sys.modules["fastenc._C"], "CUDA_ARCHS", None) or None


# ---------------------------------------------------------------------------------------------------------------
# Fake implementations for torch.compile: shapes, dtypes and devices of the outputs, nothing computed.


def _stats(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((n,), dtype=torch.float32), x.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("fastenc::add_layer_norm_fwd")
def _add_layer_norm_fwd_fake(x, residual, x_bias, weight, bias, eps, dropout_p, seed, store_h):
    h = torch.empty_like(x) if store_h else x.new_empty((0,))
    return (torch.empty_like(x), h, *_stats(x, x.shape[0]))


@torch.library.register_fake("fastenc::add_layer_norm_bwd")
def _add_layer_norm_bwd_fake(dy, h, weight, mean, rstd, dropout_p, seed, has_x_bias):
    dx = torch.empty_like(h) if dropout_p > 0 else h.new_empty((0,))
    dx_bias = h.new_empty((h.shape[1],)) if has_x_bias else h.new_empty((0,))
    return dx, torch.empty_like(h), dx_bias, torch.empty_like(weight), torch.empty_like(weight)


@torch.library.register_fake("fastenc::bias_gelu_fwd")
def _bias_gelu_fwd_fake(x, bias, tanh_approx):
    return torch.empty_like(x)


@torch.library.register_fake("fastenc::bias_gelu_bwd")
def _bias_gelu_bwd_fake(dy, x, bias, tanh_approx):
    return torch.empty_like(x), (x.new_empty((x.shape[1],)) if bias is not None else x.new_empty((0,)))


@torch.library.register_fake("fastenc::gelu_layer_norm_fwd")
def _gelu_layer_norm_fwd_fake(x, x_bias, weight, bias, eps, tanh_approx):
    return (torch.empty_like(x), *_stats(x, x.shape[0]))


@torch.library.register_fake("fastenc::gelu_layer_norm_bwd")
def _gelu_layer_norm_bwd_fake(dy, x, x_bias, weight, mean, rstd, tanh_approx):
    dx_bias = x.new_empty((x.shape[1],)) if x_bias is not None else x.new_empty((0,))
    return torch.empty_like(x), dx_bias, torch.empty_like(weight), torch.empty_like(weight)


@torch.library.register_fake("fastenc::embeddings_fwd")
def _embeddings_fwd_fake(ids, pos_ids, tt_ids, word, position, token_type, weight, bias, eps, dropout_p, seed):
    n = ids.shape[0]
    return (word.new_empty((n, word.shape[1])), *_stats(word, n))


@torch.library.register_fake("fastenc::embeddings_bwd")
def _embeddings_bwd_fake(
    dy,
    ids,
    pos_ids,
    tt_ids,
    word,
    position,
    token_type,
    weight,
    mean,
    rstd,
    dropout_p,
    seed,
    word_padding_idx,
    position_padding_idx,
):
    dtt = torch.empty_like(token_type) if token_type is not None else word.new_empty((0,))
    return torch.empty_like(word), torch.empty_like(position), dtt, torch.empty_like(weight), torch.empty_like(weight)


def _lse_shape(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple[int, ...]:
    if cu_seqlens is not None:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


@torch.library.register_fake("fastenc::attention_fwd")
def _attention_fwd_fake(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, cu_seqlens), dtype=torch.float32)


@torch.library.register_fake("fastenc::attention_bwd")
def _attention_bwd_fake(
    dout, q, k, v, o, lse, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, seed
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("fastenc::attention_dropout_mask")
def _attention_dropout_mask_fake(seed, batch, heads, seqlen, dropout_p):
    return seed.new_empty((batch, heads, seqlen, seqlen), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------------------------
# The launchers: the registered ops themselves (contracts: each fastenc/ops/<op>.py docstring).

add_layer_norm_fwd = _ops.add_layer_norm_fwd
add_layer_norm_bwd = _ops.add_layer_norm_bwd
bias_gelu_fwd = _ops.bias_gelu_fwd
bias_gelu_bwd = _ops.bias_gelu_bwd
gelu_layer_norm_fwd = _ops.gelu_layer_norm_fwd
gelu_layer_norm_bwd = _ops.gelu_layer_norm_bwd
embeddings_fwd = _ops.embeddings_fwd
embeddings_bwd = _ops.embeddings_bwd
attention_fwd = _ops.attention_fwd
attention_bwd = _ops.attention_bwd


def attention_dropout_mask(seed: torch.Tensor, batch: int, heads: int, seqlen: int, dropout_p: float) -> torch.Tensor:
    """The keep-mask the attention kernels apply for `seed` (the Philox scheme of fastenc.kernels.attention): bool
    [batch, heads, seqlen, seqlen], True = kept, in each sequence's own coordinates. For tests that replay dropout."""
    return _ops.attention_dropout_mask(seed, int(batch), int(heads), int(seqlen), float(dropout_p)).bool()


def not_supported_reasons(op: str, call: Call) -> list[str]:
    """What SUPPORT cannot declare: a kernel image for the device, and (attention) 16-byte aligned q, k, v rows."""
    out = []
    if call.device.type == "cuda":
        reason = kernel_image_reason(torch.cuda.get_device_capability(call.device), CUDA_ARCHS)
        if reason:
            out.append(reason)
    if op != "attention":
        return out
    for name in ("q", "k", "v"):
        t = call.tensors[name]
        # storage offsets, not data pointers, so that this also runs on fake tensors while torch.compile traces
        # (the allocator aligns storages; bindings.cpp checks the real pointers)
        elems = 16 // t.element_size() if t.element_size() <= 16 else 1
        if t.stride(-1) != 1 or t.storage_offset() % elems or any(s % elems for s in t.stride()[:-1]):
            out.append(f"{name} needs a unit last stride and 16-byte aligned rows")
    return out
