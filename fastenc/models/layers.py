"""Building blocks shared by the four encoders: embeddings, attention, feed-forward, layer stack, heads and losses.

Every block keeps transformers' parameter names (query/key/value, dense, LayerNorm, ...) so state_dicts and PEFT
targets are unchanged, but runs through the fused ops of fastenc.ops: the matmuls run without their bias and the
bias is folded into the next fused op (add_layer_norm, bias_gelu, gelu_layer_norm); Q, K and V come out of one
matmul over the concatenated weights (cached while gradients are off) as strided views, never copied.

Padding-free execution: after the embeddings only the real tokens are kept ([T, hidden] plus cu_seqlens), every
layer runs on them, and the result is scattered back with zeros at padded positions. It is chosen automatically
(`choose_packing`) when a batch has padding and every row starts with a real token; forward(unpad=False) or
config.fastenc_unpad = False keeps the padded layout. Trade-off: transformers also computes values at padded query
positions (they attend to the real keys), which the packed path skips: every real position, the pooled [CLS]
output and every loss that ignores padded positions are the same either way, but padded positions read zeros.
Left-padded batches (the pooler would read a padded position 0), recorded hidden states / attentions, and traced or
graph-captured calls (packing has data-dependent shapes) stay padded unless unpad=True is asked for explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastenc import ops
from fastenc.modeling_utils import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    ModelOutput,
    PreTrainedEncoder,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

OptTensor = torch.Tensor | None

# ---------------------------------------------------------------------------------------------------------------
# Activations: the gelu family goes through the fused bias_gelu op; the rest are plain functions by name.

GELU_APPROXIMATE = {"gelu": "none", "gelu_python": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
                    "gelu_fast": "tanh", "gelu_accurate": "tanh"}

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "linear": lambda x: x,
}


def check_activation(act: Any, field: str = "config.hidden_act") -> None:
    if callable(act):
        return
    if act not in GELU_APPROXIMATE and act not in ACTIVATIONS:
        raise ValueError(f"{field} {act!r} is not supported; use one of "
                         f"{sorted([*GELU_APPROXIMATE, *ACTIVATIONS])} or a callable")


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Parameters follow the activation's dtype (autocast gives fp16 matmul outputs next to fp32 parameters)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def linear_act(x: torch.Tensor, dense: nn.Linear, act: Any) -> torch.Tensor:
    """act(dense(x)); the bias is folded into bias_gelu for the gelu family."""
    if isinstance(act, str) and act in GELU_APPROXIMATE:
        y = F.linear(x, dense.weight)
        return ops.bias_gelu(y, _cast(dense.bias, y.dtype), GELU_APPROXIMATE[act])
    fn = act if callable(act) else ACTIVATIONS[act]
    return fn(dense(x))


def linear_add_norm(x: torch.Tensor, dense: nn.Linear, residual: torch.Tensor | None, norm: nn.LayerNorm,
                    dropout_p: float) -> torch.Tensor:
    """norm(dropout(dense(x)) + residual), one fused op after a bias-free matmul."""
    y = F.linear(x, dense.weight)
    if residual is not None and residual.dtype != y.dtype:
        dtype = torch.promote_types(residual.dtype, y.dtype)
        y, residual = y.to(dtype), residual.to(dtype)
    return ops.add_layer_norm(y, residual, norm.weight, norm.bias, norm.eps, x_bias=_cast(dense.bias, y.dtype),
                              dropout_p=dropout_p)


def linear_act_norm(x: torch.Tensor, dense: nn.Linear, act: Any, norm: nn.LayerNorm) -> torch.Tensor:
    """norm(act(dense(x))), the MLM / generator head transform; one fused op for the gelu family."""
    if isinstance(act, str) and act in GELU_APPROXIMATE:
        y = F.linear(x, dense.weight)
        return ops.gelu_layer_norm(y, norm.weight, norm.bias, norm.eps, x_bias=_cast(dense.bias, y.dtype),
                                   approximate=GELU_APPROXIMATE[act])
    return ops.add_layer_norm(linear_act(x, dense, act), None, norm.weight, norm.bias, norm.eps)


# ---------------------------------------------------------------------------------------------------------------
# Attention masks and packing.


@dataclasses.dataclass
class AttentionMask:
    """How every layer's attention sees the batch: one of a key padding mask [B, S] (bool, True = attend), an
    additive bias broadcastable to [B, H, S, S], or the packed layout (cu_seqlens [B + 1] int32, max_seqlen)."""

    key_padding_mask: torch.Tensor | None = None
    attn_bias: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None
    return_probs: bool = False


class Packing:
    """Gather the real tokens of a padded batch into [T, ...] rows and scatter them back (zeros at padding)."""

    def __init__(self, keep: torch.Tensor) -> None:
        self.batch, self.seq = keep.shape
        self.index = keep.reshape(-1).nonzero().squeeze(1)
        lens = keep.sum(1, dtype=torch.int32)
        self.cu_seqlens = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        self.max_seqlen = max(1, int(lens.max()))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.batch * self.seq, x.shape[-1]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(self.batch * self.seq, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.batch, self.seq, x.shape[-1])


def choose_packing(keep: torch.Tensor, unpad: bool | None) -> Packing | None:
    """The packed layout for a 2-D keep mask [B, S] (True = real token), or None for the padded layout.
    unpad=True packs, False never does; None (auto) packs when the batch has padding and every row starts with a
    real token, in eager mode only (the check reads the mask: one host sync; packing has data-dependent shapes)."""
    if unpad is False:
        return None
    if unpad is None:
        if torch.compiler.is_compiling() or (keep.is_cuda and torch.cuda.is_current_stream_capturing()):
            return None
        has_padding, first_real = torch.stack([~keep.all(), keep[:, 0].all()]).tolist()
        if not (has_padding and first_real):
            return None
    return Packing(keep)


def make_attention_mask(attention_mask: torch.Tensor | None, batch: int, seq: int, heads: int,
                        output_attentions: bool, unpad: bool | None) -> tuple[AttentionMask, Packing | None]:
    """Validate the user's mask and choose the layout (`choose_packing`); never packed with output_attentions."""
    if attention_mask is None:
        return AttentionMask(return_probs=output_attentions), None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.dim() == 2:
        if tuple(attention_mask.shape) != (batch, seq):
            raise ValueError(f"attention_mask must have the shape of input_ids {(batch, seq)}, "
                             f"got {tuple(attention_mask.shape)}")
        keep = attention_mask != 0
        packing = None if output_attentions else choose_packing(keep, unpad)
        if packing is not None:
            return AttentionMask(cu_seqlens=packing.cu_seqlens, max_seqlen=packing.max_seqlen), packing
        return AttentionMask(key_padding_mask=keep, return_probs=output_attentions), None
    if attention_mask.dim() == 4:
        try:
            torch.broadcast_shapes(attention_mask.shape, (batch, heads, seq, seq))
        except RuntimeError:
            raise ValueError(f"a 4-D attention_mask must broadcast to [batch, heads, seq, seq] = "
                             f"{[batch, heads, seq, seq]}, got {list(attention_mask.shape)}") from None
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device)
            attention_mask = bias.masked_fill(~attention_mask, float("-inf"))
        elif not attention_mask.is_floating_point():
            raise TypeError(f"a 4-D attention_mask must be bool (True = attend) or additive float, "
                            f"got {attention_mask.dtype}")
        return AttentionMask(attn_bias=attention_mask, return_probs=output_attentions), None
    raise ValueError(f"attention_mask must be 2-D [batch, seq] or 4-D, got shape {tuple(attention_mask.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Embeddings.


class Embeddings(nn.Module):
    """word + token type + position embeddings, LayerNorm, dropout (transformers' *Embeddings), one fused op.
    roberta_positions: positions count from padding_idx + 1 over non-padding tokens (fairseq's make_positions)."""

    def __init__(self, config: Any, roberta_positions: bool = False) -> None:
        super().__init__()
        size = getattr(config, "embedding_size", config.hidden_size)
        self.roberta_positions = roberta_positions
        self.padding_idx = config.pad_token_id if roberta_positions else None
        self.word_embeddings = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        positions = nn.Embedding(config.max_position_embeddings, size, padding_idx=self.padding_idx)
        if not roberta_positions:  # registration order = transformers' state_dict order
            self.position_embeddings = positions
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long),
                             persistent=False)
        self.position_embeddings = positions

    def max_length(self) -> int:
        n = self.position_embeddings.num_embeddings
        return n - self.padding_idx - 1 if self.roberta_positions else n

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        batch, seq = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        if position_ids is None:
            if seq > self.max_length():
                name = "input_ids" if input_ids is not None else "inputs_embeds"
                raise ValueError(f"{name} has sequence length {seq}, longer than the {self.max_length()} positions "
                                 f"of the model (max_position_embeddings)")
            if not self.roberta_positions:
                position_ids = self.position_ids[:, :seq]
            elif input_ids is not None and not input_ids.is_floating_point():
                real = input_ids.ne(self.padding_idx).int()
                position_ids = torch.cumsum(real, dim=1).type_as(real) * real + self.padding_idx
            else:
                position_ids = self.position_ids[:, self.padding_idx + 1: seq + self.padding_idx + 1]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq].expand(batch, seq)
        return ops.embeddings(
            input_ids, self.word_embeddings.weight, position_ids, self.position_embeddings.weight, token_type_ids,
            self.token_type_embeddings.weight, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps,
            dropout_p=self.dropout.p if self.training else 0.0, inputs_embeds=inputs_embeds,
            word_padding_idx=self.word_embeddings.padding_idx, position_padding_idx=self.padding_idx,
            backend="torch" if inputs_embeds is not None else None,
        )


