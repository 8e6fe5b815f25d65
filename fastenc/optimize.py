"""fastenc.optimize: switch a live transformers encoder to fastenc's ops in place, keeping its parameters.

How: every transformers building block that has a fastenc equivalent gets its `__class__` set to a subclass whose
`forward` calls fastenc.ops on the module's own parameters (embeddings -> `embeddings`, Q/K/V -> one fused matmul
when the three are plain nn.Linear, attention -> `attention`, dense + dropout + residual + LayerNorm ->
`add_layer_norm` with the bias folded in, dense + GELU -> `bias_gelu`, MLM transforms -> `gelu_layer_norm`).
No parameter, buffer or submodule is created, moved or renamed, so the state_dict keys, the Parameter objects (and
with them optimizer state, DDP buckets, hooks, PEFT LoRA wrappers) and save_pretrained stay as they were. A module
whose submodule is not a plain nn.Linear (a LoRA layer) is called as a function, so its delta still applies; such a
projection is simply not fused. `fastenc.restore(model)` sets every class back.

The layer classes (BertLayer...) are not replaced: transformers' GradientCheckpointingLayer wraps their forward,
so `model.gradient_checkpointing_enable()` keeps checkpointing the swapped sub-blocks.

Padding: the model's attention implementation is set to "fastenc" (transformers' AttentionInterface and
AttentionMaskInterface), whose mask is the 2-D key padding mask itself, or None when nothing is padded. The encoder
then packs the real tokens (cu_seqlens) after the embeddings, runs every layer on [tokens, hidden] and re-pads at the
end (padded positions come back as zeros, not as the values transformers computes for them). It keeps the padded
path (key padding mask, no host sync) while torch.compile traces or a CUDA graph captures, when hidden states or
attentions are being recorded (output_hidden_states / output_attentions), and under left padding (the pooler reads
position 0). A 4-D mask given by the caller runs as an additive bias on the reference attention.

Trade-off: swapping classes instead of building fastenc models keeps every reference the caller holds valid and is
undone by one assignment per module, at the price of living with transformers' module layout: the separate Q/K/V
weights are concatenated to fuse them (cached while gradients are off, one weight copy per layer and training step
otherwise, small next to the matmul). The math is fastenc.models.layers' own (linear_add_norm, linear_act,
linear_act_norm, QKVAttention's fused weights, Packing), run on the transformers modules' attributes.
Decoder configurations (is_decoder, cross-attention) are refused: their causal and cross masks are not handled.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from fastenc import ops
from fastenc.models.layers import Packing, QKVAttention, choose_packing, linear_act, linear_act_norm, linear_add_norm

ATTN_IMPLEMENTATION = "fastenc"

_GELU_TANH = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation")


def _gelu_approximate(act) -> str | None:
    """'none' / 'tanh' for the GELU forms bias_gelu implements, None for any other activation."""
    name = type(act).__name__
    if name == "GELUActivation":
        return "none"
    if name in _GELU_TANH:
        return "tanh"
    if isinstance(act, nn.GELU):
        return act.approximate
    return None


def _is_linear(m: nn.Module) -> bool:
    return type(m) is nn.Linear


def _act_spec(act: nn.Module, dense: nn.Module):
    """The activation as fastenc.models.layers takes it: a gelu name (fused with the bias-free matmul) when `dense`
    is a plain nn.Linear, else the module itself (called after `dense(x)`, so a LoRA delta still applies)."""
    approximate = _gelu_approximate(act)
    if approximate is None or not _is_linear(dense):
        return act
    return "gelu" if approximate == "none" else "gelu_new"


def _tracing(t: torch.Tensor) -> bool:
    """True while torch.compile traces or a CUDA graph captures: no host sync, no data-dependent shapes then."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _dropout_p(module: nn.Module, dropout: nn.Module) -> float:
    return dropout.p if module.training else 0.0


def _dense_add_norm(dense: nn.Module, x: torch.Tensor, residual: torch.Tensor, ln: nn.LayerNorm,
                    dropout_p: float) -> torch.Tensor:
    """LayerNorm(dropout(dense(x)) + residual): the bias folded into add_layer_norm for a plain nn.Linear, else
    dense called as a function (wrapped layers)."""
    if _is_linear(dense):
        return linear_add_norm(x, dense, residual, ln, dropout_p)
    y = dense(x)
    dtype = torch.promote_types(y.dtype, residual.dtype)  # autocast: fp16 output beside an fp32 residual
    return ops.add_layer_norm(y.to(dtype), residual.to(dtype), ln.weight, ln.bias, ln.eps, dropout_p=dropout_p)


