"""Every variant and head against transformers itself: a tiny random transformers model saved with save_pretrained,
loaded by fastenc.from_pretrained, the same padded inputs (full, right-, left- and fully padded rows).
Eval: every output within 1e-5 relative (fp32). Train mode with dropout off: the loss and every parameter's gradient
within 1e-4 relative. The reference is transformers' default attention (sdpa)."""

from __future__ import annotations

import pytest
import torch
import transformers

import fastenc
from tests.models.harness import (
    ALL_CLASSES,
    assert_close,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
    hf_and_fastenc,
    inputs,
    labels_for,
    scalar_objective,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_eval_outputs_match_transformers(name, root):
    hf, ours = hf_and_fastenc(name, root)
    assert hf.config._attn_implementation == "sdpa"
    inp = inputs(name)
    with torch.no_grad():
        ref = hf(**inp, output_hidden_states=True)
        out = ours(**inp, output_hidden_states=True)
    assert_outputs_close(out, ref, 1e-5, skip=("attentions", "cross_attentions"))
    assert len(out.hidden_states) == len(ref.hidden_states)
    # return_dict=False gives transformers' tuple order
    with torch.no_grad():
        ref_t = hf(**inp, return_dict=False)
        out_t = ours(**inp, return_dict=False)
    assert len(out_t) == len(ref_t)
    for i, (a, b) in enumerate(zip(out_t, ref_t, strict=True)):
        assert_close(a, b, 1e-5, f"tuple[{i}]")


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_train_loss_and_grads_match_transformers(name, root):
    hf, ours = hf_and_fastenc(name, root)
    hf.train()
    ours.train()
    inp = inputs(name)
    lab = labels_for(name, inp)
    ref = scalar_objective(hf(**inp, **lab))
    out = scalar_objective(ours(**inp, **lab))
    assert_close(out, ref, 1e-4, "loss")
    ref.backward()
    out.backward()
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_sequence_classification_problem_types(problem, root):
    num_labels = 1 if problem == "regression" else 3
    hf = build_hf("BertForSequenceClassification", num_labels=num_labels)
    ours = fastenc.from_hf(hf)
    inp = inputs("bert")
    g = torch.Generator().manual_seed(5)
    labels = torch.randn(4, generator=g) if num_labels == 1 else (torch.rand(4, 3, generator=g) > 0.5).float()
    ref = hf(**inp, labels=labels)
    out = ours(**inp, labels=labels)
    assert ours.config.problem_type == hf.config.problem_type == problem
    assert_close(out.loss, ref.loss, 1e-5, "loss")


@pytest.mark.parametrize("groups,inner,layers", [(1, 1, 2), (3, 1, 3), (1, 3, 2)])
def test_albert_layer_sharing_variants(groups, inner, layers):
    hf = build_hf("AlbertModel", num_hidden_groups=groups, inner_group_num=inner, num_hidden_layers=layers)
    ours = fastenc.from_hf(hf)
    inp = inputs("albert")
    with torch.no_grad():
        ref = hf(**inp, output_hidden_states=True)
        out = ours(**inp, output_hidden_states=True)
    assert_outputs_close(out, ref, 1e-5, skip=("attentions",))


@pytest.mark.parametrize("act", ["relu", "gelu_new", "quick_gelu", "gelu_fast"])
def test_hidden_act_by_name(act):
    hf = build_hf("BertForMaskedLM", hidden_act=act)
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3, seq=6)  # left padding: the exact padded path
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(KeyError, match="nope"):  # transformers' own error (ACT2FN)
        fastenc.BertModel(fastenc.BertConfig(hidden_size=32, num_attention_heads=4, hidden_act="nope"))


