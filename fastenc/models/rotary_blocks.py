"""The blocks of the rotary post-LN families, GTE and NomicBERT, running fastenc's ops (switched in place by class,
as fastenc.models.blocks does for the BERT families; the rules of fastenc.models.swaps' `_Swap` apply: `serves`,
`needs`, `supports`).

Both are BERT-shaped without a position table: embeddings (word + token types when present) -> `embeddings` with no
position table; each layer is `LN(h + dropout(o_proj(attention)))` then `LN(h + dropout(down(gated MLP)))` ->
fused Q/K/V, `rotary` on q and k (angles computed in-kernel from the positions and theta), `attention`,
`add_layer_norm` with o_proj's bias folded in, one gate|up matmul -> `gated_act` -> `add_layer_norm` with
down_proj's bias folded in. The rotary embedding module returns `RotaryPositions` (positions and theta) instead of
cos / sin tables; a rotary type the op does not compute (not "default", partial, scaled) keeps transformers' module,
and the attention then rotates with its tables. These models have no encoder module: the base model's forward is
the swap that chooses the layout (`_RotaryModel`): the real tokens are gathered from the inputs (ids, token types,
positions), so transformers' own forward runs on one packed row [1, T] with cu_seqlens, and its output is re-padded.

Trade-off: packing the inputs rather than the hidden states keeps transformers' forward (its output capture,
gradient checkpointing and kwargs) in charge of the layer loop, at the price of the pooler, which reads the first
token of each row, needing the packed layout undone first (`_Pooler`).
"""

from __future__ import annotations

import contextvars
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from fastenc import ops
from fastenc.autotune import note
from fastenc.models.attend import attend
from fastenc.models.blocks import _RobertaLMHead
from fastenc.models.fused import gate_up, gelu_form, hook_free, linear_act_norm, linear_add_norm, qkv
from fastenc.models.hf_internals import SILU, VERSION, recording
from fastenc.models.packing import (
    Packing,
    choose_packing,
    packing_from_kwargs,
    packing_from_positions,
    scoped_unpad,
    tracing,
)
from fastenc.models.swaps import _Swap, swap_table

_PACKED: contextvars.ContextVar[Packing | None] = contextvars.ContextVar("fastenc_rotary_packed", default=None)


def _dropout_p(module: nn.Module, dropout: nn.Module | None) -> float:
    return dropout.p if dropout is not None and module.training else 0.0


@dataclass(frozen=True)
class RotaryPositions:
    """What the swapped rotary embedding gives the layers in place of (cos, sin): positions [B | 1, S] and theta."""

    positions: torch.Tensor
    theta: float | int


def rope_params_reason(params: dict) -> str | None:
    """Why `ops.rotary` cannot compute a rotary embedding with these rope_parameters (None when it can:
    rotate-half over the whole head, theta ** (-2i / D)); ModernBERT asks it once per layer type."""
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        return f"rope_type {rope_type!r} (fastenc's rotary op computes the 'default' type only)"
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        return f"partial_rotary_factor {params['partial_rotary_factor']} (fastenc rotates the whole head)"
    if "rope_theta" not in params:
        return "rope_parameters has no rope_theta"
    return None


def rope_reason(module: nn.Module) -> str | None:
    """Why `ops.rotary` cannot compute the rotary embedding of this GteRotaryEmbedding / NomicBertRotaryEmbedding
    (None when it can: the parameters above, and no scaling)."""
    why = rope_params_reason(getattr(module.config, "rope_parameters", None) or {})
    if why is not None:
        return why
    if getattr(module, "attention_scaling", 1.0) != 1.0:
        return f"attention_scaling {module.attention_scaling} (fastenc's rotary op does not scale)"
    return None


def gated_form(act: nn.Module) -> str | None:
    """The `ops.gated_act` activation computing `act`, or None (then it runs unfused)."""
    approximate = gelu_form(act)
    if approximate is not None:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
    return "silu" if type(act).__name__ in SILU or isinstance(act, nn.SiLU) else None


class _RotaryEmbeddings(_Swap):
    """GteEmbeddings / NomicBertEmbeddings: word (+ token type) embeddings, LayerNorm, dropout -> ops.embeddings with
    no position table (positions only enter through the rotary attention)."""

    serves = frozenset(("input_ids", "token_type_ids", "position_ids", "inputs_embeds"))

    @staticmethod
    def supports(module):
        tt = module._modules.get("token_type_embeddings")
        return type(module.word_embeddings) is nn.Embedding and (tt is None or type(tt) is nn.Embedding)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        word, tt, ln = self.word_embeddings, self._modules.get("token_type_embeddings"), self.LayerNorm
        if tt is not None and token_type_ids is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
            token_type_ids = torch.zeros(1, dtype=torch.long, device=word.weight.device).expand(shape)
        return ops.embeddings(
            input_ids if inputs_embeds is None else None, word.weight, None, None,
            token_type_ids if tt is not None else None, None if tt is None else tt.weight, ln.weight, ln.bias,
            ln.eps, dropout_p=_dropout_p(self, self.dropout), inputs_embeds=inputs_embeds,
            word_padding_idx=word.padding_idx,
        )