def _recording(key: str) -> bool:
    """Whether transformers is recording `key` ("hidden_states" / "attentions") for this forward call."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return True  # unknown transformers internals: assume recording, which only disables packing
    collected = _active_collector.get()
    return collected is not None and key in collected


# ---------------------------------------------------------------------------------------------------------------
# Attention and mask functions registered with transformers, used by modules that are not swapped and to carry the
# 2-D padding mask from the model's forward to the encoder.


def _padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                  attention_mask=None, **kwargs):
    """transformers mask interface: the 2-D bool key padding mask, or None when no position is padded."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    if not _tracing(attention_mask) and bool(attention_mask.all()):
        return None
    return attention_mask


def _bias_from_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _attention(q, k, v, mask, dropout_p, scale, cu_seqlens=None, max_seqlen=None, with_probs=False):
    """q, k, v [B, S, H, D] (or packed [T, H, D]); mask: None, 2-D key padding or 4-D (bias / bool)."""
    if with_probs:
        bias = None if mask is None or mask.dim() == 2 else _bias_from_mask(mask, q.dtype)
        kpm = mask if mask is not None and mask.dim() == 2 else None
        return ops.attention_ref(q, k, v, key_padding_mask=kpm, attn_bias=bias, dropout_p=dropout_p,
                                 softmax_scale=scale, return_probs=True)
    if mask is not None and mask.dim() == 4:
        return ops.attention(q, k, v, attn_bias=_bias_from_mask(mask, q.dtype), dropout_p=dropout_p,
                             softmax_scale=scale), None
    return ops.attention(q, k, v, key_padding_mask=mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                         dropout_p=dropout_p, softmax_scale=scale), None


def _hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: q, k, v [B, H, S, D] -> ([B, S, H, D], None)."""
    return _attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, dropout,
                      scaling)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _hf_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _padding_mask)


# ---------------------------------------------------------------------------------------------------------------
# The swapped forwards. Each class is a mixin placed before the transformers class; `supports(module)` says whether a
# given instance can take it (else the module keeps its own forward).


class _Swap:
    attrs: dict = {}  # instance attributes the forward needs, set by optimize and removed by restore

    @staticmethod
    def supports(module: nn.Module) -> bool:
        return True


class _Embeddings(_Swap):
    """Bert/Roberta/Albert/ElectraEmbeddings -> ops.embeddings (gather, sum, LayerNorm, dropout in one op)."""

    @staticmethod
    def supports(module):
        return all(type(getattr(module, n)) is nn.Embedding
                   for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"))

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_key_values_length=0):
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if position_ids is None:
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


def _qkv(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V as [..., H, D]: one matmul over the concatenated weights (fastenc's QKVAttention, which caches the
    concatenation while gradients are off) when the three are plain nn.Linear with biases, the results being strided
    views of one output; else three calls, so that LoRA wrappers keep their delta."""
    heads, d = module.num_attention_heads, module.attention_head_size
    lins = (module.query, module.key, module.value)
    if all(_is_linear(m) and m.bias is not None for m in lins):
        weight, bias = QKVAttention._qkv_params(module)
        return F.linear(x, weight, bias).unflatten(-1, (3, heads, d)).unbind(-3)
    return tuple(m(x).unflatten(-1, (heads, d)) for m in lins)


class _SelfAttention(_Swap):
    """Bert/Roberta/ElectraSelfAttention -> fused QKV + ops.attention; returns (context [..., E], probs | None)."""

    attrs = {"_qkv_cache": None}

    @staticmethod
    def supports(module):
        return not getattr(module, "is_causal", False) and not getattr(module, "is_decoder", False)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, cu_seqlens=None, max_seqlen=None,
                **kwargs):
        q, k, v = _qkv(self, hidden_states)
        out, probs = _attention(q, k, v, attention_mask, _dropout_p(self, self.dropout), self.scaling, cu_seqlens,
                                max_seqlen, with_probs=_recording("attentions"))
        return out.flatten(-2), probs


class _AddLayerNorm(_Swap):
    """Bert/Roberta/Electra SelfOutput and Output: LayerNorm(dropout(dense(x)) + input) -> ops.add_layer_norm."""

    def forward(self, hidden_states, input_tensor):
        return _dense_add_norm(self.dense, hidden_states, input_tensor, self.LayerNorm, _dropout_p(self, self.dropout))


