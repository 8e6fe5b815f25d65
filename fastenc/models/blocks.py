"""transformers' encoder blocks running fastenc's ops, switched in place by class.

Every transformers building block with a fastenc equivalent gets its `__class__` set to a subclass whose `forward`
calls fastenc.ops on the module's own parameters: embeddings -> `embeddings`; Q/K/V -> one fused matmul;
attention -> `attention`; dense + dropout + residual + LayerNorm -> `add_layer_norm` with the bias folded in;
dense + GELU -> `bias_gelu`; MLM transforms -> `gelu_layer_norm`; the encoder packs the real tokens
(`fastenc.models.packing`). No parameter, buffer or submodule is created, moved or renamed, so state_dict keys,
Parameter objects (optimizer state, DDP buckets, hooks, PEFT LoRA wrappers) and save_pretrained stay as they were,
and `remove_blocks` undoes it. The layers (BertLayer...) stay subclasses of transformers' GradientCheckpointingLayer,
whose __call__ wraps their forward, so gradient checkpointing keeps working on the swapped blocks.

The attention implementation "fastenc" is registered with transformers (AttentionInterface and
AttentionMaskInterface): its mask is the 2-D key padding mask itself, which the encoder packs by (its one host read
also says whether anything is padded: a batch without padding runs with no mask). A 4-D mask (from the caller, or
another attention implementation's mask function) runs as an additive bias: the call declares it (feature
"attn_bias") and dispatch picks a backend that has it (sdpa, the reference). Recorded attentions (output_attentions)
come from the reference attention, the one that returns the probabilities transformers' eager attention gives.

Trade-off: swapping classes instead of owning the modules keeps transformers' module layout, loading, saving and
every PreTrainedModel feature, and keeps every reference a caller holds valid; the price is that fastenc's forward
follows transformers' block boundaries (one op boundary per block) and its keyword plumbing.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

import torch
from torch import nn
from transformers.pytorch_utils import apply_chunking_to_forward

from fastenc import ops
from fastenc.autotune import note
from fastenc.models.fused import EXACT_GELU, hook_free, linear_act, linear_act_norm, linear_add_norm, qkv
from fastenc.models.hf_internals import VERSION, recording, refresh_recordable
from fastenc.models.packing import (
    choose_packing,
    packing_from_kwargs,
    packing_from_positions,
    scoped_unpad,
    tracing,
)

ATTN_IMPLEMENTATION = "fastenc"


def _check_length(input_ids, seq: int, limit: int) -> None:
    if seq > limit:
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        raise ValueError(f"{name} has sequence length {seq}, longer than the {limit} positions of the model "
                         f"(max_position_embeddings)")


def _dropout_p(module: nn.Module, dropout: nn.Module) -> float:
    return dropout.p if module.training else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Attention and mask functions registered with transformers: used by modules that are not swapped, and to carry the
# 2-D padding mask from the model's forward to the encoder.


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


# ---------------------------------------------------------------------------------------------------------------
# The swapped forwards. Each class is a mixin placed before the transformers class; `supports(module)` says whether a
# given instance can take it (else the module keeps its own forward).


class _Swap:
    """serves: every parameter of the transformers forwards this swap replaces, in every release of the supported
    range (renames on both sides); a release whose forward has another one keeps transformers' block (`swap_table`).
    needs: swaps of the same family without which this one is wrong (a refused one refuses this one too)."""

    attrs: dict = {}  # instance attributes the forward needs, set by install_blocks (a callable: its value for the
    # module) and removed by remove_blocks
    serves: frozenset[str] = frozenset()
    needs: tuple[type, ...] = ()

    @staticmethod
    def supports(module: nn.Module) -> bool:
        return True


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

# modules with more families' swaps (a TARGETS each)
FAMILY_BLOCK_MODULES = ("fastenc.models.rotary_blocks", "fastenc.models.modernbert_blocks")


def targets() -> dict[str, dict[str, type]]:
    """Every family's {block class name: swap}: TARGETS and those of FAMILY_BLOCK_MODULES."""
    merged = dict(TARGETS)
    for name in FAMILY_BLOCK_MODULES:
        merged.update(importlib.import_module(name).TARGETS)
    return merged


