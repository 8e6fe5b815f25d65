"""Padding-free execution (auto, forward(unpad=...), config.fastenc_unpad): real positions equal the padded path and
transformers, padded positions are zeros, and losses that ignore padding (token labels -100, [CLS] with right
padding, ELECTRA's RTD over attention_mask) give transformers' loss and gradients."""

from __future__ import annotations

import pytest
import torch

import fastenc
from tests.models.harness import (
    assert_close,
    assert_grads_close,
    build_hf,
    inputs,
    labels_for,
)

HEADS = ["BertForTokenClassification", "RobertaForMaskedLM", "AlbertForMaskedLM", "ElectraForPreTraining"]


@pytest.mark.parametrize("name", ["BertModel", "RobertaModel", "AlbertModel", "ElectraModel"])
def test_packed_equals_padded_and_transformers_on_real_positions(name):
    hf = build_hf(name)
    ours = fastenc.from_hf(hf)
    inp = inputs(name)
    real = inp["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inp, output_hidden_states=True)
        padded = ours(**inp, output_hidden_states=True)  # recorded states: the padded layout, exact everywhere
        packed = ours(**inp, unpad=True)
    assert len(padded.hidden_states) == len(ref.hidden_states)
    for i, (q, r) in enumerate(zip(padded.hidden_states, ref.hidden_states, strict=True)):
        assert_close(q, r, 1e-5, f"hidden_states.{i}")
    assert_close(packed.last_hidden_state, ref.last_hidden_state, 1e-5, "last_hidden_state", mask=real)
    assert torch.equal(packed.last_hidden_state[~real], torch.zeros_like(packed.last_hidden_state[~real]))
    ours.config.fastenc_unpad = True
    with torch.no_grad():
        by_config = ours(**inp)
    ours.config.fastenc_unpad = False
    assert torch.equal(by_config.last_hidden_state, packed.last_hidden_state)


@pytest.mark.parametrize("name", HEADS)
def test_packed_training_loss_and_grads_match_transformers(name):
    hf = build_hf(name).train()
    ours = fastenc.from_hf(build_hf(name)).train()
    inp = inputs(name)
    lab = labels_for(name, inp)
    ref = hf(**inp, **lab).loss
    out = ours(**inp, **lab, unpad=True).loss
    assert_close(out, ref, 1e-4, "loss")
    ref.backward()
    out.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_packed_sequence_classification_with_right_padding():
    name = "RobertaForSequenceClassification"
    hf = build_hf(name).train()
    ours = fastenc.from_hf(build_hf(name)).train()
    inp = inputs("roberta", batch=3)
    inp["attention_mask"][2] = 1  # rows: full, right-padded, full ([CLS] is a real token everywhere)
    lab = labels_for(name, inp)
    ref = hf(**inp, **lab)
    out = ours(**inp, **lab, unpad=True)
    assert_close(out.logits, ref.logits, 1e-5, "logits")
    ref.loss.backward()
    out.loss.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_packed_falls_back_to_padded_for_attentions_and_4d_masks():
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    with torch.no_grad():
        out = ours(**inp, unpad=True, output_attentions=True)
        ref = ours(**inp)
    assert len(out.attentions) == 2
    assert_close(out.last_hidden_state, ref.last_hidden_state, 1e-6, "last_hidden_state (all positions)")
    bias = torch.zeros(3, 1, 10, 10)
    with torch.no_grad():
        four_d = ours(inp["input_ids"], attention_mask=bias, unpad=True)
        full = ours(inp["input_ids"])
    assert_close(four_d.last_hidden_state, full.last_hidden_state, 1e-6, "4-D zero mask")


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "RobertaModel", "AlbertModel", "ElectraModel"])
def test_auto_packs_right_padded_batches_and_unpad_false_is_exact_everywhere(name):
    hf = build_hf(name)
    ours = fastenc.from_hf(hf)
    inp = inputs(name, batch=2)  # a full row and a right-padded row: auto packs
    real = inp["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inp)
        auto = ours(**inp)
        exact = ours(**inp, unpad=False)
    first = "logits" if "For" in name else "last_hidden_state"
    if first == "last_hidden_state":
        assert_close(auto.last_hidden_state, ref.last_hidden_state, 1e-5, "auto", mask=real)
        assert torch.equal(auto.last_hidden_state[~real], torch.zeros_like(auto.last_hidden_state[~real]))
        assert_close(exact.last_hidden_state, ref.last_hidden_state, 1e-5, "unpad=False")
    else:
        assert_close(auto.logits, ref.logits, 1e-5, "auto logits")  # [CLS] pooling is unaffected by packing
        assert_close(exact.logits, ref.logits, 1e-5, "unpad=False logits")
    if "pooler_output" in ref and ref.pooler_output is not None:
        assert_close(auto.pooler_output, ref.pooler_output, 1e-5, "pooler_output")


def test_choose_packing_rule():
    from fastenc.models.packing import choose_packing

    right = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    left = torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    full = torch.ones(2, 3, dtype=torch.bool)
    packed, mask = choose_packing(right, None)
    assert mask is None and packed.cu_seqlens.tolist() == [0, 3, 5] and packed.max_seqlen == 3
    assert packed.index.tolist() == [0, 1, 2, 3, 4]
    assert choose_packing(left, None) == (None, left)  # the pooler would read a padded position 0
    assert choose_packing(full, None) == (None, None)  # nothing to gain, and no mask to apply
    assert choose_packing(right, False) == (None, right)  # padded, without reading the mask
    assert choose_packing(left, True)[0].index.tolist() == [0, 1, 2, 4, 5]  # asked for explicitly
    labels = torch.full((2, 3), -100)
    labels[1, 2] = 7  # a label on a padded position: the loss reads it, so the layout stays padded
    assert choose_packing(right, True, labels) == (None, right)
    labels[1, 2] = -100
    assert choose_packing(right, None, labels)[0] is not None


def test_packing_index_matches_nonzero_on_random_masks():
    """The scattered row index (no host read of its size) equals nonzero's, on random right-padded masks."""
    from fastenc.models.packing import choose_packing

    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        lens = torch.randint(1, 9, (4,), generator=g)
        keep = torch.arange(8)[None, :] < lens[:, None]
        if bool(keep.all()):
            continue
        packed, _ = choose_packing(keep, None)
        assert packed.index.tolist() == keep.reshape(-1).nonzero().squeeze(1).tolist()
        assert packed.max_seqlen == int(lens.max()) and packed.cu_seqlens.tolist() == [0, *lens.cumsum(0).tolist()]


def test_left_padded_batch_keeps_transformers_values_at_every_position():
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert")  # includes left-padded and fully padded rows: auto stays padded
    with torch.no_grad():
        assert_close(ours(**inp).last_hidden_state, hf(**inp).last_hidden_state, 1e-5, "last_hidden_state")