class _Intermediate(_Swap):
    """Bert/Roberta/ElectraIntermediate: act(dense(x)) -> ops.bias_gelu for the gelu family."""

    def forward(self, hidden_states):
        return linear_act(hidden_states, self.dense, _act_spec(self.intermediate_act_fn, self.dense))


class _AlbertAttention(_Swap):
    """AlbertAttention: fused QKV, attention, dense + dropout + residual + LayerNorm."""

    attrs = {"_qkv_cache": None}

    def forward(self, hidden_states, attention_mask=None, cu_seqlens=None, max_seqlen=None, **kwargs):
        q, k, v = _qkv(self, hidden_states)
        ctx, probs = _attention(q, k, v, attention_mask, _dropout_p(self, self.attention_dropout), self.scaling,
                                cu_seqlens, max_seqlen, with_probs=_recording("attentions"))
        out = _dense_add_norm(self.dense, ctx.flatten(-2), hidden_states, self.LayerNorm,
                              _dropout_p(self, self.output_dropout))
        return out, probs


class _AlbertLayer(_Swap):
    """AlbertLayer: attention, then LayerNorm(ffn_output(act(ffn(x))) + x) (no dropout there, as transformers)."""

    @staticmethod
    def supports(module):
        return not module.chunk_size_feed_forward

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        h = linear_act(attention_output, self.ffn, _act_spec(self.activation, self.ffn))
        return _dense_add_norm(self.ffn_output, h, attention_output, self.full_layer_layer_norm, 0.0)


class _HeadTransform(_Swap):
    """BertPredictionHeadTransform / ElectraGeneratorPredictions: LayerNorm(act(dense(x))) -> ops.gelu_layer_norm."""

    def forward(self, hidden_states):
        act = getattr(self, "transform_act_fn", None) or self.activation
        return linear_act_norm(hidden_states, self.dense, _act_spec(act, self.dense), self.LayerNorm)


class _AlbertMLMHead(_Swap):
    """AlbertMLMHead: decoder(LayerNorm(act(dense(x))))."""

    def forward(self, hidden_states):
        h = linear_act_norm(hidden_states, self.dense, _act_spec(self.activation, self.dense), self.LayerNorm)
        return self.decoder(h)


class _RobertaLMHead(_Swap):
    """RobertaLMHead: decoder(layer_norm(gelu(dense(x)))), exact GELU."""

    def forward(self, features, **kwargs):
        act = "gelu" if _is_linear(self.dense) else F.gelu
        return self.decoder(linear_act_norm(features, self.dense, act, self.layer_norm))


