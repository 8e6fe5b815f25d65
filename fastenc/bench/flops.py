"""Matmul FLOP counts for encoder models and the attention op: the numerator of TFLOP/s and MFU.

Only matmuls are counted (2*m*n*k each); LayerNorm, softmax, GELU and embedding gathers are left out, as MFU
conventionally does. Counts are of *useful* work: linear layers over the real tokens and attention over each
sequence's own length, so padding is never credited. Every variant of one case gets the same count, so TFLOP/s
ratios equal latency ratios and a padding-free implementation is not rewarded twice. Training = 3 x forward
(backward = twice the forward matmuls: one for the input gradient, one for the weight gradient).

The model count is built as a list of (m, n, k) matmuls, read off the architecture (config attributes as in
transformers' configs), so each term can be checked against the module it stands for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GATED_MLP = ("gte", "nomic_bert")  # model types whose MLP is down(act(gate(x)) * up(x))


def _lengths(seq_lens: Sequence[int]) -> list[int]:
    lens = [int(s) for s in seq_lens]
    if not lens or min(lens) < 1:
        raise ValueError(f"seq_lens must be a non-empty list of positive lengths, got {list(seq_lens)!r}")
    return lens


def encoder_matmuls(config: Any, seq_lens: Sequence[int], *, pooler: bool = True, mlm_head: bool = False,
                    ) -> list[tuple[int, int, int]]:
    """The forward matmuls (m, n, k) of an encoder over a batch whose sequences have lengths `seq_lens`.

    config: a transformers-style config (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
    vocab_size, optional embedding_size). pooler: count the [CLS] pooler dense. mlm_head: count the MLM head
    (transform dense and vocabulary decoder) over every real token.
    """
    lens = _lengths(seq_lens)
    tokens = sum(lens)
    h, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    if h % heads:
        raise ValueError(f"hidden_size {h} is not a multiple of num_attention_heads {heads}")
    d = h // heads
    emb = getattr(config, "embedding_size", None) or h
    out: list[tuple[int, int, int]] = []
    if emb != h:  # ALBERT / ELECTRA: embeddings projected up to the hidden size
        out.append((tokens, h, emb))
    gated = getattr(config, "model_type", None) == "modernbert"  # one Wi matmul gives act's input and the gate
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    for layer_type in layer_types:
        out += [(tokens, h, h)] * 3  # query, key, value
        window = config.sliding_window if layer_type == "sliding_attention" else None
        for s in lens:
            if window is None:
                out += [(s, s, d)] * heads  # scores = q k^T, per head
                out += [(s, d, s)] * heads  # context = probs v, per head
            else:  # only the (query, key) pairs inside the window: |i - j| <= window
                pairs = sum(min(i + window, s - 1) - max(i - window, 0) + 1 for i in range(s))
                out += [(pairs, 1, d), (pairs, d, 1)] * heads
        out.append((tokens, h, h))  # attention output dense
        out.append((tokens, 2 * inter if gated else inter, h))  # intermediate dense (ModernBERT's Wi: input and gate)
        if config.model_type in GATED_MLP:
            out.append((tokens, inter, h))  # ... and the gated MLP's second input projection (up_proj)
        out.append((tokens, h, inter))  # output dense
    if pooler:
        out.append((len(lens), h, h))
    if mlm_head:
        # BERT / RoBERTa transform to the hidden size; ALBERT / ELECTRA's generator to the embedding size.
        head = emb if emb != h else h
        out.append((tokens, head, h))
        out.append((tokens, config.vocab_size, head))
    return out


def encoder_flops(config: Any, seq_lens: Sequence[int], *, pooler: bool = True, mlm_head: bool = False,
                  training: bool = False) -> int:
    """Matmul FLOPs of one forward pass (training=True: forward + backward = 3 x forward) of an encoder."""
    fwd = sum(2 * m * n * k for m, n, k in encoder_matmuls(config, seq_lens, pooler=pooler, mlm_head=mlm_head))
    return 3 * fwd if training else fwd


def attention_flops(seq_lens: Sequence[int], heads: int, head_dim: int, *, backward: bool = False) -> int:
    """Matmul FLOPs of attention (q k^T and p v) over sequences of `seq_lens`; backward=True adds the backward
    pass, 2.5 x forward (dq, dk, dv, dp and the recomputed scores), as FlashAttention's benchmarks count it."""
    fwd = sum(4 * s * s * heads * head_dim for s in _lengths(seq_lens))
    return fwd * 7 // 2 if backward else fwd
