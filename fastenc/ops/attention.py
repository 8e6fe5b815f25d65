"""attention: softmax(q k^T * scale + mask) v, flash-style (tiled, online softmax, no [S, S] matrix in memory).

Two layouts, both read in place (q, k, v may be strided views of one fused QKV projection output; only the last
dim must be unit-stride):
  padded  q, k, v [B, S, H, D] with an optional key padding mask [B, S] (nonzero / True = attend), any pattern;
  packed  q, k, v [T, H, D] with cu_seqlens [B + 1] int32 (sequence b is rows cu[b]:cu[b+1]) and max_seqlen.
The output has q's layout and shape, contiguous. A query row with no key to attend to gives zeros and zero
gradients, as transformers' default (sdpa) attention does. An additive float mask (`attn_bias`, transformers'
4-D masks) and returning the probabilities run on the reference path only.
window: a symmetric local window (ModernBERT's local layers): query i attends key j of its own sequence only if
|i - j| <= window (positions within each sequence; padded rows are positions 0..S-1 of their row, as transformers'
sliding_window_bidirectional_overlay counts them). The call carries feature "window"; kernels skip the key blocks
outside the window.
dropout_p: the kernels (Triton and CUDA) draw one mask scheme (Philox4x32-7, 8-bit slices; fastenc.kernels.attention):
an attention probability is kept with probability 1 - ceil(256 dropout_p) / 256 (within 2**-8 of 1 - dropout_p) and
scaled by 1 / (1 - dropout_p); the torch paths use torch's dropout.

Launcher contract (fastenc.kernels.attention and fastenc._cuda):
    attention_fwd(q, k, v, key_padding_mask [B, S] contiguous bool | None, cu_seqlens [B + 1] int32 | None,
                  max_seqlen: int, softmax_scale: float, dropout_p: float, seed [1] int64 | None, window: int)
        -> (o like q, contiguous; lse fp32: [B, H, S] padded or [H, T] packed)
    attention_bwd(do, q, k, v, o, lse, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, seed,
                  window)
        -> (dq, dk, dv) shaped like q, k, v
    window: the half width of the local window, -1 for none.
What each backend supports is declared in its module (SUPPORT, see fastenc.backends). Backend "sdpa" is torch's
own attention (fastenc._sdpa): attention(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, attn_bias,
softmax_scale, dropout_p, window) -> o (window -1 = none), differentiated by torch's autograd.
"""

from __future__ import annotations

import math

import torch

from fastenc import backends, dispatch
from fastenc.ops._common import check_dropout_p, dropout_seed


def _pad(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, H, D] packed -> ([B, max_seqlen, H, D] zero-padded, key mask [B, max_seqlen])."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    keep = torch.arange(max_seqlen, device=x.device)[None, :] < lens[:, None]
    out = x.new_zeros(lens.shape[0], max_seqlen, *x.shape[1:])
    out[keep] = x
    return out, keep


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    return_probs: bool = False,
    dropout_mask: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference attention in plain PyTorch, both layouts. Matmuls in the input dtype, softmax in fp32.

    attn_bias: additive float mask broadcastable to [B, H, S, S] (padded layout only).
    dropout_mask: bool keep-mask [B, H, S, S] (padded coordinates also for the packed layout) applied instead of
    torch's dropout, so tests can replay a kernel's mask; kept probabilities are scaled by 1 / (1 - dropout_p).
    return_probs: also return the (pre-dropout) probabilities [B, H, S, S].
    window: query i attends key j only if |i - j| <= window, positions within each sequence (None: no window).
    """
    packed = cu_seqlens is not None
    if packed:
        keep_tok = None
        q, keep_tok = _pad(q, cu_seqlens, max_seqlen)
        k, _ = _pad(k, cu_seqlens, max_seqlen)
        v, _ = _pad(v, cu_seqlens, max_seqlen)
        key_padding_mask = keep_tok
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    scores = torch.matmul(qh, kh.transpose(-1, -2)).float() * scale
    if attn_bias is not None:
        scores = scores + attn_bias.float()
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask.bool()[:, None, None, :].expand(scores.shape)
    if attn_bias is not None:
        finite = torch.isfinite(attn_bias).expand(scores.shape) if attn_bias.is_floating_point() else None
        if finite is not None:
            allowed = finite if allowed is None else allowed & finite
    if window is not None:
        pos = torch.arange(scores.shape[-1], device=scores.device)
        near = ((pos[:, None] - pos[None, :]).abs() <= window).expand(scores.shape)
        allowed = near if allowed is None else allowed & near
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
        any_key = allowed.any(-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        probs = probs * any_key  # rows with no key: zero output, zero gradient
    probs_out = probs
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    elif dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, dropout_p, training=True)
    out = torch.matmul(probs.to(vh.dtype), vh).transpose(1, 2)  # [B, S, H, D]
    if packed:
        out = out[keep_tok]
    out = out.contiguous()
    return (out, probs_out.to(q.dtype)) if return_probs else out


class AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, window, backend):
        impl = backends.launchers(backend, "attention")
        seed = dropout_seed(q.device) if dropout_p > 0 else None
        o, lse = impl.attention_fwd(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, softmax_scale, dropout_p, seed,
                                    window)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask, cu_seqlens, seed)
        ctx.max_seqlen, ctx.softmax_scale, ctx.dropout_p, ctx.window = max_seqlen, softmax_scale, dropout_p, window
        ctx.backend = backend
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, mask, cu_seqlens, seed = ctx.saved_tensors
        impl = backends.launchers(ctx.backend, "attention")
        dq, dk, dv = impl.attention_bwd(
            do.contiguous(), q, k, v, o, lse, mask, cu_seqlens, ctx.max_seqlen, ctx.softmax_scale, ctx.dropout_p, seed,
            ctx.window,
        )
        return dq, dk, dv, None, None, None, None, None, None, None


def _kernel_mask(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask as the kernels read it: contiguous bool."""
    if key_padding_mask is None:
        return None
    return (key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0).contiguous()


