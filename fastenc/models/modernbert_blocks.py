"""ModernBERT's blocks running fastenc's ops (swaps as `fastenc.models.swaps` installs them, for
transformers.models.modernbert).

ModernBERT is pre-LN: `h = h + attn(attn_norm(h))`, `h = h + mlp(mlp_norm(h))`, `final_norm(h)` at the end, with
bias-free LayerNorms, rotary positions, alternating local (sliding window) and global attention, and a gated MLP.
The swapped model runs its own layer loop, so every residual add is one `add_layer_norm(return_sum=True)` with the
NEXT norm (the attention output with mlp_norm, the MLP output with the next layer's attn_norm, the last one with
final_norm): the layer's output h and the next block's normed input come out of one op. Around it:
  - embeddings: `ops.embeddings` with no position table (`add_layer_norm` for inputs_embeds);
  - attention: one Wqkv matmul, `ops.rotary` on its q / k views with positions and theta (no cos / sin tables),
    `ops.attention` with `window=config.sliding_window` on local layers (transformers' bidirectional overlay:
    `abs(i - j) <= sliding_window`); Wo's bias and out_drop are folded into the next add_layer_norm;
  - MLP: `ops.gated_act` on Wi's output (`act(input) * gate`), Wo's bias folded into the next add_layer_norm;
  - padding-free packing (`fastenc.models.packing`) as the other families: rotary positions are packed with the
    tokens, and flattened rows (position_ids restarting) attend per sequence.
A 4-D or per-layer-type mask, another attention implementation (eager, for probabilities) or a layer that is not
fastenc's runs transformers' own model forward, with the swapped layers and attention (a 4-D mask is used as given,
with no window, as transformers' sdpa and eager masks are). Rotary types other than "default" (or an attention
scaling) keep the whole family transformers' own, with a reason.

Trade-off: owning the model's layer loop (transformers' output capture wraps it as in transformers) buys the
cross-layer fusion and the packing that ModernBERT's encoder-less layout has no module for, at the price of
re-stating the ~20 lines of transformers' forward that it replaces (embeddings, positions, loop, final norm).
"""

from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.modernbert import modeling_modernbert

from fastenc import ops
from fastenc.autotune import note
from fastenc.models.attend import attend
from fastenc.models.blocks import _dropout_p, _Encoder
from fastenc.models.fused import _cast, _params, gelu_form, is_plain_linear, kernels_run, linear_act, linear_act_norm
from fastenc.models.hf_internals import SILU, VERSION, lookup, recording, register_recordable
from fastenc.models.packing import choose_packing, packing_from_kwargs, packing_from_positions, scoped_unpad, tracing
from fastenc.models.rotary_blocks import rope_params_reason
from fastenc.models.swaps import _Swap, refused

_WARNED: set[str] = set()


def unsupported_reason(config) -> str | None:
    """Why fastenc cannot run this ModernBERT configuration (None: it can): only default rotary is computed."""
    for layer_type in sorted(set(config.layer_types)):
        why = rope_params_reason((getattr(config, "rope_parameters", None) or {}).get(layer_type) or {})
        if why is not None:
            return f"{layer_type} layers: {why}"
    return None


def _supported(module: nn.Module) -> bool:
    why = unsupported_reason(module.config)
    if why is not None and why not in _WARNED:
        _WARNED.add(why)
        text = f"ModernBERT stays transformers' own (transformers {VERSION}): {why}"
        warnings.warn(f"fastenc: {text}", RuntimeWarning, stacklevel=4)
        note("family modernbert", text)
    return why is None


def _add_norm(x: torch.Tensor, dense: nn.Module, residual: torch.Tensor, norm: nn.Module, dropout_p: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(h), h) with h = dropout(dense(x)) + residual, one add_layer_norm(return_sum=True), dense's bias folded
    in for a plain Linear when fastenc's kernels run."""
    if is_plain_linear(dense) and kernels_run(x, "add_layer_norm"):
        weight, x_bias = _params(dense)
        y = F.linear(x, weight)
    else:
        y, x_bias = dense(x), None
    if residual.dtype != y.dtype:  # autocast: a low-precision output beside an fp32 residual
        dtype = torch.promote_types(residual.dtype, y.dtype)
        y, residual = y.to(dtype), residual.to(dtype)
    weight, bias = _params(norm)
    return ops.add_layer_norm(y, residual, _cast(weight, y.dtype), _cast(bias, y.dtype), norm.eps,
                              x_bias=_cast(x_bias, y.dtype), dropout_p=dropout_p, return_sum=True)


def _norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    weight, bias = _params(norm)
    return ops.add_layer_norm(x, None, weight, bias, norm.eps)


def _activation(act: nn.Module) -> str | None:
    """gated_act's name for a transformers activation module, None for one it does not implement."""
    form = gelu_form(act)
    if form is not None:
        return {"none": "gelu", "tanh": "gelu_tanh"}[form]
    return "silu" if isinstance(act, nn.SiLU) or type(act).__name__ in SILU else None


