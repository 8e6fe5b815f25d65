"""Padding-free execution: which layout a forward runs in, and the gather / scatter between the two.

The layers run either on the padded batch [B, S, hidden] with a key padding mask, or on the real tokens only
([T, hidden] with cu_seqlens, the packed layout of FlashAttention's varlen kernels). Three ways into the packed
layout:
  - padding removed automatically (`choose_packing`): when a batch has padding and every row starts with a real
    token, in eager mode; the result is re-padded with zeros at padded positions;
  - sequences flattened by the caller, as transformers' DataCollatorWithFlattening gives them: rows of concatenated
    sequences whose position_ids restart at the row's first value (`packing_from_positions`), or the collator's
    flash-attention kwargs cu_seq_lens_q / max_length_q; each sequence then attends only to itself;
  - nothing else: left-padded batches (the pooler reads position 0), traced or graph-captured calls (data-dependent
    shapes) stay padded.

Trade-off: transformers also computes values at padded query positions (they attend to the real keys); the packed
path skips that work, so every real position, the pooled output and every loss that ignores padded positions are
the same, but padded positions of hidden states and logits read zeros. A loss that does read padded positions (QA
spans, token labels that are not -100 at padding) must stay padded: the heads decide that (`fastenc.models.heads`)
and say so through `unpad_scope`, the one channel from a model's forward to its encoder.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F

# The unpad decision of the outermost fastenc forward in progress: None (auto), True or False. Unset outside one.
_UNPAD: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fastenc_unpad")
_UNSET = object()


@contextlib.contextmanager
def unpad_scope(unpad: bool | None) -> Iterator[None]:
    """Make `unpad` the decision for the encoders run inside, unless an outer scope already decided."""
    if _UNPAD.get(_UNSET) is not _UNSET:
        yield
        return
    token = _UNPAD.set(unpad)
    try:
        yield
    finally:
        _UNPAD.reset(token)


def scoped_unpad(default: bool | None) -> bool | None:
    """The decision in force: the enclosing unpad_scope's when it is True or False, else `default` (the encoder's
    own setting: False after optimize(unpad=False), else None)."""
    value = _UNPAD.get(None)
    return default if value is None else value


def tracing(t: torch.Tensor) -> bool:
    """True while torch.compile traces or a CUDA graph captures: no host sync, no data-dependent shapes then."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


class Packing:
    """The packed layout of a [B, S] batch: cu_seqlens [n + 1] int32, max_seqlen, and the flat row index of each
    kept token (None when every position is kept: packing is then a reshape)."""

    def __init__(self, batch: int, seq: int, cu_seqlens: torch.Tensor, max_seqlen: int,
                 index: torch.Tensor | None) -> None:
        self.batch, self.seq = batch, seq
        self.cu_seqlens, self.max_seqlen, self.index = cu_seqlens, max_seqlen, index

    @classmethod
    def from_keep(cls, keep: torch.Tensor) -> Packing:
        """Keep the True positions of a [B, S] mask, one sequence per row."""
        lens = keep.sum(1, dtype=torch.int32)
        cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        return cls(*keep.shape, cu, max(1, int(lens.max())), keep.reshape(-1).nonzero().squeeze(1))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H] -> [1, T, H]: one row of tokens, so sequence-dim code (feed-forward chunking) still applies."""
        flat = x.reshape(self.batch * self.seq, x.shape[-1])
        return (flat if self.index is None else flat.index_select(0, self.index)).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        if self.index is not None:
            x = x.new_zeros(self.batch * self.seq, x.shape[-1]).index_copy(0, self.index, x)
        return x.view(self.batch, self.seq, x.shape[-1])


def choose_packing(keep: torch.Tensor, unpad: bool | None) -> Packing | None:
    """The packed layout for a 2-D keep mask [B, S] (True = real token), or None for the padded layout.
    unpad=True packs, False never does; None (auto) packs when the batch has padding and every row starts with a
    real token, in eager mode only (the check reads the mask: one host sync)."""
    if unpad is False:
        return None
    if unpad is None:
        if tracing(keep):
            return None
        has_padding, first_real = torch.stack([~keep.all(), keep[:, 0].all()]).tolist()
        if not (has_padding and first_real):
            return None
    return Packing.from_keep(keep)


def packing_from_positions(position_ids: torch.Tensor, batch: int, seq: int) -> Packing | None:
    """Flattened sequences: a new sequence starts wherever a row's position id returns to the row's first value,
    and positions count up by one inside a sequence. None when position_ids show no such restart (ordinary
    positions) or are not of this form, and while tracing."""
    if position_ids.dim() != 2 or tracing(position_ids):
        return None
    pos = position_ids.expand(batch, seq)
    start = pos == pos[:, :1]
    consecutive = (pos[:, 1:] - pos[:, :-1] == 1) | start[:, 1:]
    restarts, valid = torch.stack([start[:, 1:].any(), consecutive.all()]).tolist()
    if not (restarts and valid):
        return None
    starts = start.reshape(-1).nonzero().squeeze(1).to(torch.int32)
    cu = torch.cat([starts, starts.new_tensor([batch * seq])])
    return Packing(batch, seq, cu, int((cu[1:] - cu[:-1]).max()), None)


def packing_from_kwargs(kwargs: dict, batch: int, seq: int) -> Packing | None:
    """DataCollatorWithFlattening's flash-attention kwargs (cu_seq_lens_q, max_length_q) over a [1, T] row."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return None
    if batch != 1:
        raise ValueError(f"cu_seq_lens_q describes one flattened row; input has batch size {batch}")
    cu = cu.to(torch.int32)
    max_len = kwargs.get("max_length_q")
    max_len = int((cu[1:] - cu[:-1]).max()) if max_len is None else int(max_len)
    return Packing(batch, seq, cu, max_len, None)