def _packing(encoder: nn.Module, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> Packing | None:
    """The models' rule (`choose_packing`: padding present, every row's first token real, eager), plus: nothing
    recorded, and no feed-forward chunking (it splits the sequence dim, which packing removes)."""
    if not encoder._fastenc_unpad or mask is None or mask.dim() != 2:
        return None
    if encoder.config.chunk_size_feed_forward or _recording("hidden_states") or _recording("attentions"):
        return None
    return choose_packing(mask.bool(), None)


class _Encoder(_Swap):
    """Bert/Roberta/ElectraEncoder and AlbertTransformer: pack the real tokens, run transformers' own layer loop
    (with its gradient checkpointing) on [tokens, hidden], re-pad the result."""

    attrs = {"_fastenc_unpad": True}

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        packing = _packing(self, hidden_states, attention_mask)
        if packing is None:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        out = super().forward(packing.pack(hidden_states), None, *args, cu_seqlens=packing.cu_seqlens,
                              max_seqlen=packing.max_seqlen, **kwargs)
        out.last_hidden_state = packing.unpack(out.last_hidden_state)
        return out


_TARGETS = {  # transformers module -> {class name: swap}
    "bert": {"BertEmbeddings": _Embeddings, "BertSelfAttention": _SelfAttention, "BertSelfOutput": _AddLayerNorm,
             "BertOutput": _AddLayerNorm, "BertIntermediate": _Intermediate, "BertEncoder": _Encoder,
             "BertPredictionHeadTransform": _HeadTransform},
    "roberta": {"RobertaEmbeddings": _Embeddings, "RobertaSelfAttention": _SelfAttention,
                "RobertaSelfOutput": _AddLayerNorm, "RobertaOutput": _AddLayerNorm,
                "RobertaIntermediate": _Intermediate, "RobertaEncoder": _Encoder, "RobertaLMHead": _RobertaLMHead},
    "electra": {"ElectraEmbeddings": _Embeddings, "ElectraSelfAttention": _SelfAttention,
                "ElectraSelfOutput": _AddLayerNorm, "ElectraOutput": _AddLayerNorm,
                "ElectraIntermediate": _Intermediate, "ElectraEncoder": _Encoder,
                "ElectraGeneratorPredictions": _HeadTransform},
    "albert": {"AlbertEmbeddings": _Embeddings, "AlbertAttention": _AlbertAttention, "AlbertLayer": _AlbertLayer,
               "AlbertTransformer": _Encoder, "AlbertMLMHead": _AlbertMLMHead},
}

_swaps: dict[type, type] | None = None  # transformers class -> swap mixin
_subclasses: dict[type, type] = {}  # transformers class -> its fastenc subclass


def _swap_table() -> dict[type, type]:
    global _swaps
    if _swaps is None:
        table = {}
        for variant, names in _TARGETS.items():
            module = importlib.import_module(f"transformers.models.{variant}.modeling_{variant}")
            table.update({getattr(module, name): swap for name, swap in names.items()})
        _swaps = table
        _register()
    return _swaps


def _subclass(cls: type) -> type:
    if cls not in _subclasses:
        swap = _swap_table()[cls]
        _subclasses[cls] = type(f"Fastenc{cls.__name__}", (swap, cls), {"_fastenc_original": cls,
                                                                          "__module__": __name__})
    return _subclasses[cls]


def _encoder_models(model: nn.Module) -> list[nn.Module]:
    """The transformers PreTrainedModel instances in `model` whose config the attention setting goes to: the
    outermost ones (a head model propagates it to its base model)."""
    from transformers import PreTrainedModel

    found, inner = [], set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and id(m) not in inner:
            found.append(m)
            inner.update(id(s) for s in m.modules())
    return found


def optimize(model: nn.Module, *, unpad: bool = True) -> nn.Module:
    """Switch a transformers BERT / RoBERTa / ALBERT / ELECTRA model (base or head, or a sentence-transformers or
    PEFT wrapper around one) to fastenc's ops, in place; returns `model`. Same parameters, buffers, state_dict keys
    and call signature. Undo with `fastenc.restore(model)`. Calling it again only updates `unpad`.

    unpad: run the layers on the real tokens only when a batch has padding (padded positions of the hidden states
    are then zeros instead of the values transformers computes there); False keeps the padded layout.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    table = _swap_table()
    roots = _encoder_models(model)
    for root in roots:
        cfg = root.config
        if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
            raise ValueError(f"model: {type(root).__name__} is configured as a decoder (is_decoder / "
                             f"add_cross_attention); fastenc.optimize handles encoders only")
    candidates = [m for m in model.modules() if type(m) in table and table[type(m)].supports(m)]
    if not roots or not (candidates or is_optimized(model)):
        raise TypeError(f"model: found no BERT / RoBERTa / ALBERT / ELECTRA encoder from transformers inside "
                        f"{type(model).__name__}")
    for root in roots:
        if root.config._attn_implementation != ATTN_IMPLEMENTATION:
            root._fastenc_attn_implementation = root.config._attn_implementation
            root.set_attn_implementation(ATTN_IMPLEMENTATION)
    for m in candidates:
        m.__class__ = _subclass(type(m))
        for name, value in type(m).attrs.items():
            setattr(m, name, value)
    for m in model.modules():
        if isinstance(m, _Encoder):
            m._fastenc_unpad = bool(unpad)
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo `optimize`: every module gets its transformers class back and the attention implementation it had."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for m in model.modules():
        original = type(m).__dict__.get("_fastenc_original")
        if original is not None:
            for name in type(m).attrs:
                m.__dict__.pop(name, None)
            m.__class__ = original
    for root in _encoder_models(model):
        previous = root.__dict__.pop("_fastenc_attn_implementation", None)
        if previous is not None:
            root.set_attn_implementation(previous)
    return model


def is_optimized(model: nn.Module) -> bool:
    """Whether any module of `model` runs fastenc's forward (after `optimize`, before `restore`)."""
    return any("_fastenc_original" in type(m).__dict__ for m in model.modules())
