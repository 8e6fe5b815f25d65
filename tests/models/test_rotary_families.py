"""GTE and NomicBERT (rotary post-LN families, fastenc.models.rotary_blocks) beyond the parametrised harness: the
packed layout (the base model packs its inputs), flattened batches, sparse MLM, optimize / restore, rotary types
fastenc's op does not compute, GTE without token types, NomicBERT's head_dim, attention probabilities, gradient
checkpointing, and a transformers release without GTE (5.17)."""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers

import fastenc
from fastenc import autotune
from fastenc.models import blocks, families, rotary_blocks
from tests.models.harness import (
    PREFIX,
    ROTARY,
    assert_close,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
    inputs,
    labels_for,
)

pytestmark = pytest.mark.skipif(not ROTARY, reason="this transformers release has neither GTE nor NomicBERT")
FAMILIES = list(ROTARY)


def _name(family: str, head: str) -> str:
    return PREFIX[family] + head


@pytest.mark.parametrize("family", FAMILIES)
def test_swapped_blocks_and_packed_inputs(family, monkeypatch):
    """Every block is fastenc's, and a right-padded batch runs as one packed row with cu_seqlens: the attention
    sees [T, H, D] and the rotary op the packed positions."""
    ours = fastenc.from_hf(build_hf(_name(family, "ForSequenceClassification")))
    swaps = {type(m).__mro__[1] for m in ours.modules()}
    assert {rotary_blocks._RotaryModel, rotary_blocks._RotaryEmbeddings, rotary_blocks._RotaryEmbedding,
            rotary_blocks._RotaryAttention, rotary_blocks._PostNormLayer, rotary_blocks._Pooler} <= swaps
    seen = []
    real_rotary = fastenc.ops.rotary

    def spy(q, k, positions, theta, **kw):
        seen.append((tuple(q.shape), positions.tolist(), theta))
        return real_rotary(q, k, positions, theta, **kw)

    monkeypatch.setattr(fastenc.ops, "rotary", spy)
    inp = inputs(family, batch=2, seq=6)  # a full row and a right-padded one
    with torch.no_grad():
        ours(**inp)
    lens = inp["attention_mask"].sum(1).tolist()
    assert seen and seen[0][0][:2] == (1, sum(lens))
    assert seen[0][1] == [list(range(lens[0])) + list(range(lens[1]))]
    assert seen[0][2] == ours.config.rope_parameters["rope_theta"]


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_equals_padded_and_transformers_on_real_positions(family):
    name = _name(family, "Model")
    hf = build_hf(name)
    ours = fastenc.from_hf(hf)
    inp = inputs(name)
    real = inp["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inp)
        padded = ours(**inp, unpad=False)
        packed = ours(**inp, unpad=True)
        packed_tuple = ours(**inp, unpad=True, return_dict=False)
    assert_close(padded.last_hidden_state, ref.last_hidden_state, 1e-5, "padded")
    assert_close(packed.last_hidden_state, ref.last_hidden_state, 1e-5, "packed", mask=real)
    assert torch.equal(packed.last_hidden_state[~real], torch.zeros_like(packed.last_hidden_state[~real]))
    assert len(packed_tuple) == 1 and torch.equal(packed_tuple[0], packed.last_hidden_state)


@pytest.mark.parametrize("head", ["ForTokenClassification", "ForMaskedLM", "ForSequenceClassification"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_training_loss_and_grads_match_transformers(family, head):
    name = _name(family, head)
    hf = build_hf(name).train()
    ours = fastenc.from_hf(build_hf(name)).train()
    inp = inputs(name, batch=3)
    inp["attention_mask"][2] = 1  # rows: full, right-padded, full (the pooler's first token is real everywhere)
    lab = labels_for(name, inp)
    ref = hf(**inp, **lab)
    out = ours(**inp, **lab, unpad=True)
    assert_close(out.loss, ref.loss, 1e-4, "loss")
    ref.loss.backward()
    out.loss.backward()
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_mlm_same_loss_and_grads(family):
    name = _name(family, "ForMaskedLM")
    dense = fastenc.from_hf(build_hf(name)).train()
    sparse = fastenc.from_hf(build_hf(name)).train()
    inp = inputs(name)
    lab = labels_for(name, inp)
    a = dense(**inp, **lab)
    b = sparse(**inp, **lab, sparse_prediction=True)
    rows = lab["labels"] != -100
    assert b.logits.shape == (int(rows.sum()), 99)
    assert_close(b.logits, a.logits[rows], 1e-5, "labelled logits")
    assert_close(b.loss, a.loss, 1e-5, "loss")
    a.loss.backward()
    b.loss.backward()
    assert_grads_close(sparse, dense, 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_optimize_and_restore_round_trip(family):
    name = _name(family, "ForMaskedLM")
    hf = build_hf(name)
    twin = build_hf(name)
    params = {k: p for k, p in twin.named_parameters()}
    inp = inputs(name, batch=3)
    with torch.no_grad():
        ref = hf(**inp)
    fastenc.optimize(twin)
    assert type(twin) is getattr(fastenc, name) and fastenc.is_optimized(twin)
    base = twin.base_model
    assert isinstance(base, rotary_blocks._RotaryModel) and base._fastenc_unpad is None
    assert all(p is params[k] for k, p in twin.named_parameters())
    with torch.no_grad():
        assert_outputs_close(twin(**inp), ref, 1e-5)
    fastenc.restore(twin)
    assert type(twin) is getattr(transformers, name) and not fastenc.is_optimized(twin)
    assert all(type(m).__module__.startswith(("transformers.", "torch.")) for m in twin.modules())
    assert all(not k.startswith("_fastenc") for m in twin.modules() for k in vars(m))
    with torch.no_grad():
        assert_outputs_close(twin(**inp), ref, 1e-5)
    standalone = build_hf(_name(family, "Model"))
    fastenc.optimize(standalone, unpad=False)
    assert type(standalone) is getattr(fastenc, _name(family, "Model")) and standalone._fastenc_unpad is False
    fastenc.restore(standalone)
    assert type(standalone) is getattr(transformers, _name(family, "Model"))
    assert "_fastenc_unpad" not in vars(standalone)


def test_auto_classes_resolve_to_fastenc(tmp_path):
    for family in FAMILIES:
        name = _name(family, "ForTokenClassification")
        build_hf(name).save_pretrained(tmp_path / name)
        assert type(fastenc.AutoModelForTokenClassification.from_pretrained(tmp_path / name)) is getattr(fastenc, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_rotary_type_the_op_does_not_compute_keeps_transformers_tables(family):
    """A scaled rotary type: the rotary module stays transformers' (warned, explained); the attention rotates with
    its cos / sin tables, and the numbers are transformers'."""
    autotune._notes.clear()
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}
    hf = build_hf(_name(family, "Model"), rope_parameters=rope)
    with pytest.warns(RuntimeWarning, match="rope_type 'linear'"):
        ours = fastenc.from_hf(hf)
    rotary = ours.rotary_emb
    assert not isinstance(rotary, blocks._Swap)
    assert isinstance(ours.layers[0].self_attn, rotary_blocks._RotaryAttention)
    assert "rope_type 'linear'" in fastenc.explain()
    inp = inputs(family)
    with torch.no_grad():
        assert_outputs_close(ours(**inp, unpad=False), hf(**inp), 1e-5)
        real = inp["attention_mask"].bool()
        assert_close(ours(**inp, unpad=True).last_hidden_state, hf(**inp).last_hidden_state, 1e-5, "packed",
                     mask=real)


@pytest.mark.skipif("gte" not in ROTARY, reason="transformers has no GTE")
def test_gte_without_token_types():
    hf = build_hf("GteForSequenceClassification", type_vocab_size=0)
    assert hf.gte.embeddings.token_type_embeddings is None
    ours = fastenc.from_hf(hf)
    inp = inputs("gte")
    inp.pop("token_type_ids")
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)


@pytest.mark.skipif("nomic_bert" not in ROTARY, reason="transformers has no NomicBERT")
def test_nomic_head_dim_other_than_hidden_over_heads():
    hf = build_hf("NomicBertForMaskedLM", head_dim=16)  # 4 heads x 16 = 64 != hidden 32
    assert hf.nomic_bert.layers[0].self_attn.q_proj.out_features == 64
    ours = fastenc.from_hf(hf)
    inp = inputs("nomic_bert")
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_attentions_match_eager_transformers(family):
    name = _name(family, "Model")
    hf = build_hf(name)
    eager = getattr(transformers, name)(hf.config.__class__(**{**hf.config.to_dict(), "attn_implementation": "eager"}))
    eager.load_state_dict(hf.state_dict())
    eager.eval()
    ours = fastenc.from_hf(hf)
    inp = inputs(name, batch=3)
    with torch.no_grad():
        ref = eager(**inp, output_attentions=True, output_hidden_states=True)
        out = ours(**inp, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(ref.attentions) > 0
    assert_outputs_close(out, ref, 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing(family):
    name = _name(family, "ForTokenClassification")
    hf = build_hf(name).train()
    ours = fastenc.from_hf(build_hf(name)).train()
    ours.gradient_checkpointing_enable()
    inp = inputs(name)
    lab = labels_for(name, inp)
    ref = hf(**inp, **lab).loss
    out = ours(**inp, **lab).loss
    assert_close(out, ref, 1e-4, "loss")
    ref.backward()
    out.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_family_missing_from_the_release(monkeypatch):
    """transformers 5.17 has no GTE: the classes import and list, building or loading one raises an error naming
    the release, and a warning and explain() say why (faked here by hiding the module)."""
    real = importlib.import_module

    def hide(name, *args):
        if name.startswith("transformers.models.gte"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    autotune._notes.clear()
    monkeypatch.setattr(families.importlib, "import_module", hide)
    with pytest.warns(RuntimeWarning, match="has no transformers.models.gte"):
        made = families.classes("gte", {})
    assert sorted(made) == sorted(families.family("gte").class_names)
    for cls in made.values():
        assert cls._fastenc_hf_class is None
        with pytest.raises(ImportError, match=rf"transformers {transformers.__version__} has no "
                                              rf"transformers.models.gte"):
            cls(None)
        with pytest.raises(ImportError, match="transformers.models.gte"):
            cls.from_pretrained("anything")
    assert "family gte" in fastenc.explain()
    with pytest.raises(ImportError, match=rf"transformers {transformers.__version__} has no GteConfig"):
        families.missing_config("GteConfig")()


@pytest.mark.skipif("gte" in ROTARY, reason="this transformers release has GTE")
def test_installed_release_without_gte():
    with pytest.raises(ImportError, match="transformers.models.gte"):
        fastenc.GteModel.from_pretrained("anything")
    with pytest.raises(ImportError, match="GteConfig"):
        fastenc.GteConfig()
    exec("from fastenc import *", {})  # every listed name resolves


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_position_ids_and_4d_masks(family):
    """inputs_embeds and caller positions (gathered with the real tokens on the packed path) and a 4-D additive
    mask (the padded path) give transformers' numbers."""
    name = _name(family, "ForTokenClassification")
    hf = build_hf(name)
    ours = fastenc.from_hf(hf)
    inp = inputs(name, batch=3)
    embeds = hf.base_model.embeddings.word_embeddings(inp.pop("input_ids"))
    real = inp["attention_mask"].bool()
    g = torch.Generator().manual_seed(7)
    pos = torch.randint(0, 50, (3, 10), generator=g)
    bias = torch.randn(3, 1, 10, 10, generator=g)
    bias = bias.masked_fill(torch.rand(3, 1, 10, 10, generator=g) < 0.3, torch.finfo(torch.float32).min)
    bias[..., 0] = 0.0  # every query keeps a key
    with torch.no_grad():
        for extra in ({}, {"position_ids": pos}):
            out = ours(inputs_embeds=embeds, **inp, **extra, unpad=True).logits
            assert_close(out, hf(inputs_embeds=embeds, **inp, **extra).logits, 1e-5, f"packed {list(extra)}",
                         mask=real)
        four_d = dict(inp, attention_mask=bias)
        assert_outputs_close(ours(inputs_embeds=embeds, **four_d), hf(inputs_embeds=embeds, **four_d), 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_swapped_rotary_class_built_anew_gives_transformers_tables(family):
    """transformers' rope tests build the model's rotary class anew and unpack (cos, sin): an instance that
    install_blocks did not set up is transformers' module."""
    ours = fastenc.from_hf(build_hf(_name(family, "Model")))
    cls = type(ours.rotary_emb)
    assert issubclass(cls, rotary_blocks._RotaryEmbedding)
    fresh = cls(config=ours.config)
    reference = cls._fastenc_original(config=ours.config)
    x, pos = torch.randn(1), torch.arange(7)[None]
    for a, b in zip(fresh(x, pos), reference(x, pos), strict=True):
        assert torch.equal(a, b)
    assert isinstance(ours.rotary_emb(x, pos), rotary_blocks.RotaryPositions)


@pytest.mark.parametrize("head", ["Model", "ForTokenClassification"])
@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_outputs_keep_the_padded_layout(family, head):
    """A batch that would run packed (rows starting with a real token) runs padded when hidden states or attentions
    are recorded, asked for by the call or by the config: the base model decides before transformers' forward
    starts recording."""
    name = _name(family, head)
    hf = build_hf(name)
    eager = getattr(transformers, name)(hf.config.__class__(**{**hf.config.to_dict(), "attn_implementation": "eager"}))
    eager.load_state_dict(hf.state_dict())
    eager.eval()
    ours = fastenc.from_hf(hf)
    inp = inputs(name, batch=2)  # a full row and a right-padded one
    with torch.no_grad():
        ref = eager(**inp, output_hidden_states=True, output_attentions=True)
        assert_outputs_close(ours(**inp, output_hidden_states=True, output_attentions=True), ref, 1e-5)
        ours.config.output_hidden_states = True
        by_config = ours(**inp)
    assert len(by_config.hidden_states) == len(ref.hidden_states)
    for a, b in zip(by_config.hidden_states, ref.hidden_states, strict=True):
        assert_close(a, b, 1e-5, "hidden_states (config)")
