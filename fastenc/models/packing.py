"""Padding-free execution: which layout a forward runs in, and the gather / scatter between the two.

The layers run either on the padded batch [B, S, hidden] with a key padding mask, or on the real tokens only
([T, hidden] with cu_seqlens, the packed layout of FlashAttention's varlen kernels). Three ways into the packed
layout:
  - padding removed automatically (`choose_packing`): when a batch has padding and every row starts with a real
    token, in eager mode; the result is re-padded with zeros at padded positions;
  - sequences flattened by the caller, as transformers' DataCollatorWithFlattening gives them: rows of concatenated
    sequences whose position_ids restart at the row's first value (`packing_from_positions`), or the collator's
    flash-attention kwargs cu_seq_lens_q / max_length_q; each sequence then attends only to itself;
  - nothing else: left-padded batches (the pooler reads position 0), traced or graph-captured calls stay padded.
    Packing needs the token count and the longest row on the host (one read), sizes that torch.compile and
    torch.export could only hold as unbacked symbols: every traced op after the gather would then need them checked
    at run time, and SDPA's CPU path loops over sequences. A traced call runs padded instead, with the same numbers
    as transformers at every position, and its graph is independent of the padding pattern; the price is the compute
    on padding, measured in benchmarks/results/compile-dynamic-shapes.md (eager CPU as the proxy).

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

# The layout decision of the outermost fastenc forward in progress: (unpad: None / True / False, labels whose loss
# reads padded positions unless they are -100 there, or None). Unset outside one.
_UNPAD: contextvars.ContextVar[tuple[bool | None, torch.Tensor | None]] = contextvars.ContextVar("fastenc_unpad")
_UNSET = object()


@contextlib.contextmanager
def unpad_scope(unpad: bool | None, labels: torch.Tensor | None = None) -> Iterator[None]:
    """Make `unpad` the decision for the encoders run inside, unless an outer scope already decided. `labels`
    ([B, S] token labels of a loss): the encoder packs only if every label at a padded position is -100."""
    if _UNPAD.get(_UNSET) is not _UNSET:
        yield
        return
    token = _UNPAD.set((unpad, labels))
    try:
        yield
    finally:
        _UNPAD.reset(token)


def scoped_unpad(default: bool | None) -> tuple[bool | None, torch.Tensor | None]:
    """(decision, labels) in force: the enclosing unpad_scope's decision when it is True or False, else `default`
    (the encoder's own setting: False after optimize(unpad=False), else None)."""
    value, labels = _UNPAD.get((None, None))
    return (default if value is None else value), labels


def tracing(t: torch.Tensor) -> bool:
    """True while torch.compile traces or a CUDA graph captures: no host sync, no data-dependent shapes then."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def true_positions(flat: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` True entries of a 1-D bool tensor, in order, like `flat.nonzero()` but with no
    host sync (the count is known): each True entry is scattered to its running count, the others to a spare slot
    that is dropped."""
    slot = torch.where(flat, flat.cumsum(0) - 1, count)
    out = torch.empty(count + 1, dtype=torch.long, device=flat.device)
    return out.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))[:count]


class Packing:
    """The packed layout of a [B, S] batch: cu_seqlens [n + 1] int32, max_seqlen, and the flat row index of each
    kept token (None when every position is kept: packing is then a reshape)."""

    def __init__(self, batch: int, seq: int, cu_seqlens: torch.Tensor, max_seqlen: int,
                 index: torch.Tensor | None) -> None:
        self.batch, self.seq = batch, seq
        self.cu_seqlens, self.max_seqlen, self.index = cu_seqlens, max_seqlen, index

    @classmethod
    def from_keep(cls, keep: torch.Tensor, lens: torch.Tensor, max_seqlen: int, tokens: int) -> Packing:
        """Keep the True positions of a [B, S] mask (row lengths `lens`, `tokens` in all, at most `max_seqlen` per
        row), one sequence per row. No host sync: the counts come from the caller's one read."""
        cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        return cls(*keep.shape, cu, max(1, max_seqlen), true_positions(keep.reshape(-1), tokens))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H] -> [1, T, H]: one row of tokens, so sequence-dim code (feed-forward chunking) still applies."""
        flat = x.reshape(self.batch * self.seq, x.shape[-1])
        return (flat if self.index is None else flat.index_select(0, self.index)).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        if self.index is not None:
            x = x.new_zeros(self.batch * self.seq, x.shape[-1]).index_copy(0, self.index, x)
        return x.view(self.batch, self.seq, x.shape[-1])


def choose_packing(keep: torch.Tensor, unpad: bool | None, labels: torch.Tensor | None = None,
                   one_run: bool = False) -> tuple[Packing | None, torch.Tensor | None]:
    """The layout for a 2-D keep mask [B, S] (True = real token): (Packing, None) for the packed layout, or
    (None, mask) for the padded one, mask None when no position is padded. unpad=True packs, False never does;
    None (auto) packs when the batch has padding and every row starts with a real token, in eager mode only.
    Never packs when `labels` (token labels of the loss) are not -100 at some padded position, nor, with
    `one_run` (a model whose attention windows measure distances in the row: ModernBERT), when a row's real tokens
    are not one contiguous run (packing would close the gaps).

    Host syncs: none for unpad=False or while tracing; otherwise exactly one read, of everything at once
    (whether anything is padded, the first column, the longest row, the token count, the labels and runs checks)."""
    if unpad is False or tracing(keep):
        return None, keep
    lens = keep.sum(1, dtype=torch.int32)
    stats = [~keep.all(), keep[:, 0].all(), lens.max(), lens.sum()]
    if labels is not None:
        stats.append(((labels != -100) & ~keep.to(labels.device)).any().to(keep.device))
    if one_run:  # a run starts where a real token follows a padded one (or the row's start): at most one per row
        starts = keep[:, 1:] & ~keep[:, :-1]
        stats.append((starts.sum(1) + keep[:, 0].long() > 1).any())
    has_padding, first_real, max_len, tokens, *refusals = torch.stack([t.long() for t in stats]).tolist()
    if any(refusals) or (unpad is None and not (has_padding and first_real)):
        return None, keep if has_padding else None
    return Packing.from_keep(keep, lens, max_len, tokens), None


def packing_from_positions(position_ids: torch.Tensor, batch: int, seq: int) -> Packing | None:
    """Flattened sequences: a new sequence starts wherever a row's position id returns to the row's first value,
    and positions count up by one inside a sequence. None when position_ids show no such restart (ordinary
    positions) or are not of this form, and while tracing. One host read."""
    if position_ids.dim() != 2 or tracing(position_ids):
        return None
    pos = position_ids.expand(batch, seq)
    start = pos == pos[:, :1]
    consecutive = (pos[:, 1:] - pos[:, :-1] == 1) | start[:, 1:]
    longest = (pos - pos[:, :1]).max() + 1  # a sequence's positions run from the row's first value
    restarts, valid, sequences, max_len = torch.stack(
        [start[:, 1:].any().long(), consecutive.all().long(), start.sum(), longest.long()]).tolist()
    if not (restarts and valid):
        return None
    starts = true_positions(start.reshape(-1), sequences)
    cu = F.pad(starts.to(torch.int32), (0, 1), value=batch * seq)
    return Packing(batch, seq, cu, max_len, None)


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