def _check_layout(q, k, v, key_padding_mask, cu_seqlens, max_seqlen) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected {q.dtype} like q")
    if cu_seqlens is None:
        if q.dim() != 4:
            raise ValueError(f"q must be [batch, seq, heads, head_dim] (or packed [tokens, heads, head_dim] with "
                             f"cu_seqlens), got shape {tuple(q.shape)}")
        if k.shape != q.shape or v.shape != q.shape:
            raise ValueError(f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (q.shape[0], q.shape[1]):
            raise ValueError(f"key_padding_mask must have shape [batch, seq] = {(q.shape[0], q.shape[1])}, "
                             f"got {tuple(key_padding_mask.shape)}")
    else:
        if q.dim() != 3:
            raise ValueError(f"with cu_seqlens, q must be packed [tokens, heads, head_dim], got {tuple(q.shape)}")
        if k.shape != q.shape or v.shape != q.shape:
            raise ValueError(f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if key_padding_mask is not None:
            raise ValueError("key_padding_mask and cu_seqlens are exclusive: packed batches carry no padding")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be int32 [batch + 1], got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
        if max_seqlen is None or max_seqlen < 1:
            raise ValueError(f"max_seqlen must be a positive int with cu_seqlens, got {max_seqlen!r}")


def _check_window(window) -> int:
    """The launchers' window argument: the int itself, -1 for None."""
    if window is None:
        return -1
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0 (query i attends keys j with |i - j| <= window) or None, "
                         f"got {window!r}")
    return int(window)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    window: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over the padded or packed layout (see the module doc)."""
    _check_layout(q, k, v, key_padding_mask, cu_seqlens, max_seqlen)
    dropout_p = check_dropout_p(dropout_p)
    win = _check_window(window)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    packed = cu_seqlens is not None
    # the padded layout's max_seqlen is its length; a traced one may be symbolic: int() would specialise the graph
    seqlen = (max_seqlen if isinstance(max_seqlen, torch.SymInt) else int(max_seqlen)) if packed else q.shape[1]
    call = backends.Call(
        "attention", {"q": q, "k": k, "v": v, "key_padding_mask": key_padding_mask, "cu_seqlens": cu_seqlens,
                      "attn_bias": attn_bias},
        length=seqlen, layout="packed" if packed else "padded",
        head_dim=q.shape[-1], dropout=dropout_p > 0,
        features=(*(("attn_bias",) if attn_bias is not None else ()), *(("window",) if window is not None else ())),
    )

    def run(name: str) -> torch.Tensor:
        return attention(q, k, v, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                         attn_bias=attn_bias, dropout_p=dropout_p, softmax_scale=scale, window=window, backend=name)

    def launch(name: str) -> torch.Tensor:
        if name == "sdpa":  # torch's own op: it takes the mask as given and records autograd itself
            return backends.launchers(name, "attention").attention(
                q, k, v, key_padding_mask, cu_seqlens, seqlen, attn_bias, scale, dropout_p, win)
        seed = dropout_seed(q.device) if dropout_p > 0 else None
        return backends.launchers(name, "attention").attention_fwd(
            q, k, v, _kernel_mask(key_padding_mask), cu_seqlens, seqlen, scale, dropout_p, seed, win)[0]

    return dispatch.run_op(
        call, backend, run,
        ref=lambda: attention_ref(q, k, v, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens,
                                  max_seqlen=max_seqlen, attn_bias=attn_bias, dropout_p=dropout_p,
                                  softmax_scale=scale, window=window),
        launch=launch,
        apply=lambda name: AttentionFn.apply(q, k, v, _kernel_mask(key_padding_mask), cu_seqlens, seqlen, scale,
                                             dropout_p, win, name),
        grad_inputs=(q, k, v),
        own_autograd=("sdpa",),
    )