# ---------------------------------------------------------------------------------------------------------------
# Attention and the BERT layer.


class QKVAttention(nn.Module):
    """Self-attention over separate query/key/value Linear modules, computed with one fused QKV matmul."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self._qkv_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def _qkv_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        params = (self.query.weight, self.key.weight, self.value.weight,
                  self.query.bias, self.key.bias, self.value.bias)
        tracing = torch.compiler.is_compiling()  # no data pointers while tracing; the compiler folds the cat
        if tracing or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return torch.cat(params[:3]), torch.cat(params[3:])
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._qkv_cache is None or self._qkv_cache[0] != key:
            with torch.no_grad():
                self._qkv_cache = (key, torch.cat(params[:3]), torch.cat(params[3:]))
        return self._qkv_cache[1], self._qkv_cache[2]

    def attend(self, x: torch.Tensor, mask: AttentionMask, dropout_p: float) -> tuple[torch.Tensor, Any]:
        """x [B, S, hidden] or packed [T, hidden] -> (context like x, probabilities [B, H, S, S] or None)."""
        weight, bias = self._qkv_params()
        qkv = F.linear(x, weight, bias)
        q, k, v = qkv.unflatten(-1, (3, self.num_attention_heads, self.attention_head_size)).unbind(-3)
        probs = None
        if mask.return_probs:
            out, probs = ops.attention_ref(q, k, v, key_padding_mask=mask.key_padding_mask, attn_bias=mask.attn_bias,
                                           dropout_p=dropout_p, return_probs=True)
        else:
            out = ops.attention(q, k, v, key_padding_mask=mask.key_padding_mask, cu_seqlens=mask.cu_seqlens,
                                max_seqlen=mask.max_seqlen, attn_bias=mask.attn_bias, dropout_p=dropout_p,
                                backend="torch" if mask.attn_bias is not None else None)
        return out.flatten(-2), probs


class SelfAttention(QKVAttention):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)


class DenseAddNorm(nn.Module):
    """transformers' *SelfOutput / *Output: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, config: Any, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return linear_add_norm(x, self.dense, residual, self.LayerNorm, self.dropout.p if self.training else 0.0)


