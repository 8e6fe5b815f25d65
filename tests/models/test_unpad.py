"""Padding-free execution (forward(unpad=True) / config.fastenc_unpad): real positions equal the padded path and
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
    variant_of,
)

HEADS = ["BertForTokenClassification", "RobertaForMaskedLM", "AlbertForMaskedLM", "ElectraForPreTraining"]


@pytest.mark.parametrize("name", ["BertModel", "RobertaModel", "AlbertModel", "ElectraModel"])
def test_packed_equals_padded_and_transformers_on_real_positions(name):
    hf = build_hf(name)
    ours = fastenc.from_hf(hf)
    inp = inputs(variant_of(name))
    real = inp["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inp, output_hidden_states=True)
        padded = ours(**inp, output_hidden_states=True)
        packed = ours(**inp, output_hidden_states=True, unpad=True)
    assert len(packed.hidden_states) == len(ref.hidden_states)
    for i, (p, r, q) in enumerate(zip(packed.hidden_states, ref.hidden_states, padded.hidden_states, strict=True)):
        assert_close(p, r, 1e-5, f"hidden_states.{i}", mask=real)
        assert_close(p, q, 1e-5, f"hidden_states.{i} vs padded path", mask=real)
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
    inp = inputs(variant_of(name))
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
