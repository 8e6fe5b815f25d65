"""fp16 / bf16 on CPU: the error against the float64 run of the same model is at most twice transformers' own error
at that dtype plus a small atol (the design's tolerance rule); NaN never passes."""

from __future__ import annotations

import copy

import pytest
import torch

import fastenc
from tests.helpers import assert_close_to_ref
from tests.models.harness import build_hf, inputs, labels_for

ATOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["BertForMaskedLM", "RobertaModel", "AlbertForPreTraining", "ElectraForMaskedLM"])
def test_half_precision_against_float64(name, dtype):
    hf = build_hf(name)
    inp = inputs(name, batch=3)
    ref64 = fastenc.from_hf(copy.deepcopy(hf).double())
    ours = fastenc.from_hf(copy.deepcopy(hf).to(dtype))
    hf_low = copy.deepcopy(hf).to(dtype)
    with torch.no_grad():
        want = ref64(**inp)
        got = ours(**inp)
        theirs = hf_low(**inp)
    for key in want.keys():
        assert got[key].dtype == dtype, key
        assert_close_to_ref(got[key], want[key].double(), theirs[key], atol=ATOL[dtype], name=key)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_training_step(dtype):
    name = "BertForTokenClassification"
    hf = build_hf(name)
    inp = inputs("bert", batch=3)
    lab = labels_for(name, inp)
    ref64 = fastenc.from_hf(copy.deepcopy(hf).double()).train()
    ours = fastenc.from_hf(copy.deepcopy(hf).to(dtype)).train()
    hf_low = copy.deepcopy(hf).to(dtype).train()
    losses = [m(**inp, **lab).loss for m in (ref64, ours, hf_low)]
    for loss in losses:
        loss.backward()
    assert_close_to_ref(losses[1], losses[0].double(), losses[2], atol=ATOL[dtype], name="loss")
    mine, theirs = dict(ours.named_parameters()), dict(hf_low.named_parameters())
    for key, p in ref64.named_parameters():
        scale = p.grad.abs().max().item()
        assert_close_to_ref(mine[key].grad, p.grad, theirs[key].grad, atol=ATOL[dtype] * max(scale, 1e-3),
                            name=f"grad {key}")