class Attention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = DenseAddNorm(config, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> tuple[torch.Tensor, Any]:
        p = self.self.dropout.p if self.training else 0.0
        context, probs = self.self.attend(x, mask, p)
        return self.output(context, x), probs


class Intermediate(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = config.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_act(x, self.dense, self.act)


class Layer(nn.Module):
    """One BERT / RoBERTa / ELECTRA layer: attention, then feed-forward, each closed by add + LayerNorm."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseAddNorm(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> tuple[torch.Tensor, Any]:
        h, probs = self.attention(x, mask)
        return self.output(self.intermediate(h), h), probs


def run_layers(layers: list[nn.Module], h: torch.Tensor, mask: AttentionMask, output_hidden_states: bool,
               checkpointing: bool) -> tuple[torch.Tensor, tuple | None, tuple | None]:
    """Apply `layers` in order; collects the hidden states entering each layer (plus the last) and the attention
    probabilities when asked. checkpointing: recompute each layer in backward (torch.utils.checkpoint)."""
    states, probs_all = [], []
    for layer in layers:
        if output_hidden_states:
            states.append(h)
        if checkpointing:
            h, probs = checkpoint(layer, h, mask, use_reentrant=False)
        else:
            h, probs = layer(h, mask)
        if probs is not None:
            probs_all.append(probs)
    if output_hidden_states:
        states.append(h)
    return h, tuple(states) if output_hidden_states else None, tuple(probs_all) if mask.return_probs else None


class Encoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, h: torch.Tensor, mask: AttentionMask, output_hidden_states: bool):
        checkpointing = self.gradient_checkpointing and self.training
        return run_layers(list(self.layer), h, mask, output_hidden_states, checkpointing)


class Pooler(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))


# ---------------------------------------------------------------------------------------------------------------
# The base model's forward, shared by the four variants.


class EncoderModel(PreTrainedEncoder):
    """Subclasses build `embeddings` and `encoder` (and a pooler) and may override `project` and `pool`."""

    output_class: type = BaseModelOutputWithPooling

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor | None:
        pooler = getattr(self, "pooler", None)
        return pooler(h) if pooler is not None else None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
    ) -> ModelOutput | tuple:
        """transformers' arguments and outputs. unpad: run the layers on the real tokens only (padded positions of
        the outputs are then zeros): None (default: config.fastenc_unpad, else auto), True or False; see the module
        doc."""
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        unpad = getattr(cfg, "fastenc_unpad", None) if unpad is None else unpad
        if unpad is None and output_hidden_states:
            unpad = False  # auto keeps transformers' values at padded positions of every recorded state
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("exactly one of input_ids and inputs_embeds must be given")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor):
                raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {tuple(input_ids.shape)}")
            batch, seq = input_ids.shape
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
                raise ValueError("inputs_embeds must be a 3-D tensor [batch, seq, embedding_size]")
            batch, seq = inputs_embeds.shape[:2]
        mask, packing = make_attention_mask(attention_mask, batch, seq, cfg.num_attention_heads, output_attentions,
                                            unpad)
        h = self.project(self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds))
        if packing is not None:
            h = packing.pack(h)
        h, states, attentions = self.encoder(h, mask, output_hidden_states)
        if packing is not None:
            h = packing.unpack(h)
            states = None if states is None else tuple(packing.unpack(s) for s in states)
        fields = {"last_hidden_state": h, "hidden_states": states, "attentions": attentions}
        if self.output_class is BaseModelOutputWithPooling:
            fields["pooler_output"] = self.pool(h)
        out = self.output_class(**fields)
        return out if return_dict else out.to_tuple()


# ---------------------------------------------------------------------------------------------------------------
# Task heads: the variant files give the modules and `head_logits` / `mlm_logits`; the forward and the losses are
# shared.


def classification_loss(config: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' sequence-classification loss; sets config.problem_type on first use as transformers does."""
    n = config.num_labels
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if n == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, n), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


