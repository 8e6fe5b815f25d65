"""Flattened batches as transformers' DataCollatorWithFlattening gives them (one row of concatenated sequences,
position_ids restarting at 0, optionally the flash-attention kwargs cu_seq_lens_q / max_length_q): each sequence
attends only to itself, so every position equals running that sequence alone, and so do the loss and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening

import fastenc
from tests.models.harness import PREFIX, ROTARY, assert_close, assert_grads_close, build_hf

LENGTHS = (5, 3, 7)


def _sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 99, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.mark.parametrize("flash_kwargs", [False, True], ids=["position_ids", "cu_seq_lens"])
# GTE / NomicBERT where the release has them: base models that pack their own inputs (rotary_blocks)
@pytest.mark.parametrize("name", ["BertForMaskedLM", "AlbertForMaskedLM", *(PREFIX[f] + "ForMaskedLM" for f in ROTARY)])
def test_flattened_batch_equals_separate_sequences(name, flash_kwargs):
    seqs = _sequences()
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)([{"input_ids": s} for s in seqs])
    ours = fastenc.from_hf(build_hf(name)).train()
    separate = fastenc.from_hf(build_hf(name)).train()
    flat = ours(**batch)
    assert flat.logits.shape == (1, sum(LENGTHS), 99)
    losses, start, pieces = [], 0, []
    labels = batch["labels"][0]
    for s in seqs:
        n = len(s)
        out = separate(input_ids=torch.tensor([s]), labels=labels[start:start + n][None], unpad=False)
        pieces.append(out.logits[0])
        losses.append(out.loss * int((labels[start:start + n] != -100).sum()))
        start += n
    assert_close(flat.logits[0], torch.cat(pieces), 1e-5, "logits")
    total = sum(losses) / int((labels != -100).sum())
    assert_close(flat.loss, total, 1e-5, "loss")
    flat.loss.backward()
    total.backward()
    assert_grads_close(ours, separate, 1e-4)


def test_ordinary_position_ids_are_not_split():
    ours = fastenc.from_hf(build_hf("BertModel")).eval()
    ids = torch.randint(3, 99, (2, 6))
    with torch.no_grad():
        a = ours(ids).last_hidden_state
        b = ours(ids, position_ids=torch.arange(6)[None]).last_hidden_state
        shifted = ours(ids, position_ids=torch.arange(2, 8)[None]).last_hidden_state
    assert torch.equal(a, b)
    assert (a - shifted).abs().max() > 1e-3  # other positions, one sequence per row: no split


def test_output_attentions_with_flattened_batch():
    """transformers >= 5.25 masks flattened sequences from each other in its own eager attention (a 4-D mask), so
    their probabilities are transformers'; before, fastenc refuses (transformers' would cross the boundaries)."""
    batch = DataCollatorWithFlattening()([{"input_ids": s} for s in _sequences()])
    hf = build_hf("BertModel").eval()
    hf.set_attn_implementation("eager")
    ours = fastenc.from_hf(hf).eval()
    ours.set_attn_implementation("eager")
    call = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], output_attentions=True)
    with torch.no_grad():
        theirs = hf(**call)
    first = LENGTHS[0]
    if theirs.attentions[0][0, :, :first, first:].abs().max() > 0:  # this release lets sequences attend across
        with pytest.raises(ValueError, match="output_attentions"):
            ours(**call)
        return
    with torch.no_grad():
        out = ours(**call)
    for a, b in zip(out.attentions, theirs.attentions, strict=True):
        assert_close(a, b, 1e-5, "attentions")
    assert_close(out.last_hidden_state, theirs.last_hidden_state, 1e-5, "last_hidden_state")