def _gated(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """drop(act(input) * gate) with `input, gate = Wi(x).chunk(2, -1)`: one gated_act on Wi's output."""
    m = mlp._modules
    u = m["Wi"](x)
    p = _dropout_p(mlp, m["drop"])
    activation = _activation(m["act"])
    if activation is None:
        a, gate = u.chunk(2, dim=-1)
        return F.dropout(m["act"](a) * gate, p, training=p > 0)
    return ops.gated_act(u, None, activation, p)


class _ModernBertEmbeddings(_Swap):
    """ModernBertEmbeddings: drop(norm(tok_embeddings(ids))) -> ops.embeddings with no position or token-type
    table; inputs_embeds -> add_layer_norm (then dropout, which follows the norm here)."""

    serves = frozenset(("input_ids", "inputs_embeds"))

    @staticmethod
    def supports(module):
        return type(module.tok_embeddings) is nn.Embedding

    def forward(self, input_ids=None, inputs_embeds=None):
        m = self._modules
        norm, p = m["norm"], _dropout_p(self, m["drop"])
        weight, bias = _params(norm)
        if inputs_embeds is not None:
            y = ops.add_layer_norm(inputs_embeds, None, _cast(weight, inputs_embeds.dtype),
                                   _cast(bias, inputs_embeds.dtype), norm.eps)
            return F.dropout(y, p, training=p > 0)
        tok = m["tok_embeddings"]
        return ops.embeddings(input_ids, tok.weight, None, None, None, None, weight, bias, norm.eps, dropout_p=p,
                              word_padding_idx=tok.padding_idx)


class _ModernBertAttention(_Swap):
    """ModernBertAttention: Wqkv, rotary on the q / k views, attention (windowed on sliding layers). Returns the
    context BEFORE Wo (with the probabilities): the swapped layer folds Wo and out_drop into its add_layer_norm.
    Positions come as `positions` from the swapped model (rotary in-kernel), or as transformers' (cos, sin)."""

    serves = frozenset(("hidden_states", "position_embeddings", "attention_mask"))
    supports = staticmethod(_supported)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, positions=None,
                cu_seqlens=None, max_seqlen=None, **kwargs):
        config = self.config
        layer_type = config.layer_types[self.layer_idx]
        heads = config.num_attention_heads
        q, k, v = self.Wqkv(hidden_states).view(*hidden_states.shape[:-1], 3, heads, self.head_dim).unbind(-3)
        if positions is not None:
            theta = config.rope_parameters[layer_type]["rope_theta"]
            q, k = ops.rotary(q, k, positions.expand(q.shape[:-2]), theta)
        else:
            cos, sin = position_embeddings
            q, k = _rotate(q, k, cos, sin)
        window = config.sliding_window if layer_type == "sliding_attention" else None
        p = self.attention_dropout if self.training else 0.0
        ctx, probs = attend(q, k, v, attention_mask, p, self.head_dim**-0.5, cu_seqlens, max_seqlen,
                            recording("attentions"), window)
        return ctx.flatten(-2), probs


def _rotate(q, k, cos, sin):
    """transformers' rotation from its (cos, sin) [B, S, D] tables, for q, k [B, S, H, D], in fp32."""
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()

    def rot(x):
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)

    return rot(q), rot(k)


class _ModernBertLayer(_Swap):
    """ModernBertEncoderLayer. From the swapped model's loop: takes h and its normed input `normed`, returns
    (h', next_norm(h')), each residual add one add_layer_norm(return_sum=True). From transformers' loop (no
    next_norm): returns h' as transformers does."""

    serves = frozenset(("hidden_states", "attention_mask", "position_embeddings"))
    supports = staticmethod(_supported)

    def forward(self, hidden_states, normed=None, attention_mask=None, position_embeddings=None, next_norm=None,
                positions=None, cu_seqlens=None, max_seqlen=None, **kwargs):
        m = self._modules
        attn, mlp = m["attn"], m["mlp"]
        if normed is None:
            norm = m["attn_norm"]
            normed = hidden_states if isinstance(norm, nn.Identity) else _norm(hidden_states, norm)
        ctx, _ = attn(normed, position_embeddings=position_embeddings, attention_mask=attention_mask,
                      positions=positions, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        out_drop = attn._modules["out_drop"]
        p = _dropout_p(attn, out_drop) if isinstance(out_drop, nn.Dropout) else 0.0
        y, h = _add_norm(ctx, attn._modules["Wo"], hidden_states, m["mlp_norm"], p)
        g = _gated(mlp, y)
        if next_norm is None:
            return h + mlp._modules["Wo"](g)
        y, h = _add_norm(g, mlp._modules["Wo"], h, next_norm, 0.0)
        return h, y


class _ModernBertModel(_Encoder):
    """ModernBertModel: embeddings, the layout choice (padded with a key mask, packed, or flattened rows), the
    rotary positions of the chosen layout, then the layers chained through add_layer_norm with final_norm last.
    Anything else (see the module doc) runs transformers' forward."""

    serves = frozenset(("input_ids", "attention_mask", "position_ids", "inputs_embeds"))

    @staticmethod
    def supports(module):  # fastenc's ModernBertModel has this forward already (found under transformers' name when
        return not isinstance(module, _ModernBertModel) and _supported(module)  # a caller puts it there)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_recordable(cls)  # transformers keys its output-capture table by class: the swapped one too

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        cls = type(self)
        original = cls.__dict__.get("_fastenc_original") or cls._fastenc_hf_class  # swapped, or fastenc's class
        layers = self._modules["layers"]
        if (_FUSED is None or original in refused
                or self.config._attn_implementation != "fastenc"
                or (attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                                    or attention_mask.dim() != 2))
                or not all(isinstance(layer, _ModernBertLayer) for layer in layers)
                or not isinstance(self._modules["embeddings"], _ModernBertEmbeddings)):
            return original.forward(self, input_ids, attention_mask, position_ids, inputs_embeds, **kwargs)
        return _FUSED(self, input_ids, attention_mask, position_ids, inputs_embeds, **kwargs)