def qa_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
            end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of start / end cross-entropy; positions outside the sequence are clamped to it and ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start = F.cross_entropy(start_logits, start_positions.clamp(0, ignored), ignore_index=ignored)
    end = F.cross_entropy(end_logits, end_positions.clamp(0, ignored), ignore_index=ignored)
    return (start + end) / 2


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position, -100 ignored (MLM and token classification)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device))


def sparse_prediction_flag(config: Any, sparse_prediction: bool | None) -> bool:
    """forward(sparse_prediction=...) if given, else config.fastenc_sparse_mlm."""
    if sparse_prediction is None:
        return bool(getattr(config, "fastenc_sparse_mlm", False))
    if not isinstance(sparse_prediction, bool):
        raise TypeError(f"sparse_prediction must be a bool or None, got {type(sparse_prediction).__name__}")
    return sparse_prediction


def mlm_rows(h: torch.Tensor, labels: OptTensor, sparse: bool) -> tuple[torch.Tensor, OptTensor]:
    """What the MLM prediction head runs on, and the matching labels. With sparse and labels: only the labelled
    positions (label != -100) of h [B, S, H], gathered as rows [N, H] in row-major order of (batch, seq), and their
    labels [N] (one host sync to count them); otherwise h and labels unchanged. Unlabelled positions add nothing to
    the MLM loss, so skipping the head there leaves the loss and every gradient as they were."""
    if labels is None or not sparse:
        return h, labels
    if labels.numel() != h.shape[0] * h.shape[1]:
        raise ValueError(f"labels must have shape [batch, seq] = {list(h.shape[:2])}, got {list(labels.shape)}")
    labels = labels.reshape(-1).to(h.device)
    index = (labels != -100).nonzero().squeeze(1)
    return h.reshape(-1, h.shape[-1]).index_select(0, index), labels.index_select(0, index)


