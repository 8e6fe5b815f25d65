"""Sparse MLM prediction (forward(sparse_prediction=True) / config.fastenc_sparse_mlm): the prediction head runs on
the labelled positions only. For each of the six MLM-style heads, on the padded and the packed layout: the loss and
every parameter gradient equal transformers', the [num_labelled, vocab] logits equal the full logits at the labelled
positions, NSP / SOP logits are unchanged; the flag off or no labels keep the full logits; the Triton kernels run it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import fastenc
from tests.models.harness import COMMON, assert_close, assert_grads_close, build_hf, inputs, labels_for

MLM_HEADS = ["BertForMaskedLM", "BertForPreTraining", "RobertaForMaskedLM", "AlbertForMaskedLM",
             "AlbertForPreTraining", "ElectraForMaskedLM"]
# padded: batch 4 with a left-padded and a fully padded row; packed: a full and a right-padded row, unpad=True
LAYOUTS = {"padded": (4, False), "packed": (2, True)}


def prediction_field(name: str) -> str:
    return "prediction_logits" if name.endswith("PreTraining") else "logits"


def models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers' model and fastenc's twin with the same weights, in training mode (dropout is off)."""
    return build_hf(name).train(), fastenc.from_hf(build_hf(name)).train()


def check_sparse_step(name: str, batch: int, unpad: bool) -> None:
    hf, ours = models(name)
    inp = inputs(name, batch=batch, seq=8)
    lab = labels_for(name, inp)
    labelled = lab["labels"] != -100
    assert 0 < labelled.sum() < labelled.numel()
    field = prediction_field(name)
    with torch.no_grad():
        full = ours(**inp, **lab, unpad=unpad, sparse_prediction=False)
    out = ours(**inp, **lab, unpad=unpad, sparse_prediction=True)
    ref = hf(**inp, **lab)
    assert full[field].shape == (batch, 8, COMMON["vocab_size"])
    assert out[field].shape == (int(labelled.sum()), COMMON["vocab_size"])
    assert_close(out[field], full[field][labelled], 1e-5, field)
    assert_close(out[field], ref[field][labelled], 1e-4, f"{field} vs transformers")
    if field == "prediction_logits":
        assert_close(out.seq_relationship_logits if name.startswith("Bert") else out.sop_logits,
                     ref.seq_relationship_logits if name.startswith("Bert") else ref.sop_logits, 1e-4, "NSP / SOP")
    assert_close(full.loss, ref.loss, 1e-5, "full loss")
    assert_close(out.loss, ref.loss, 1e-5, "sparse loss")
    out.loss.backward()
    ref.loss.backward()
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", MLM_HEADS)
def test_sparse_loss_logits_and_grads_match_transformers(name, layout):
    check_sparse_step(name, *LAYOUTS[layout])


def test_sparse_on_triton_backend():
    with fastenc.use_backend("triton"):
        check_sparse_step("BertForMaskedLM", 2, True)


@pytest.mark.parametrize("name", ["BertForPreTraining", "ElectraForMaskedLM"])
def test_full_logits_without_labels_or_flag(name):
    _, ours = models(name)
    inp = inputs(name)
    lab = labels_for(name, inp)
    field = prediction_field(name)
    full_shape = (*inp["input_ids"].shape, COMMON["vocab_size"])
    with torch.no_grad():
        assert ours(**inp, sparse_prediction=True)[field].shape == full_shape  # no labels: nothing to select
        assert ours(**inp, **lab)[field].shape == full_shape  # default: off
        ours.config.fastenc_sparse_mlm = True
        sparse = ours(**inp, **lab, return_dict=False)
        assert sparse[1].shape == (int((lab["labels"] != -100).sum()), COMMON["vocab_size"])
        assert ours(**inp, **lab, sparse_prediction=False)[field].shape == full_shape  # the argument wins


def test_config_field_round_trips_and_transformers_ignores_it(tmp_path):
    _, ours = models("BertForMaskedLM")
    ours.config.fastenc_sparse_mlm = True
    ours.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["fastenc_sparse_mlm"] is True
    assert fastenc.BertForMaskedLM.from_pretrained(tmp_path).config.fastenc_sparse_mlm is True
    transformers.BertForMaskedLM.from_pretrained(tmp_path)


def test_no_labelled_position_gives_transformers_nan():
    """transformers' mean cross-entropy over zero labelled positions is NaN (0 / 0) with all-zero gradients; the
    sparse path matches both."""
    name = "BertForMaskedLM"
    hf, ours = models(name)
    inp = inputs("bert")
    none = torch.full_like(inp["input_ids"], -100)
    out = ours(**inp, labels=none, sparse_prediction=True)
    ref = hf(**inp, labels=none)
    assert out.logits.shape == (0, COMMON["vocab_size"])
    assert torch.isnan(ref.loss) and torch.isnan(out.loss)
    out.loss.backward()
    ref.loss.backward()
    for model in (ours, hf):
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_bad_arguments():
    _, ours = models("RobertaForMaskedLM")
    inp = inputs("roberta")
    lab = labels_for("RobertaForMaskedLM", inp)["labels"]
    with pytest.raises(TypeError, match="sparse_prediction"):
        ours(**inp, labels=lab, sparse_prediction="yes")
    with pytest.raises(ValueError, match="labels"):
        ours(**inp, labels=lab[:, :5], sparse_prediction=True)
    classifier = fastenc.from_hf(build_hf("RobertaForSequenceClassification"))
    with pytest.raises(TypeError, match="only the MLM heads"):
        classifier(**inp, sparse_prediction=True)


def test_bench_training_step_uses_and_records_sparse_mlm():
    """The benchmark's training step runs fastenc's twin with sparse prediction and says so in the record; the
    transformers baseline has no such option and is recorded without it."""
    from fastenc.bench import cases, runner

    settings = runner.Settings.cpu_demo_settings(torch.device("cpu"))
    settings.warmup_ms, settings.rep_ms = 1.0, 1.0
    ms = runner.build_models("bert-tiny", "fp32", True, settings)
    shape = settings.shape("8x32")
    roofs = {"matmul_tflops": 1.0, "copy_gbps": 1.0}
    twin = runner.run_model_case(ms, "bert-tiny", shape, "fp32", True, "fastenc-torch", settings, roofs)
    base = runner.run_model_case(ms, "bert-tiny", shape, "fp32", True, "hf-sdpa", settings, roofs)
    assert twin["status"] == "ok" and twin["sparse_mlm"] is True, twin
    assert base["status"] == "ok" and "sparse_mlm" not in base, base
    x = cases.model_inputs(cases.model_config("bert-tiny"), shape, settings.device, mlm_labels=True)
    with torch.no_grad():  # eval: no dropout; the twin shares transformers' (now trained) parameters
        out = ms.twins["torch"].eval()(**x, sparse_prediction=True)
        ref = ms.hf.eval()(**x)
    assert out.logits.shape[0] == int((x["labels"] != -100).sum())
    assert_close(out.loss, ref.loss, 1e-5, "bench twin loss")
