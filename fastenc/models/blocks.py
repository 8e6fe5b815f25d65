"""The BERT-like families' blocks (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, ALBERT, DistilBERT) running
fastenc's ops, switched in place by class (fastenc.models.swaps).

Every transformers building block with a fastenc equivalent gets its `__class__` set to a subclass whose `forward`
calls fastenc.ops on the module's own parameters: embeddings -> `embeddings`; Q/K/V -> one fused matmul;
attention -> `attention`; dense + dropout + residual + LayerNorm -> `add_layer_norm` with the bias folded in;
dense + GELU -> `bias_gelu`; MLM transforms -> `gelu_layer_norm`; the encoder packs the real tokens
(`fastenc.models.packing`). No parameter, buffer or submodule is created, moved or renamed, so state_dict keys,
Parameter objects (optimizer state, DDP buckets, hooks, PEFT LoRA wrappers) and save_pretrained stay as they were,
and `remove_blocks` undoes it. The layers (BertLayer...) stay subclasses of transformers' GradientCheckpointingLayer,
whose __call__ wraps their forward, so gradient checkpointing keeps working on the swapped blocks.

Attention runs through `fastenc.models.attend.attend` (the padding mask, 4-D masks, recorded probabilities); the
machinery that finds, checks, installs and removes the swaps is fastenc.models.swaps, which reads TARGETS here.

Trade-off: swapping classes instead of owning the modules keeps transformers' module layout, loading, saving and
every PreTrainedModel feature, and keeps every reference a caller holds valid; the price is that fastenc's forward
follows transformers' block boundaries (one op boundary per block) and its keyword plumbing.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import apply_chunking_to_forward

from fastenc import ops
from fastenc.models.attend import attend
from fastenc.models.fused import EXACT_GELU, hook_free, linear_act, linear_act_norm, linear_add_norm, qkv
from fastenc.models.hf_internals import recording
from fastenc.models.packing import (
    choose_packing,
    packing_from_kwargs,
    packing_from_positions,
    scoped_unpad,
    tracing,
)
from fastenc.models.swaps import _ATTENTION_WRAPPERS, _Swap


def _check_length(input_ids, seq: int, limit: int) -> None:
    if seq > limit:
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        raise ValueError(f"{name} has sequence length {seq}, longer than the {limit} positions of the model "
                         f"(max_position_embeddings)")


def _dropout_p(module: nn.Module, dropout: nn.Module) -> float:
    return dropout.p if module.training else 0.0


# ---------------------------------------------------------------------------------------------------------------
# The swapped forwards. Each class is a mixin placed before the transformers class; `supports(module)` says whether a
# given instance can take it (else the module keeps its own forward).


class _Embeddings(_Swap):
    """Bert/Roberta/Albert/ElectraEmbeddings -> ops.embeddings (gather, sum, LayerNorm, dropout in one op)."""

    serves = frozenset(("input_ids", "token_type_ids", "position_ids", "inputs_embeds", "past_key_values_length",
                        "cache_length"))  # transformers < 5.25 / >= 5.25 names of the cache offset

    @staticmethod
    def supports(module):
        return all(type(getattr(module, n)) is nn.Embedding
                   for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"))

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_key_values_length=0, cache_length=0):
        past_key_values_length = cache_length or past_key_values_length
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if position_ids is None:
            offset = self.padding_idx + 1 if hasattr(self, "create_position_ids_from_input_ids") else 0
            limit = self.position_embeddings.num_embeddings - offset - past_key_values_length
            _check_length(input_ids, shape[1], limit)
            if hasattr(self, "create_position_ids_from_input_ids"):  # RoBERTa: positions count from padding_idx + 1
                position_ids = (self.create_position_ids_from_input_ids(input_ids, self.padding_idx,
                                                                        past_key_values_length)
                                if input_ids is not None
                                else self.create_position_ids_from_inputs_embeds(inputs_embeds, self.padding_idx))
            else:
                position_ids = self.position_ids[:, past_key_values_length:past_key_values_length + shape[1]]
        if token_type_ids is None:
            token_type_ids = (self.token_type_ids[:, :shape[1]] if hasattr(self, "token_type_ids")
                              else torch.zeros(shape, dtype=torch.long, device=self.word_embeddings.weight.device))
        ln = self.LayerNorm
        return ops.embeddings(
            input_ids, self.word_embeddings.weight, position_ids, self.position_embeddings.weight, token_type_ids,
            self.token_type_embeddings.weight, ln.weight, ln.bias, ln.eps,
            dropout_p=_dropout_p(self, self.dropout), inputs_embeds=inputs_embeds,
            word_padding_idx=self.word_embeddings.padding_idx,
            position_padding_idx=self.position_embeddings.padding_idx,
        )


class _SelfAttention(_Swap):
    """Bert/Roberta/ElectraSelfAttention -> fused QKV + ops.attention; returns (context [..., E], probs | None)."""

    serves = frozenset(("hidden_states", "attention_mask", "past_key_values", "cache"))  # the cache: < 5.25 / >= 5.25

    @staticmethod
    def supports(module):
        return not getattr(module, "is_causal", False) and not getattr(module, "is_decoder", False)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, cu_seqlens=None, max_seqlen=None,
                cache=None, **kwargs):
        q, k, v = qkv(self, hidden_states)
        out, probs = attend(q, k, v, attention_mask, _dropout_p(self, self._modules["dropout"]), self.scaling,
                            cu_seqlens, max_seqlen, with_probs=recording("attentions"))
        return out.flatten(-2), probs


class _AddLayerNorm(_Swap):
    """Bert/Roberta/Electra SelfOutput and Output: LayerNorm(dropout(dense(x)) + input) -> ops.add_layer_norm."""

    serves = frozenset(("hidden_states", "input_tensor"))

    def forward(self, hidden_states, input_tensor):
        m = self._modules  # not self.<name>: nn.Module.__getattr__ is slow (see fastenc.models.fused)
        return linear_add_norm(hidden_states, m["dense"], input_tensor, m["LayerNorm"], _dropout_p(self, m["dropout"]))


class _Intermediate(_Swap):
    """Bert/Roberta/ElectraIntermediate: act(dense(x)) -> ops.bias_gelu for the gelu family."""

    serves = frozenset(("hidden_states",))

    def forward(self, hidden_states):
        m = self._modules
        return linear_act(hidden_states, m["dense"], m.get("intermediate_act_fn") or self.intermediate_act_fn)


class _Layer(_Swap):
    """Bert/Roberta/Electra/XLM-R/CamemBERT Layer of an encoder. When its blocks are all swapped (and its attention
    wrapper is transformers' own class, whose forward is only the two calls made here), carry no hooks and
    attentions are not recorded, their forwards are called directly (fastenc's ops, not transformers' module calls
    and attention wrapper); else transformers' path, with the feed-forward called directly when chunking is off
    (transformers' chunking helper inspects a signature on every call: ~0.1 ms a layer). The layer's own __call__
    (hooks, hidden-state capture, gradient checkpointing) runs either way."""

    serves = frozenset(("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                        "past_key_values", "cache"))
    calls_attention_parts = True

    @staticmethod
    def supports(module):
        return not module.is_decoder and not hasattr(module, "crossattention")

    def _direct_blocks(self) -> tuple[nn.Module, ...] | None:
        """(self-attention, its output, intermediate, output) when the layer can call their forwards itself."""
        if self.chunk_size_feed_forward or recording("attentions"):
            return None
        m = self._modules
        attention, intermediate, output = m["attention"], m["intermediate"], m["output"]
        if type(attention) not in _ATTENTION_WRAPPERS:
            return None
        attn, attn_out = attention._modules["self"], attention._modules["output"]
        if not (isinstance(attn, _SelfAttention) and isinstance(attn_out, _AddLayerNorm)
                and isinstance(intermediate, _Intermediate) and isinstance(output, _AddLayerNorm)
                and all(hook_free(b) for b in (attention, attn, attn_out, intermediate, output))):
            return None
        return attn, attn_out, intermediate, output

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
        blocks = self._direct_blocks()
        if blocks is not None:
            attn, attn_out, intermediate, output = blocks
            a = attn_out.forward(attn.forward(hidden_states, attention_mask, **kwargs)[0], hidden_states)
            return output.forward(intermediate.forward(a), a)
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        if self.chunk_size_feed_forward:
            return apply_chunking_to_forward(self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim,
                                             attention_output)
        return self.feed_forward_chunk(attention_output)


class _AlbertAttention(_Swap):
    """AlbertAttention: fused QKV, attention, dense + dropout + residual + LayerNorm."""

    serves = frozenset(("hidden_states", "attention_mask"))

    def forward(self, hidden_states, attention_mask=None, cu_seqlens=None, max_seqlen=None, **kwargs):
        q, k, v = qkv(self, hidden_states)
        ctx, probs = attend(q, k, v, attention_mask, _dropout_p(self, self.attention_dropout), self.scaling,
                            cu_seqlens, max_seqlen, with_probs=recording("attentions"))
        out = linear_add_norm(ctx.flatten(-2), self.dense, hidden_states, self.LayerNorm,
                              _dropout_p(self, self.output_dropout))
        return out, probs


class _AlbertLayer(_Swap):
    """AlbertLayer: attention, then LayerNorm(ffn_output(act(ffn(x))) + x) (no dropout there, as transformers)."""

    serves = frozenset(("hidden_states", "attention_mask"))

    @staticmethod
    def supports(module):
        return not module.chunk_size_feed_forward

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        h = linear_act(attention_output, self.ffn, self.activation)
        return linear_add_norm(h, self.ffn_output, attention_output, self.full_layer_layer_norm, 0.0)


class _HeadTransform(_Swap):
    """BertPredictionHeadTransform / ElectraGeneratorPredictions: LayerNorm(act(dense(x))) -> ops.gelu_layer_norm."""

    serves = frozenset(("hidden_states", "generator_hidden_states"))  # ELECTRA's name, passed by position

    def forward(self, hidden_states):
        act = getattr(self, "transform_act_fn", None) or self.activation
        return linear_act_norm(hidden_states, self.dense, act, self.LayerNorm)


class _AlbertMLMHead(_Swap):
    """AlbertMLMHead: decoder(LayerNorm(act(dense(x))))."""

    serves = frozenset(("hidden_states",))

    def forward(self, hidden_states):
        return self.decoder(linear_act_norm(hidden_states, self.dense, self.activation, self.LayerNorm))


class _RobertaLMHead(_Swap):
    """RobertaLMHead: decoder(layer_norm(gelu(dense(x)))), exact GELU."""

    serves = frozenset(("features",))

    def forward(self, features, **kwargs):
        return self.decoder(linear_act_norm(features, self.dense, EXACT_GELU, self.layer_norm))


class _DistilEmbeddings(_Swap):
    """DistilBERT's Embeddings (word + position, no token types) -> ops.embeddings."""

    serves = frozenset(("input_ids", "inputs_embeds", "position_ids"))

    @staticmethod
    def supports(module):
        return type(module.word_embeddings) is nn.Embedding and type(module.position_embeddings) is nn.Embedding

    def forward(self, input_ids, inputs_embeds=None, position_ids=None):
        seq = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if position_ids is None:
            _check_length(input_ids, seq, self.position_embeddings.num_embeddings)
            position_ids = self.position_ids[:, :seq]
        ln = self.LayerNorm
        return ops.embeddings(
            input_ids if inputs_embeds is None else None, self.word_embeddings.weight, position_ids,
            self.position_embeddings.weight, None, None, ln.weight, ln.bias, ln.eps,
            dropout_p=_dropout_p(self, self.dropout), inputs_embeds=inputs_embeds,
            word_padding_idx=self.word_embeddings.padding_idx,
        )


class _DistilSelfAttention(_Swap):
    """DistilBertSelfAttention: fused QKV + ops.attention. Returns the context BEFORE out_lin (with the
    probabilities): the swapped TransformerBlock folds out_lin into its residual LayerNorm."""

    serves = frozenset(("hidden_states", "attention_mask"))

    def forward(self, hidden_states, attention_mask=None, cu_seqlens=None, max_seqlen=None, **kwargs):
        q, k, v = qkv(self, hidden_states, ("q_lin", "k_lin", "v_lin"), self.n_heads)
        ctx, probs = attend(q, k, v, attention_mask, _dropout_p(self, self.dropout), self.scaling, cu_seqlens,
                            max_seqlen, with_probs=recording("attentions"))
        return ctx.flatten(-2), probs


class _DistilBlock(_Swap):
    """DistilBERT's TransformerBlock: attention, LayerNorm(out_lin(ctx) + x), LayerNorm(dropout(lin2(act(lin1(h))))
    + h), each closing step one add_layer_norm (feed-forward chunking is a memory saving only: not needed here)."""

    serves = frozenset(("hidden_states", "attention_mask"))

    @staticmethod
    def supports(module):
        return type(module.attention).__name__ == "DistilBertSelfAttention"

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn = self._modules["attention"]
        if not isinstance(attn, _DistilSelfAttention):  # its context is after out_lin: transformers' block runs it
            return super().forward(hidden_states, attention_mask, **kwargs)
        ctx, _ = attn(hidden_states, attention_mask=attention_mask, **kwargs)
        h = linear_add_norm(ctx, attn.out_lin, hidden_states, self.sa_layer_norm, 0.0)
        ffn = self.ffn
        return linear_add_norm(linear_act(h, ffn.lin1, ffn.activation), ffn.lin2, h, self.output_layer_norm,
                               _dropout_p(ffn, ffn.dropout))


class _Encoder(_Swap):
    """Bert/Roberta/ElectraEncoder and AlbertTransformer: run transformers' own layer loop (with its gradient
    checkpointing) in the packed layout when `fastenc.models.packing` chooses it."""

    attrs = {"_fastenc_unpad": None}  # optimize(unpad=False) sets False; a fastenc model's forward decides per call
    serves = frozenset(("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                        "past_key_values", "cache", "use_cache"))

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if tracing(hidden_states):  # data-dependent shapes: traced and captured calls stay padded
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        batch, seq = hidden_states.shape[:2]
        if attention_mask is None:  # nothing padded: maybe flattened sequences
            flat = packing_from_kwargs(kwargs, batch, seq)
            position_ids = kwargs.get("position_ids")
            if flat is None and position_ids is not None:
                flat = packing_from_positions(position_ids, batch, seq)
            if flat is not None:  # the rows stay [B, S]; attention reads them as one packed batch
                return super().forward(hidden_states, None, *args, cu_seqlens=flat.cu_seqlens,
                                       max_seqlen=flat.max_seqlen, **kwargs)
        packing = None
        unpad, labels = scoped_unpad(self._fastenc_unpad)
        if (attention_mask is not None and attention_mask.dim() == 2 and not recording("hidden_states")
                and not recording("attentions")):
            packing, attention_mask = choose_packing(attention_mask, unpad, labels)
        if packing is None:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        out = super().forward(packing.pack(hidden_states), None, *args, cu_seqlens=packing.cu_seqlens,
                              max_seqlen=packing.max_seqlen, **kwargs)
        out.last_hidden_state = packing.unpack(out.last_hidden_state)
        return out


_DistilSelfAttention.needs = (_DistilBlock,)  # its output skips out_lin, which only the swapped block applies
_Encoder.needs = (_SelfAttention, _AlbertAttention, _DistilSelfAttention)  # packed rows need fastenc's attention

TARGETS = {  # transformers family -> {block class name: swap}; XLM-RoBERTa and CamemBERT are RoBERTa's blocks
    "bert": {"BertEmbeddings": _Embeddings, "BertSelfAttention": _SelfAttention, "BertSelfOutput": _AddLayerNorm,
             "BertLayer": _Layer,
             "BertOutput": _AddLayerNorm, "BertIntermediate": _Intermediate, "BertEncoder": _Encoder,
             "BertPredictionHeadTransform": _HeadTransform},
    **{family: {f"{prefix}Embeddings": _Embeddings, f"{prefix}SelfAttention": _SelfAttention,
                f"{prefix}SelfOutput": _AddLayerNorm, f"{prefix}Output": _AddLayerNorm,
                f"{prefix}Intermediate": _Intermediate, f"{prefix}Layer": _Layer, f"{prefix}Encoder": _Encoder,
                f"{prefix}LMHead": _RobertaLMHead}
       for family, prefix in (("roberta", "Roberta"), ("xlm_roberta", "XLMRoberta"), ("camembert", "Camembert"))},
    "electra": {"ElectraEmbeddings": _Embeddings, "ElectraSelfAttention": _SelfAttention,
                "ElectraSelfOutput": _AddLayerNorm, "ElectraOutput": _AddLayerNorm,
                "ElectraIntermediate": _Intermediate, "ElectraLayer": _Layer, "ElectraEncoder": _Encoder,
                "ElectraGeneratorPredictions": _HeadTransform},
    "albert": {"AlbertEmbeddings": _Embeddings, "AlbertAttention": _AlbertAttention, "AlbertLayer": _AlbertLayer,
               "AlbertTransformer": _Encoder, "AlbertMLMHead": _AlbertMLMHead},
    "distilbert": {"Embeddings": _DistilEmbeddings, "DistilBertSelfAttention": _DistilSelfAttention,
                   "TransformerBlock": _DistilBlock, "Transformer": _Encoder},
}