class HeadModel(PreTrainedEncoder):
    """A base encoder (attribute `base_model_prefix`) and a head; subclasses define `head_logits(outputs)` (MLM
    heads: `mlm_logits(hidden)`)."""

    @property
    def base_model(self) -> EncoderModel:
        return getattr(self, self.base_model_prefix)

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
               output_hidden_states, unpad) -> ModelOutput:
        return self.base_model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, True, unpad)

    def finish(self, out: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return out if return_dict else out.to_tuple()


class SequenceClassificationHead(HeadModel):
    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        labels: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
    ) -> ModelOutput | tuple:
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        logits = self.head_logits(enc)
        loss = classification_loss(self.config, logits, labels) if labels is not None else None
        return self.finish(SequenceClassifierOutput(loss, logits, enc.hidden_states, enc.attentions), return_dict)


class TokenClassificationHead(HeadModel):
    def head_logits(self, enc: ModelOutput) -> torch.Tensor:
        return self.classifier(self.dropout(enc.last_hidden_state))

    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        labels: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
    ) -> ModelOutput | tuple:
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        logits = self.head_logits(enc)
        loss = token_loss(logits, labels) if labels is not None else None
        return self.finish(TokenClassifierOutput(loss, logits, enc.hidden_states, enc.attentions), return_dict)


class MaskedLMHead(HeadModel):
    """Subclasses define `mlm_logits(h)`: the prediction head from hidden states [..., hidden] to [..., vocab]."""

    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        labels: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
        sparse_prediction: bool | None = None,
    ) -> ModelOutput | tuple:
        """transformers' arguments and outputs; unpad as in the base model. sparse_prediction (None: default
        config.fastenc_sparse_mlm, off): with labels, run the prediction head on the labelled positions only
        (label != -100); the loss is the same, but logits are then [num_labelled, vocab], those positions in
        row-major (batch, seq) order, instead of [batch, seq, vocab]. Without labels the logits are always full."""
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        h, labels = mlm_rows(enc.last_hidden_state, labels, sparse_prediction_flag(self.config, sparse_prediction))
        logits = self.mlm_logits(h)
        loss = token_loss(logits, labels) if labels is not None else None
        return self.finish(MaskedLMOutput(loss, logits, enc.hidden_states, enc.attentions), return_dict)


class QuestionAnsweringHead(HeadModel):
    def head_logits(self, enc: ModelOutput) -> torch.Tensor:
        return self.qa_outputs(enc.last_hidden_state)

    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        start_positions: OptTensor = None,
        end_positions: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
    ) -> ModelOutput | tuple:
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in self.head_logits(enc).split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = qa_loss(start_logits, end_logits, start_positions, end_positions)
        out = QuestionAnsweringModelOutput(loss, start_logits, end_logits, enc.hidden_states, enc.attentions)
        return self.finish(out, return_dict)


class ClassificationHead(nn.Module):
    """RoBERTa's / ELECTRA's sentence head on the first token: dropout, dense, act, dropout, out_proj."""

    def __init__(self, config: Any, act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = classifier_dropout(config)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.act = act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.dropout(h[:, 0, :])
        x = torch.tanh(self.dense(x)) if self.act == "tanh" else linear_act(x, self.dense, self.act)
        return self.out_proj(self.dropout(x))


def classifier_dropout(config: Any) -> nn.Dropout:
    return nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None
                      else config.hidden_dropout_prob)

