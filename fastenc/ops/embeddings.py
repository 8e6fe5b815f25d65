"""embeddings: y = dropout(LayerNorm(word[input_ids] + token_type[token_type_ids] + position[position_ids])).

One pass: each output row gathers its three table rows, sums, normalises and applies dropout, so the [N, E] sum is
never written. Backward rebuilds the normalised row from the tables and the saved fp32 mean / rstd (no activation
of hidden size is stored) and scatters the row gradient into the three tables; rows at a padding_idx get no
gradient, as with nn.Embedding(padding_idx=...). With inputs_embeds in place of input_ids the word gather does not
apply and the reference path runs. Models with rotary positions (ModernBERT, GTE) have no position table:
position_ids / position_embeddings None skip that gather and its gradient; bias None is a bias-free LayerNorm.

Id values are checked here (`_check_id_ranges`): CPU ids with a clear IndexError in eager mode (one host read of
the ids' min / max; skipped while torch.compile traces); GPU ids with an on-device assert queued ahead of the kernel
(no host sync, also while tracing or capturing a CUDA graph), a device-side assert naming the argument.

Launcher contract (fastenc.kernels.embeddings and fastenc._cuda); ids are contiguous int64 [N]:
    embeddings_fwd(input_ids [N], position_ids [N] | None, token_type_ids [N] | None, word [V, E],
                   position [P, E] | None, token_type [T, E] | None, weight [E], bias [E] | None, eps: float,
                   dropout_p: float, seed [1] int64 | None)
        -> (y [N, E] in the tables' dtype, mean [N] fp32, rstd [N] fp32)
    embeddings_bwd(dy [N, E], input_ids, position_ids, token_type_ids, word, position, token_type, weight,
                   mean, rstd, dropout_p: float, seed, word_padding_idx: int, position_padding_idx: int,
                   has_bias: bool = True)
        -> (dword [V, E], dposition [P, E] (empty without a table), dtoken_type [T, E] (empty without a table),
            dweight [E], dbias [E] (empty without has_bias))
   with padding_idx -1 meaning none; position_ids and position are None together, as are token_type_ids and
   token_type; tables and LayerNorm parameters are passed contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastenc import backends, dispatch
from fastenc.ops._common import check_dropout_p, check_last_dim, dropout_seed


def embeddings_ref(
    input_ids: torch.Tensor | None,
    word_embeddings: torch.Tensor,
    position_ids: torch.Tensor | None,
    position_embeddings: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    token_type_embeddings: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-12,
    dropout_p: float = 0.0,
    inputs_embeds: torch.Tensor | None = None,
    word_padding_idx: int | None = None,
    position_padding_idx: int | None = None,
) -> torch.Tensor:
    """Reference, summing in transformers' order (word + token type + position); absent tables are skipped."""
    h = F.embedding(input_ids, word_embeddings, word_padding_idx) if inputs_embeds is None else inputs_embeds
    if token_type_embeddings is not None:
        h = h + F.embedding(token_type_ids, token_type_embeddings)
    if position_embeddings is not None:
        h = h + F.embedding(position_ids, position_embeddings, position_padding_idx)
    y = F.layer_norm(h, (h.shape[-1],), weight, bias, eps)
    return F.dropout(y, dropout_p, training=True) if dropout_p > 0 else y


ID_DTYPES = (torch.int64, torch.int32)  # what torch's embedding gather takes


def _check_ids(ids: torch.Tensor | None, name: str, shape: torch.Size) -> torch.Tensor | None:
    """Type and shape of one id tensor; broadcast to the input's shape."""
    if ids is None:
        return None
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer ids, got {type(ids).__name__}")
    if ids.dtype not in ID_DTYPES:  # uint8 / int16 would reach torch's gather, whose error names no argument
        raise TypeError(f"{name} must hold integer ids (torch.long or torch.int), got dtype {ids.dtype}")
    try:
        return ids.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(ids.shape)} does not match the input's shape {tuple(shape)}"
        ) from None


def _check_id_ranges(checks: list[tuple[torch.Tensor | None, str, int, str]]) -> None:
    """Every (ids, name, table size, table name) in range. CPU ids: an IndexError naming the argument and the id.
    GPU ids: an on-device assert per argument (no host sync; as torch's embedding on a GPU, a failure is a
    device-side assert naming the argument, raised at the next sync), queued ahead of the kernel so that no
    kernel ever reads outside a table. Also while torch.compile traces or a CUDA graph captures."""
    checks = [c for c in checks if c[0] is not None and c[0].numel()]
    if not checks:
        return
    if checks[0][0].device.type != "cpu":
        for ids, name, num, table in checks:
            torch._assert_async((ids.min() >= 0) & (ids.max() < num),
                                f"{name} holds an id outside [0, {num}) of the {table} table")
        return
    if torch.compiler.is_compiling():
        return
    bounds = torch.stack([torch.stack([ids.min(), ids.max()]).long() for ids, *_ in checks]).tolist()
    for (lo, hi), (_, name, num, table) in zip(bounds, checks, strict=True):
        if lo < 0 or hi >= num:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name} holds id {bad}, outside [0, {num}) of the {table} table (size {num})")


def _forward(ids, pos_ids, tt_ids, word, pos, tt, weight, bias, eps, dropout_p, backend):
    """The launch both paths share: (y [*ids.shape, E], the saved tensors, seed)."""
    flat = [None if t is None else t.reshape(-1).contiguous().long() for t in (ids, pos_ids, tt_ids)]
    seed = dropout_seed(word.device) if dropout_p > 0 else None
    word, weight = word.contiguous(), weight.contiguous()
    pos, tt, bias = (None if t is None else t.contiguous() for t in (pos, tt, bias))
    y, mean, rstd = backends.launchers(backend, "embeddings").embeddings_fwd(
        *flat, word, pos, tt, weight, bias, float(eps), dropout_p, seed)
    return y.view(*ids.shape, word.shape[-1]), (*flat, word, pos, tt, weight, mean, rstd, seed)


class EmbeddingsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, pos_ids, tt_ids, word, pos, tt, weight, bias, eps, dropout_p, pads, backend):
        y, saved = _forward(ids, pos_ids, tt_ids, word, pos, tt, weight, bias, eps, dropout_p, backend)
        ctx.save_for_backward(*saved)
        ctx.dropout_p, ctx.pads, ctx.backend, ctx.has_bias = dropout_p, pads, backend, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        ids, pos_ids, tt_ids, word, pos, tt, weight, mean, rstd, seed = ctx.saved_tensors
        impl = backends.launchers(ctx.backend, "embeddings")
        dword, dpos, dtt, dweight, dbias = impl.embeddings_bwd(
            dy.reshape(-1, dy.shape[-1]).contiguous(), ids, pos_ids, tt_ids, word, pos, tt, weight, mean, rstd,
            ctx.dropout_p, seed, *ctx.pads, ctx.has_bias,
        )
        dpos = dpos if pos is not None else None
        dtt = dtt if tt is not None else None
        dbias = dbias if ctx.has_bias else None
        return None, None, None, dword, dpos, dtt, dweight, dbias, None, None, None, None


def embeddings(
    input_ids: torch.Tensor | None,
    word_embeddings: torch.Tensor,
    position_ids: torch.Tensor | None,
    position_embeddings: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    token_type_embeddings: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-12,
    *,
    dropout_p: float = 0.0,
    inputs_embeds: torch.Tensor | None = None,
    word_padding_idx: int | None = None,
    position_padding_idx: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Sum of word, token-type and position embeddings, LayerNorm and dropout; output shape ids.shape + [E].

    position_ids and token_type_ids broadcast to the input's shape. Exactly one of input_ids / inputs_embeds.
    position_ids / position_embeddings None: no position table (rotary models); bias None: bias-free LayerNorm.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("exactly one of input_ids and inputs_embeds must be given")
    if (token_type_ids is None) != (token_type_embeddings is None):
        raise ValueError("token_type_ids and token_type_embeddings must be given together")
    if (position_ids is None) != (position_embeddings is None):
        raise ValueError("position_ids and position_embeddings must be given together")
    shape = input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:-1]
    e = word_embeddings.shape[-1]
    input_ids = _check_ids(input_ids, "input_ids", shape)
    position_ids = _check_ids(position_ids, "position_ids", shape)
    ranges = [(input_ids, "input_ids", word_embeddings.shape[0], "word embedding")]
    if position_embeddings is not None:
        ranges.append((position_ids, "position_ids", position_embeddings.shape[0], "position embedding"))
    if token_type_embeddings is not None:
        token_type_ids = _check_ids(token_type_ids, "token_type_ids", shape)
        ranges.append((token_type_ids, "token_type_ids", token_type_embeddings.shape[0], "token type embedding"))
    _check_id_ranges(ranges)
    if inputs_embeds is not None and inputs_embeds.shape[-1] != e:
        raise ValueError(f"inputs_embeds must have last dim {e} (the embedding size), got {inputs_embeds.shape[-1]}")
    check_last_dim(weight, e, "weight", "the embedding tables")
    check_last_dim(bias, e, "bias", "the embedding tables")
    dropout_p = check_dropout_p(dropout_p)
    call = backends.Call(
        "embeddings", {"input_ids": input_ids, "position_ids": position_ids, "token_type_ids": token_type_ids,
                       "word_embeddings": word_embeddings, "position_embeddings": position_embeddings,
                       "token_type_embeddings": token_type_embeddings, "weight": weight, "bias": bias,
                       "inputs_embeds": inputs_embeds},
        # numel() of the tensor, not of its torch.Size: Size.numel() specialises symbolic sizes while tracing
        length=input_ids.numel() if inputs_embeds is None else inputs_embeds.numel() // e, hidden=e,
        dropout=dropout_p > 0,
        features=("inputs_embeds",) if inputs_embeds is not None else (),
    )

    def run(name: str) -> torch.Tensor:
        return embeddings(input_ids, word_embeddings, position_ids, position_embeddings, token_type_ids,
                          token_type_embeddings, weight, bias, eps, dropout_p=dropout_p, inputs_embeds=inputs_embeds,
                          word_padding_idx=word_padding_idx, position_padding_idx=position_padding_idx, backend=name)

    def apply(name: str) -> torch.Tensor:
        pads = tuple(-1 if i is None else i for i in (word_padding_idx, position_padding_idx))
        return EmbeddingsFn.apply(
            input_ids, position_ids, token_type_ids, word_embeddings, position_embeddings, token_type_embeddings,
            weight, bias, eps, dropout_p, pads, name,
        )

    return dispatch.run_op(
        call, backend, run,
        ref=lambda: embeddings_ref(
            input_ids, word_embeddings, position_ids, position_embeddings, token_type_ids, token_type_embeddings,
            weight, bias, eps, dropout_p, inputs_embeds, word_padding_idx, position_padding_idx,
        ),
        launch=lambda name: _forward(input_ids, position_ids, token_type_ids, word_embeddings, position_embeddings,
                                     token_type_embeddings, weight, bias, eps, dropout_p, name)[0],
        apply=apply,
        grad_inputs=(word_embeddings, position_embeddings, token_type_embeddings, weight, bias),
    )