def _theta(value: float) -> float | int:
    """rope_theta as an int when it is integral (as published checkpoints' are): torch.compile with dynamic shapes
    keeps a float attribute symbolic but specialises an int, and the rotary op checks theta's value."""
    return int(value) if float(value).is_integer() else float(value)


class _RotaryEmbedding(_Swap):
    """GteRotaryEmbedding / NomicBertRotaryEmbedding: no cos / sin tables; the positions and theta, for
    `ops.rotary` in the attention. Rotary types the op does not compute keep transformers' module (with a reason)."""

    serves = frozenset(("x", "position_ids"))
    attrs = {"_fastenc_theta": lambda module: _theta(module.config.rope_parameters["rope_theta"])}

    @staticmethod
    def supports(module):
        why = rope_reason(module)
        if why is not None:
            text = f"{type(module).__name__} stays transformers' own (transformers {VERSION}): {why}"
            warnings.warn(f"fastenc: {text}", RuntimeWarning, stacklevel=3)
            note(f"rotary {type(module).__module__}.{type(module).__name__}", text)
        return why is None

    def forward(self, x, position_ids):
        theta = self.__dict__.get("_fastenc_theta")
        if theta is None:  # an instance install_blocks did not set up (built from the swapped class): transformers'
            return super().forward(x, position_ids)
        return RotaryPositions(position_ids, theta)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _RotaryAttention(_Swap):
    """GteAttention / NomicBertAttention: fused Q/K/V, ops.rotary, ops.attention. Returns the context BEFORE o_proj
    (with the probabilities): the swapped layer folds o_proj into its residual LayerNorm. Given transformers'
    (cos, sin) tables (a rotary type ops.rotary does not compute), it rotates with those."""

    serves = frozenset(("hidden_states", "attention_mask", "position_embeddings", "past_key_values", "cache"))

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cu_seqlens=None,
                max_seqlen=None, **kwargs):
        q, k, v = qkv(self, hidden_states, ("q_proj", "k_proj", "v_proj"), self.config.num_attention_heads,
                      self.head_dim)
        if isinstance(position_embeddings, RotaryPositions):
            positions = position_embeddings.positions.expand(q.shape[:-2])
            q, k = ops.rotary(q, k, positions, position_embeddings.theta)
        else:
            cos, sin = (t.unsqueeze(-2) for t in position_embeddings)  # [B, S, D] -> per head
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        dropout_p = self.attention_dropout if self.training else 0.0
        ctx, probs = attend(q, k, v, attention_mask, dropout_p, self.scaling, cu_seqlens, max_seqlen,
                            with_probs=recording("attentions"))
        return ctx.flatten(-2), probs


