"""attend(): the attention every swapped block runs, and the attention implementation "fastenc" registered with
transformers (AttentionInterface and AttentionMaskInterface, by fastenc.models.swaps.swap_table).

The registered mask is the 2-D key padding mask itself, which the encoder packs by (its one host read also says
whether anything is padded: a batch without padding runs with no mask); the registered attention serves the blocks
that stay transformers' own. A 4-D mask (from the caller, or another attention implementation's mask function)
runs as an additive bias: the call declares it (feature "attn_bias") and dispatch picks a backend that has it (sdpa,
the reference). Recorded attentions (output_attentions) come from the reference attention, the one that returns the
probabilities transformers' eager attention gives.

Trade-off: one function for every family's attention (padded, packed, windowed, 4-D, recorded) keeps the layout
rules in one place, at the price of a keyword list that is the union of what the families pass.
"""

from __future__ import annotations

import torch

from fastenc import ops

ATTN_IMPLEMENTATION = "fastenc"


def _padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                  attention_mask=None, **kwargs):
    """transformers mask interface: the 2-D bool key padding mask as it is (whether anything is padded is read
    once, by the encoder's layout choice, not here: no host sync)."""
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:].bool()


def _bias_from_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def attend(q, k, v, mask, dropout_p, scale, cu_seqlens=None, max_seqlen=None, with_probs=False, window=None):
    """q, k, v [B, S, H, D]; with cu_seqlens, the B * S tokens are the packed sequences (packed rows are [1, T]);
    mask: None, 2-D key padding or 4-D (bias / bool, used as given: `window`, keys within that distance of the
    query in its sequence, applies with None / 2-D masks only, as transformers' masks carry their window).
    Returns (context like q, probabilities [B, H, S, S] or None)."""
    if mask is not None and mask.dim() == 4:
        bias = _bias_from_mask(mask, q.dtype)
        if with_probs:
            return ops.attention_ref(q, k, v, attn_bias=bias, dropout_p=dropout_p, softmax_scale=scale,
                                     return_probs=True)
        return ops.attention(q, k, v, attn_bias=bias, dropout_p=dropout_p, softmax_scale=scale), None
    if with_probs:
        if cu_seqlens is not None:
            raise ValueError("output_attentions is not supported with packed or flattened sequences "
                             "(position_ids restarting inside a row)")
        return ops.attention_ref(q, k, v, key_padding_mask=mask, dropout_p=dropout_p, softmax_scale=scale,
                                 return_probs=True, window=window)
    if cu_seqlens is not None:  # the packed layout [T, H, D] is a view of the rows
        out = ops.attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens=cu_seqlens,
                            max_seqlen=max_seqlen, dropout_p=dropout_p, softmax_scale=scale, window=window)
        return out.view(*q.shape), None
    return ops.attention(q, k, v, key_padding_mask=mask, dropout_p=dropout_p, softmax_scale=scale,
                         window=window), None


def _hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seqlens=None,
                  max_seqlen=None, sliding_window=None, **kwargs):
    """transformers attention interface: q, k, v [B, H, S, D] -> ([B, S, H, D], None); packed rows ([1, T]) with
    cu_seqlens when a fastenc encoder runs a block that stayed transformers' own. sliding_window is in transformers'
    flash convention (keys within sliding_window - 1 of the query, ModernBERT's local layers)."""
    window = None if sliding_window is None else sliding_window - 1
    return attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, dropout,
                  scaling, cu_seqlens, max_seqlen, window=window)