@pytest.mark.parametrize("name", ["BertModel", "AlbertModel", "DistilBertModel"])
def test_output_attentions_match_eager_transformers(name):
    """transformers' sdpa returns no attentions (it warns); fastenc returns the probabilities that transformers'
    eager attention returns, with the same hidden states."""
    hf = build_hf(name)
    eager = getattr(transformers, name)(hf.config.__class__(**{**hf.config.to_dict(), "attn_implementation": "eager"}))
    eager.load_state_dict(hf.state_dict())
    eager.eval()
    ours = fastenc.from_hf(hf)
    inp = inputs(name, batch=3)  # no fully padded row: eager gives it uniform weights, sdpa zeros
    with torch.no_grad():
        ref = eager(**inp, output_attentions=True)
        out = ours(**inp, output_attentions=True)
    assert len(out.attentions) == len(ref.attentions) > 0
    assert_outputs_close(out, ref, 1e-5)


def test_four_d_additive_mask_matches_transformers():
    hf = build_hf("BertModel")
    ours = fastenc.from_hf(hf)
    inp = inputs("bert", batch=3)
    g = torch.Generator().manual_seed(7)
    bias = torch.randn(3, 1, 10, 10, generator=g)
    bias = bias.masked_fill(torch.rand(3, 1, 10, 10, generator=g) < 0.3, torch.finfo(torch.float32).min)
    bias[..., 0] = 0.0  # every query keeps a key
    inp["attention_mask"] = bias
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)
    bool_mask = bias == 0
    inp["attention_mask"] = bool_mask
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)


def test_models_declare_what_a_call_needs_and_never_name_a_backend(monkeypatch):
    """A 4-D mask and inputs_embeds reach dispatch as features of the call, with no backend named by the model: a
    backend that has the feature (sdpa for an additive bias) is never bypassed."""
    from fastenc import dispatch

    seen = []
    real = dispatch.choose

    def spy(call, backend, run=None):
        seen.append((call.op, call.features, backend))
        return real(call, backend, run)

    monkeypatch.setattr(dispatch, "choose", spy)
    ours = fastenc.from_hf(build_hf("BertModel"))
    inp = inputs("bert", batch=3)
    embeds = ours.embeddings.word_embeddings(inp.pop("input_ids"))
    inp["attention_mask"] = (inp["attention_mask"][:, None, None, :] == 1).expand(3, 1, 10, 10)
    with torch.no_grad():
        ours(inputs_embeds=embeds, **inp)
    assert ("attention", ("attn_bias",), None) in seen and ("embeddings", ("inputs_embeds",), None) in seen
    assert all(backend is None for _, _, backend in seen)


def test_inputs_embeds_and_position_ids_match_transformers():
    for name in ("BertModel", "RobertaModel"):
        hf = build_hf(name)
        ours = fastenc.from_hf(hf)
        inp = inputs(name, batch=3)
        embeds = hf.embeddings.word_embeddings(inp.pop("input_ids"))
        with torch.no_grad():
            assert_outputs_close(ours(inputs_embeds=embeds, **inp), hf(inputs_embeds=embeds, **inp), 1e-5)
            pos = torch.randint(2, 50, (3, 10))
            assert_outputs_close(ours(inputs_embeds=embeds, position_ids=pos, **inp),
                                 hf(inputs_embeds=embeds, position_ids=pos, **inp), 1e-5)


def test_distilbert_sinusoidal_positions_and_flattened_kwargs():
    """DistilBERT's sinusoidal position table is only an initialisation; its encoder gets no position_ids, so a
    flattened batch comes in through DataCollatorWithFlattening's cu_seq_lens_q."""
    from transformers import DataCollatorWithFlattening

    hf = build_hf("DistilBertForMaskedLM", sinusoidal_pos_embds=True)
    ours = fastenc.from_hf(hf)
    inp = inputs("DistilBertForMaskedLM")
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)
    seqs = [[5, 6, 7, 8], [9, 10, 11]]
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        flat = ours(**batch).logits[0]
        alone = torch.cat([hf(input_ids=torch.tensor([s])).logits[0] for s in seqs])
    assert_close(flat, alone, 1e-5, "flattened logits")