def _fused_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
    from transformers.modeling_outputs import BaseModelOutput

    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    hidden = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)
    batch, seq = hidden.shape[:2]
    given_positions = position_ids is not None
    if position_ids is None:
        position_ids = torch.arange(seq, device=hidden.device).unsqueeze(0)
    positions = position_ids.expand(batch, seq)
    packing, cu_seqlens, max_seqlen = None, None, None
    mask = None if attention_mask is None else attention_mask.bool()
    if not tracing(hidden):
        if mask is None:  # nothing padded: maybe flattened sequences (each attends to itself)
            flat = packing_from_kwargs(kwargs, batch, seq)
            if flat is None and given_positions:
                flat = packing_from_positions(position_ids, batch, seq)
            if flat is not None:
                cu_seqlens, max_seqlen = flat.cu_seqlens, flat.max_seqlen
        elif not recording("hidden_states") and not recording("attentions"):
            unpad, labels = scoped_unpad(getattr(self, "_fastenc_unpad", None))
            windowed = "sliding_attention" in self.config.layer_types
            packing, mask = choose_packing(mask, unpad, labels, one_run=windowed)
    if packing is not None:
        hidden = packing.pack(hidden)
        positions = packing.pack(positions.unsqueeze(-1)).squeeze(-1)
        cu_seqlens, max_seqlen = packing.cu_seqlens, packing.max_seqlen
    layers = self.layers
    first = layers[0].attn_norm
    normed = hidden if isinstance(first, nn.Identity) else _norm(hidden, first)
    for i, layer in enumerate(layers):
        next_norm = layers[i + 1].attn_norm if i + 1 < len(layers) else self.final_norm
        hidden, normed = layer(hidden, normed, attention_mask=mask, next_norm=next_norm, positions=positions,
                               cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
    if packing is not None:
        normed = packing.unpack(normed)
    return BaseModelOutput(last_hidden_state=normed)


# transformers' signature (its **kwargs annotation says which outputs it records: callers inspect it)
_ModernBertModel.forward.__signature__ = inspect.signature(modeling_modernbert.ModernBertModel.forward)
_capture = lookup("ModernBERT's layer loop")
_FUSED = None if _capture is None else _capture(_fused_forward)  # with transformers' output capture around it


class _ModernBertHead(_Swap):
    """ModernBertPredictionHead: norm(act(dense(x))) -> gelu_layer_norm (a biased norm) or bias_gelu +
    add_layer_norm (ModernBERT's bias-free norm)."""

    serves = frozenset(("hidden_states",))

    def forward(self, hidden_states):
        m = self._modules
        norm = m["norm"]
        if _params(norm)[1] is not None:
            return linear_act_norm(hidden_states, m["dense"], m["act"], norm)
        return _norm(linear_act(hidden_states, m["dense"], m["act"]), norm)


_ModernBertAttention.needs = (_ModernBertLayer,)  # its output skips Wo, which only the swapped layer applies
_ModernBertLayer.needs = (_ModernBertAttention,)  # it reads the context before Wo
_ModernBertModel.needs = (_ModernBertLayer, _ModernBertEmbeddings)

TARGETS = {
    "modernbert": {"ModernBertEmbeddings": _ModernBertEmbeddings, "ModernBertAttention": _ModernBertAttention,
                   "ModernBertEncoderLayer": _ModernBertLayer, "ModernBertModel": _ModernBertModel,
                   "ModernBertPredictionHead": _ModernBertHead},
}