_swaps: dict[type, type] | None = None  # transformers block class -> swap mixin
refused: dict[type, str] = {}  # transformers block class -> why it keeps its own forward in this release
_ATTENTION_WRAPPERS: set[type] = set()  # transformers' <Prefix>Attention of the families whose layers are _Layer
_subclasses: dict[type, type] = {}  # transformers block class -> its swapped subclass


def swap_table() -> dict[type, type]:
    """{transformers block class: swap mixin}; registers the "fastenc" attention implementation on first use."""
    global _swaps
    if _swaps is None:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        table = {}
        for family, names in targets().items():
            try:
                module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
            except ImportError:  # a family newer than this release: its classes say so (families.unavailable)
                note(f"blocks of {family}", f"transformers {VERSION} has no transformers.models.{family}")
                continue
            table.update(_family_swaps(module, names))
            _ATTENTION_WRAPPERS.update(getattr(module, name.removesuffix("Layer") + "Attention")
                                       for name, swap in names.items() if swap is _Layer and hasattr(module, name))
        AttentionInterface.register(ATTN_IMPLEMENTATION, _hf_attention)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _padding_mask)
        _swaps = table
    return _swaps


def _unknown_parameters(cls: type, swap: type) -> list[str]:
    """Parameters of transformers' `cls.forward` (as installed) that `swap` does not serve."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in swap.serves]


def _refuse(cls: type, why: str) -> None:
    refused[cls] = why
    text = f"{cls.__name__} stays transformers' own (transformers {VERSION}): {why}"
    warnings.warn(f"fastenc: {text}", RuntimeWarning, stacklevel=4)
    note(f"block {cls.__module__}.{cls.__name__}", text)


def _family_swaps(module, names: dict[str, type]) -> dict[type, type]:
    """{class: swap} for one family's module: a block whose installed forward takes a parameter its swap does not
    serve keeps transformers' forward (warned, and noted for explain()), and so does a swap that needs it."""
    swaps = {}
    for name, swap in names.items():
        cls = getattr(module, name, None)
        if cls is None:
            note(f"block {module.__name__}.{name}", f"transformers {VERSION} has no such class: nothing to swap")
            continue
        unknown = _unknown_parameters(cls, swap)
        if unknown:
            _refuse(cls, f"its forward takes {', '.join(repr(n) for n in unknown)}, which fastenc's "
                         f"{swap.__name__.lstrip('_')} block does not know")
        else:
            swaps[cls] = swap
    changed = True
    while changed:  # a refusal can refuse the swaps that need it, in turn
        changed = False
        off = {swap: cls for name, swap in names.items() if (cls := getattr(module, name, None)) in refused}
        for cls, swap in list(swaps.items()):
            missing = [off[n] for n in swap.needs if n in off]
            if missing:
                del swaps[cls]
                _refuse(cls, f"it needs fastenc's {missing[0].__name__}, which stays transformers'")
                changed = True
    return swaps


def _subclass(cls: type) -> type:
    if cls not in _subclasses:
        _subclasses[cls] = type(cls.__name__, (swap_table()[cls], cls),
                                {"_fastenc_original": cls, "__module__": __name__, "__qualname__": cls.__qualname__})
    return _subclasses[cls]


def install_blocks(model: nn.Module) -> int:
    """Swap every supported block inside `model` (in place); returns how many were swapped."""
    table = swap_table()
    swapped = 0
    for m in model.modules():
        if type(m) in table and table[type(m)].supports(m):
            m.__class__ = _subclass(type(m))
            if hasattr(m, "_can_record_outputs"):  # a base model that is its own encoder (GTE): registry by class
                refresh_recordable(m)
            for name, value in type(m).attrs.items():
                setattr(m, name, value(m) if callable(value) else value)
            swapped += 1
    return swapped


def remove_blocks(model: nn.Module) -> None:
    """Give every swapped block inside `model` its transformers class back (a fastenc model class that carries a swap,
    ModernBertModel, loses the swap's attributes here and its class in optimize.restore)."""
    for m in model.modules():
        if not isinstance(m, _Swap):
            continue
        for name in (*type(m).attrs, "_fastenc_qkv", "_fastenc_gate_up"):
            m.__dict__.pop(name, None)
        original = type(m).__dict__.get("_fastenc_original")
        if original is not None:  # a fastenc model class (a swap of its own: families.classes) keeps its class here
            m.__class__ = original


def has_blocks(model: nn.Module) -> bool:
    return any(isinstance(m, _Swap) for m in model.modules())
