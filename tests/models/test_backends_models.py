"""Whole models on each backend ("torch" reference, "triton" kernels; on CPU the Triton interpreter runs them), a
small subset (each base model and one head per variant, batch 2 x seq 8) against transformers: eval outputs and,
with dropout off, the training loss and every parameter's gradient; the packed path on real positions."""

from __future__ import annotations

import pytest
import torch

import fastenc
from tests.models.harness import (
    assert_close,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
    inputs,
    labels_for,
    variant_of,
)

BACKENDS = ["torch", "triton"]
SUBSET = ["BertModel", "BertForSequenceClassification", "RobertaModel", "RobertaForMaskedLM", "AlbertModel",
          "AlbertForTokenClassification", "ElectraModel", "ElectraForPreTraining"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SUBSET)
def test_model_on_backend_matches_transformers(name, backend):
    small = dict(num_hidden_layers=2, num_hidden_groups=1, inner_group_num=1) if name.startswith("Albert") else {}
    hf = build_hf(name, **small)
    ours = fastenc.from_hf(build_hf(name, **small))
    inp = inputs(variant_of(name), batch=2, seq=8)
    lab = labels_for(name, inp)
    with fastenc.use_backend(backend):
        with torch.no_grad():
            out = ours(**inp)
        hf.train()
        ours.train()
        loss = ours(**inp, **lab)
    with torch.no_grad():
        ref = hf.eval()(**inp)
    assert_outputs_close(out, ref, 1e-4)
    hf.train()
    ref_loss = hf(**inp, **lab)
    objective = [getattr(o, "loss", None) for o in (loss, ref_loss)]
    if objective[0] is None:
        g = torch.Generator().manual_seed(3)
        w = torch.randn(ref_loss.last_hidden_state.shape, generator=g)
        objective = [(o.last_hidden_state * w).sum() for o in (loss, ref_loss)]
    assert_close(objective[0], objective[1], 1e-4, "loss")
    with fastenc.use_backend(backend):
        objective[0].backward()
    objective[1].backward()
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_path_on_backend(backend):
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=2, seq=8)
    real = inp["attention_mask"].bool()
    with fastenc.use_backend(backend), torch.no_grad():
        out = ours(**inp, unpad=True)
    with torch.no_grad():
        ref = hf(**inp)
    assert_close(out.last_hidden_state, ref.last_hidden_state, 1e-4, "last_hidden_state", mask=real)