def _gated_mlp(mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """GteMLP / NomicBertMLP before down_proj: dropout(act(gate_proj(h)) * up_proj(h)) (NomicBERT has no dropout)."""
    dropout = mlp._modules.get("dropout")
    act = mlp.act_fn
    gate, up = gate_up(mlp, h)
    form = gated_form(act)
    if form is not None:
        return ops.gated_act(gate, up, form, _dropout_p(mlp, dropout))
    if up is None:
        gate, up = gate.chunk(2, -1)
    y = act(gate) * up
    return dropout(y) if dropout is not None else y


class _PostNormLayer(_Swap):
    """GteLayer / NomicBertLayer: h = LN(x + dropout(o_proj(attention))), LN(h + dropout(down_proj(gated MLP))),
    each closing step one add_layer_norm with the projection's bias folded in. An MLP with hooks is called as a
    module (its hooks run), and only the residual LayerNorm after it is fused."""

    serves = frozenset(("hidden_states", "attention_mask", "position_embeddings"))

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        m = self._modules
        attn = m["self_attn"]
        if not isinstance(attn, _RotaryAttention):  # its output is after o_proj: transformers' layer runs it
            return super().forward(hidden_states, attention_mask, position_embeddings, **kwargs)
        ctx, _ = attn(hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings,
                      **kwargs)
        h = linear_add_norm(ctx, attn._modules["o_proj"], hidden_states, m["post_attention_layernorm"],
                            _dropout_p(self, m["post_attention_dropout"]))
        mlp = m["mlp"]
        if not hook_free(mlp):
            return linear_add_norm(h, mlp, h, m["post_mlp_layernorm"], _dropout_p(self, m["post_mlp_dropout"]))
        return linear_add_norm(_gated_mlp(mlp, h), mlp._modules["down_proj"], h, m["post_mlp_layernorm"],
                               _dropout_p(self, m["post_mlp_dropout"]))


class _Pooler(_Swap):
    """GtePooler / NomicBertPooler: transformers' pooler on the re-padded rows while the base model runs packed."""

    serves = frozenset(("hidden_states",))

    def forward(self, hidden_states):
        packing = _PACKED.get()
        return super().forward(hidden_states if packing is None else packing.unpack(hidden_states))


class _NomicHeadTransform(_Swap):
    """NomicBertPredictionHeadTransform: layer_norm(act(dense(x))) -> ops.gelu_layer_norm for the GELU family, else
    the activation then ops.add_layer_norm."""

    serves = frozenset(("hidden_states",))

    def forward(self, hidden_states):
        return linear_act_norm(hidden_states, self.dense, self.transform_act_fn, self.layer_norm)


def _hf_class(module: nn.Module) -> type:
    return next(k for k in type(module).__mro__ if k.__module__.startswith("transformers."))


class _RotaryModel(_Swap):
    """GteModel / NomicBertModel, which are their own encoder: the layout of each call (`fastenc.models.packing`).
    Padded batches are packed by gathering the real tokens' inputs (ids or embeddings, token types, positions) into
    one row [1, T] that transformers' forward runs with cu_seqlens; flattened sequences (position_ids restarting in a
    row, or the flattening collator's kwargs) run as they are, with cu_seqlens. Also the base of fastenc's own
    GteModel / NomicBertModel classes (families.classes), where it follows the FastencModel wrapper."""

    attrs = {"_fastenc_unpad": None}  # optimize(unpad=False) sets False; a fastenc model's forward decides per call
    serves = frozenset(("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds"))

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, **kwargs):
        x = input_ids if input_ids is not None else inputs_embeds
        args = (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        if x is None or tracing(x) or swap_table().get(_hf_class(self)) is not _RotaryModel:  # refused: as is
            return super().forward(*args, **kwargs)
        batch, seq = x.shape[:2]
        if attention_mask is None:  # nothing padded: maybe flattened sequences
            flat = packing_from_kwargs(kwargs, batch, seq)
            if flat is None and position_ids is not None:
                flat = packing_from_positions(position_ids, batch, seq)
            if flat is not None:
                return super().forward(*args, cu_seqlens=flat.cu_seqlens, max_seqlen=flat.max_seqlen, **kwargs)
            return super().forward(*args, **kwargs)
        if attention_mask.dim() != 2 or self._fastenc_records(kwargs):
            return super().forward(*args, **kwargs)
        unpad, labels = scoped_unpad(self.__dict__.get("_fastenc_unpad"))
        packing, mask = choose_packing(attention_mask.bool(), unpad, labels)
        if packing is None:
            return super().forward(input_ids, None if mask is None else attention_mask, token_type_ids,
                                   position_ids, inputs_embeds, **kwargs)
        return self._fastenc_packed(packing, input_ids, token_type_ids, position_ids, inputs_embeds, kwargs)

    def _fastenc_records(self, kwargs: dict) -> bool:
        """Whether this call records hidden states or attentions (asked for here, by the config, or by an enclosing
        model): they keep the padded layout. This forward runs before transformers' own starts recording."""
        return any(kwargs.get(f"output_{key}") or (kwargs.get(f"output_{key}") is None
                                                   and getattr(self.config, f"output_{key}", False)) or recording(key)
                   for key in ("hidden_states", "attentions"))

    def _fastenc_packed(self, packing, input_ids, token_type_ids, position_ids, inputs_embeds, kwargs):
        def pack(t):  # [B | 1, S] -> [1, T]; [B, S, E] -> [1, T, E]
            if t is None:
                return None
            rows = t.expand(packing.batch, packing.seq, *t.shape[2:])
            return packing.pack(rows) if rows.dim() == 3 else packing.pack(rows.unsqueeze(-1)).squeeze(-1)

        device = (input_ids if input_ids is not None else inputs_embeds).device
        if position_ids is None:  # transformers' default: 0..S-1 in every row
            position_ids = torch.arange(packing.seq, device=device)[None]
        return_dict = kwargs.pop("return_dict", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        token = _PACKED.set(packing)
        try:
            out = super().forward(pack(input_ids), None, pack(token_type_ids), pack(position_ids), pack(inputs_embeds),
                                  cu_seqlens=packing.cu_seqlens, max_seqlen=packing.max_seqlen, return_dict=True,
                                  **kwargs)
        finally:
            _PACKED.reset(token)
        out.last_hidden_state = packing.unpack(out.last_hidden_state)
        return out if return_dict else out.to_tuple()


_RotaryAttention.needs = (_PostNormLayer,)  # its output skips o_proj, which only the swapped layer applies
_RotaryEmbedding.needs = (_RotaryAttention,)  # transformers' attention reads (cos, sin) tables
_RotaryModel.needs = (_RotaryAttention, _Pooler)  # packed rows need fastenc's attention and a pooler that re-pads

TARGETS = {  # transformers family -> {block class name: swap}
    family: {f"{prefix}Model": _RotaryModel, f"{prefix}Embeddings": _RotaryEmbeddings,
             f"{prefix}RotaryEmbedding": _RotaryEmbedding, f"{prefix}Attention": _RotaryAttention,
             f"{prefix}Layer": _PostNormLayer, f"{prefix}Pooler": _Pooler, **extra}
    for family, prefix, extra in (
        ("gte", "Gte", {"GteLMHead": _RobertaLMHead}),
        ("nomic_bert", "NomicBert", {"NomicBertPredictionHeadTransform": _NomicHeadTransform}),
    )
}
