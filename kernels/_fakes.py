"""Fake (meta) implementations of every launcher: the shapes, dtypes and devices of its outputs, nothing computed.

torch.compile traces a custom op through its fake implementation. The Triton launchers (kernels/<op>.py) and the C++
ops (fastenc/_cuda.py) follow one launcher contract (fastenc/ops/<op>.py), so both register these functions, named
as the launchers: each launcher's outputs are described once. This module imports neither triton nor the front, so
backend "cuda" can use it without triton. Absent outputs are empty tensors, as the launchers return them.
"""

from __future__ import annotations

import torch

LAUNCHERS = ("add_layer_norm_fwd", "add_layer_norm_bwd", "bias_gelu_fwd", "bias_gelu_bwd", "gelu_layer_norm_fwd",
             "gelu_layer_norm_bwd", "embeddings_fwd", "embeddings_bwd", "gated_act_fwd", "gated_act_bwd",
             "attention_fwd", "attention_bwd", "attention_dropout_mask")


def _stats(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((n,), dtype=torch.float32), x.new_empty((n,), dtype=torch.float32)


def add_layer_norm_fwd(x, residual, x_bias, weight, bias, eps, dropout_p, seed, store_h):
    h = torch.empty_like(x) if store_h else x.new_empty((0,))
    return (torch.empty_like(x), h, *_stats(x, x.shape[0]))


def add_layer_norm_bwd(dy, h, weight, mean, rstd, dropout_p, seed, has_x_bias, has_bias=True, dh_extra=None):
    dx = torch.empty_like(h) if dropout_p > 0 else h.new_empty((0,))
    dx_bias = h.new_empty((h.shape[1],)) if has_x_bias else h.new_empty((0,))
    dbias = torch.empty_like(weight) if has_bias else h.new_empty((0,))
    return dx, torch.empty_like(h), dx_bias, torch.empty_like(weight), dbias


def bias_gelu_fwd(x, bias, tanh_approx):
    return torch.empty_like(x)


def bias_gelu_bwd(dy, x, bias, tanh_approx):
    return torch.empty_like(x), (x.new_empty((x.shape[1],)) if bias is not None else x.new_empty((0,)))


def gelu_layer_norm_fwd(x, x_bias, weight, bias, eps, tanh_approx):
    return (torch.empty_like(x), *_stats(x, x.shape[0]))


def gelu_layer_norm_bwd(dy, x, x_bias, weight, mean, rstd, tanh_approx):
    dx_bias = x.new_empty((x.shape[1],)) if x_bias is not None else x.new_empty((0,))
    return torch.empty_like(x), dx_bias, torch.empty_like(weight), torch.empty_like(weight)


def embeddings_fwd(ids, pos_ids, tt_ids, word, position, token_type, weight, bias, eps, dropout_p, seed):
    n = ids.shape[0]
    return (word.new_empty((n, word.shape[1])), *_stats(word, n))


def embeddings_bwd(dy, ids, pos_ids, tt_ids, word, position, token_type, weight, mean, rstd, dropout_p, seed,
                   word_padding_idx, position_padding_idx, has_bias=True):
    dpos = torch.empty_like(position) if position is not None else word.new_empty((0,))
    dtt = torch.empty_like(token_type) if token_type is not None else word.new_empty((0,))
    dbias = torch.empty_like(weight) if has_bias else word.new_empty((0,))
    return torch.empty_like(word), dpos, dtt, torch.empty_like(weight), dbias


def gated_act_fwd(x, y, activation, dropout_p, seed):
    return x.new_empty((x.shape[0], x.shape[1] if y is not None else x.shape[1] // 2))


def gated_act_bwd(dout, x, y, activation, dropout_p, seed):
    return x.new_empty(x.shape), torch.empty_like(dout) if y is not None else x.new_empty((0,))


def _lse_shape(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple[int, ...]:
    if cu_seqlens is not None:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


def attention_fwd(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, seed, window=-1):
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, cu_seqlens), dtype=torch.float32)


def attention_bwd(do, q, k, v, o, lse, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, seed,
                  window=-1):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def attention_dropout_mask(seed, batch, heads, seqlen, dropout_p):
    return seed.new_empty((batch, heads, seqlen, seqlen), dtype=torch.uint8)
