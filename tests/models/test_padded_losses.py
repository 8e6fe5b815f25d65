"""Losses never change with the layout: on right-padded batches, the default (auto-packing) path gives transformers'
loss and every gradient, including losses that read padded positions (QA spans; MLM / token labels that are not
-100 at padding), which then run padded. Through the fastenc classes and through optimize()."""

from __future__ import annotations

import copy

import pytest
import torch

import fastenc
from tests.models.harness import assert_close, assert_grads_close, build_hf, inputs


def _right_padded(name: str) -> dict[str, torch.Tensor]:
    inp = inputs(name, batch=3, seq=9)
    inp["attention_mask"][2] = 1  # rows: full, right-padded, full (no left padding: auto packs)
    inp["attention_mask"][0, 6:] = 0
    return inp


def _labels(name: str, inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    batch, seq = inp["input_ids"].shape
    if name.endswith("ForQuestionAnswering"):
        return {"start_positions": torch.tensor([1, 8, 4]), "end_positions": torch.tensor([7, 8, 5])}
    if name.endswith("ForTokenClassification"):
        return {"labels": torch.randint(0, 3, (batch, seq), generator=g)}  # no -100 at padding
    labels = {"labels": inp["input_ids"].clone()}  # labels=input_ids: padded positions are labelled
    if name == "BertForPreTraining":
        labels["next_sentence_label"] = torch.tensor([0, 1, 1])
    if name == "AlbertForPreTraining":
        labels["sentence_order_label"] = torch.tensor([1, 0, 1])
    return labels


CASES = ["BertForQuestionAnswering", "RobertaForQuestionAnswering", "AlbertForQuestionAnswering",
         "ElectraForQuestionAnswering", "BertForMaskedLM", "RobertaForMaskedLM", "ElectraForMaskedLM",
         "BertForPreTraining", "AlbertForPreTraining", "BertForTokenClassification", "AlbertForTokenClassification",
         "XLMRobertaForQuestionAnswering", "CamembertForMaskedLM", "XLMRobertaForTokenClassification",
         "DistilBertForQuestionAnswering", "DistilBertForMaskedLM", "DistilBertForTokenClassification"]


@pytest.mark.parametrize("route", ["class", "optimize"])
@pytest.mark.parametrize("name", CASES)
def test_loss_and_grads_equal_transformers_on_padded_batches(name, route):
    hf = build_hf(name).train()
    twin = build_hf(name).train()
    ours = fastenc.from_hf(twin) if route == "class" else fastenc.optimize(twin)
    inp = _right_padded(name)
    lab = _labels(name, inp)
    ref = hf(**inp, **lab).loss
    out = ours(**inp, **lab).loss
    assert_close(out, ref, 1e-5, "loss")
    ref.backward()
    out.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_labels_ignored_at_padding_still_pack():
    """The padded fallback is only for losses that read padding: -100 there keeps the packed path."""
    ours = fastenc.from_hf(build_hf("BertForTokenClassification")).eval()
    inp = _right_padded("BertForTokenClassification")
    lab = _labels("BertForTokenClassification", inp)
    lab["labels"] = lab["labels"].masked_fill(inp["attention_mask"] == 0, -100)
    with torch.no_grad():
        logits = ours(**inp, **lab).logits
    padded = inp["attention_mask"] == 0
    reference = copy.deepcopy(ours)
    with torch.no_grad():
        exact = reference(**inp, **lab, unpad=False).logits
    assert_close(logits, exact, 1e-5, "logits", mask=~padded)
    # packed: padded positions went through no layer, so the head saw zero hidden states there
    head_of_zero = ours.classifier(torch.zeros(ours.config.hidden_size))
    assert_close(logits[padded], head_of_zero.expand(int(padded.sum()), -1), 1e-6, "padded logits")
