"""ModernBERT against transformers beyond the shared harness (tests/models/harness.py runs every head through
test_parity, test_loading and test_backends_models): local layers whose window (local_attention // 2) is shorter
than the sequence, alternating with global ones, in the padded, packed and flattened layouts, on the "torch" and
"triton" backends; config variants (biases, pooling, activations); the sparse MLM path; optimize() / restore();
recorded attentions; refusals with a reason (rotary types, a future transformers forward)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import transformers

import fastenc
from fastenc import autotune
from fastenc.models import swaps
from fastenc.models.modernbert_blocks import _ModernBertLayer, _ModernBertModel
from tests.models.harness import (
    assert_close,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
    inputs,
    labels_for,
    scalar_objective,
)

SEQ = 16  # > 2 * window + 1: every local layer masks keys inside each sequence
LOCAL = dict(local_attention=6)  # window 3


def _pair(name: str, **overrides):
    hf = build_hf(name, **{**LOCAL, **overrides})
    return hf, fastenc.from_hf(copy.deepcopy(hf))


def _batch(name: str, batch: int = 4, seq: int = SEQ, seed: int = 1):
    return inputs(name, batch=batch, seq=seq, seed=seed)


def test_config_has_local_layers_shorter_than_the_sequence():
    hf, _ = _pair("ModernBertModel")
    assert hf.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert 2 * hf.config.sliding_window + 1 < SEQ


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["ModernBertModel", "ModernBertForMaskedLM", "ModernBertForTokenClassification"])
def test_padded_and_packed_match_transformers(name, backend):
    """Full, right-, left- and fully padded rows (padded layout: every position), then the same batch packed
    (unpad=True: real positions), and a right-padded batch that packs by itself; eval outputs and training loss and
    gradients."""
    hf, ours = _pair(name)
    inp = _batch(name)
    real = inp["attention_mask"].bool()
    lab = labels_for(name, inp)
    with torch.no_grad():
        ref = hf(**inp)
        with fastenc.use_backend(backend):
            padded = ours(**inp, unpad=False)
            packed = ours(**inp, unpad=True)
    assert_outputs_close(padded, ref, 1e-5)
    first = next(iter(ref.keys()))
    assert_close(packed[first], ref[first], 1e-5, f"packed {first}", mask=real)
    hf.train()
    ours.train()
    ref_obj = scalar_objective(hf(**inp, **lab))
    with fastenc.use_backend(backend):
        obj = scalar_objective(ours(**inp, **lab, unpad=False))
        obj.backward()
    ref_obj.backward()
    assert_close(obj, ref_obj, 1e-4, "loss")
    assert_grads_close(ours, hf, 1e-4)

    right = {k: v[:2] for k, v in inp.items()}  # full + right-padded rows: packed by default
    hf.zero_grad()
    ours.zero_grad()
    with fastenc.use_backend(backend), torch.no_grad():
        out = ours.eval()(**right)
        ref = hf.eval()(**right)
        hidden = ours.base_model(**right).last_hidden_state
    first = next(iter(ref.keys()))
    pad = ~right["attention_mask"].bool()
    assert (hidden[pad] == 0).all(), "a right-padded batch did not take the packed path"
    assert_close(out[first], ref[first], 1e-5, f"auto-packed {first}", mask=~pad)


def test_packed_training_loss_and_grads():
    name = "ModernBertForMaskedLM"
    hf, ours = _pair(name)
    inp = {k: v[:3] for k, v in _batch(name).items()}
    lab = labels_for(name, inp)  # -100 at padding: the packed path
    hf.train()
    ours.train()
    ref = hf(**inp, **lab).loss
    out = ours(**inp, **lab, unpad=True).loss
    ref.backward()
    out.backward()
    assert_close(out, ref, 1e-4, "loss")
    assert_grads_close(ours, hf, 1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("flash_kwargs", [False, True], ids=["position_ids", "cu_seq_lens"])
def test_flattened_batch_equals_separate_sequences(flash_kwargs, backend):
    """DataCollatorWithFlattening's rows: each sequence attends to itself, with rotary positions restarting."""
    from transformers import DataCollatorWithFlattening

    hf, ours = _pair("ModernBertForMaskedLM")
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 99, (n,), generator=g).tolist() for n in (9, 5, 12)]
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)([{"input_ids": s} for s in seqs])
    if flash_kwargs:
        batch.pop("position_ids", None)
    batch.pop("labels", None)
    with torch.no_grad():
        with fastenc.use_backend(backend):
            flat = ours(**batch).logits[0]
        alone = torch.cat([hf(input_ids=torch.tensor([s])).logits[0] for s in seqs])
    assert_close(flat, alone, 1e-5, "flattened logits")


VARIANTS = {
    "biases-mean-silu": dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
                             decoder_bias=True, classifier_pooling="mean", hidden_activation="silu"),
    "tanh-gelu": dict(hidden_activation="gelu_pytorch_tanh", classifier_activation="gelu_new", local_attention=4,
                      global_attn_every_n_layers=3),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", ["ModernBertForSequenceClassification", "ModernBertForMultipleChoice",
                                  "ModernBertForQuestionAnswering", "ModernBertForMaskedLM"])
def test_config_variants(name, variant):
    hf, ours = _pair(name, **VARIANTS[variant])
    inp = inputs(name, batch=3, seq=SEQ)
    inp["attention_mask"][..., -1] = 1  # no fully padded row: mean pooling over no token is 0 / 0 in transformers
    lab = labels_for(name, inp)
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)
    hf.train()
    ours.train()
    ref = scalar_objective(hf(**inp, **lab))
    out = scalar_objective(ours(**inp, **lab))
    ref.backward()
    out.backward()
    assert_close(out, ref, 1e-4, "loss")
    assert_grads_close(ours, hf, 1e-4)


def test_sparse_prediction_matches_transformers_own():
    """fastenc's sparse_prediction gives the rows and loss of transformers' config.sparse_prediction."""
    hf, ours = _pair("ModernBertForMaskedLM", sparse_prediction=True)
    ours.config.sparse_prediction = False  # fastenc's own path, not transformers' inside the forward
    inp = _batch("ModernBertForMaskedLM")
    lab = labels_for("ModernBertForMaskedLM", inp)
    hf.train()
    ours.train()
    ref = hf(**inp, **lab)
    out = ours(**inp, **lab, sparse_prediction=True)
    assert out.logits.shape == ref.logits.shape == ((lab["labels"] != -100).sum().item(), 99)
    assert_close(out.logits, ref.logits, 1e-5, "logits")
    assert_close(out.loss, ref.loss, 1e-5, "loss")
    ref.loss.backward()
    out.loss.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_optimize_and_restore_round_trip():
    hf = build_hf("ModernBertForTokenClassification", **LOCAL)
    model = copy.deepcopy(hf)
    params = {k: id(p) for k, p in model.named_parameters()}
    inp = _batch("ModernBertForTokenClassification")
    with torch.no_grad():
        ref = hf(**inp, output_hidden_states=True)
    fastenc.optimize(model)
    assert type(model) is fastenc.ModernBertForTokenClassification
    assert isinstance(model.model, _ModernBertModel)
    assert all(isinstance(m, _ModernBertLayer) for m in model.model.layers)
    with torch.no_grad():
        out = model(**inp, output_hidden_states=True)
    assert_outputs_close(out, ref, 1e-5)
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    fastenc.restore(model)
    assert type(model) is transformers.ModernBertForTokenClassification
    assert not fastenc.is_optimized(model)
    assert {k: id(p) for k, p in model.named_parameters()} == params
    with torch.no_grad():
        assert_outputs_close(model(**inp), hf(**inp), 0.0)


def test_optimize_a_base_model_packs_and_restores():
    hf = build_hf("ModernBertModel", **LOCAL)
    model = copy.deepcopy(hf)
    before = set(model.__dict__)
    fastenc.optimize(model)
    assert type(model) is fastenc.ModernBertModel
    inp = {k: v[:2] for k, v in _batch("ModernBertModel").items()}
    real = inp["attention_mask"].bool()
    with torch.no_grad():
        out, ref = model(**inp).last_hidden_state, hf(**inp).last_hidden_state
        assert (out[~real] == 0).all()
        assert_close(out, ref, 1e-5, "last_hidden_state", mask=real)
        fastenc.optimize(model, unpad=False)  # padded: transformers' values at every position
        assert_close(model(**inp).last_hidden_state, ref, 1e-5, "unpad=False")
    fastenc.restore(model)
    assert type(model) is transformers.ModernBertModel and set(model.__dict__) == before


def test_output_attentions_match_eager_transformers():
    hf = build_hf("ModernBertModel", **LOCAL)
    config = hf.config.__class__(**{**hf.config.to_dict(), "attn_implementation": "eager"})
    eager = transformers.ModernBertModel(config).eval()
    eager.load_state_dict(hf.state_dict())
    ours = fastenc.from_hf(copy.deepcopy(eager))
    inp = {k: v[:3] for k, v in _batch("ModernBertModel").items()}  # no fully padded row
    with torch.no_grad():
        ref = eager(**inp, output_attentions=True, output_hidden_states=True)
        out = ours(**inp, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(ref.attentions) == 3
    assert (ref.attentions[1][0, 0, 0, 4:] == 0).all()  # the local layer's window is in the probabilities
    assert_outputs_close(out, ref, 1e-5)


def test_inputs_embeds_position_ids_and_4d_mask():
    hf, ours = _pair("ModernBertModel")
    inp = {k: v[:3] for k, v in _batch("ModernBertModel").items()}
    embeds = hf.embeddings.tok_embeddings(inp["input_ids"])
    mask = inp["attention_mask"]
    pos = torch.randint(0, 40, (3, SEQ))
    with torch.no_grad():
        assert_outputs_close(ours(inputs_embeds=embeds, attention_mask=mask),
                             hf(inputs_embeds=embeds, attention_mask=mask), 1e-5)
        assert_outputs_close(ours(**inp, position_ids=pos), hf(**inp, position_ids=pos), 1e-5)
        four_d = (mask[:, None, None, :] == 1).expand(3, 1, SEQ, SEQ)  # used as given: no window, as transformers
        assert_outputs_close(ours(input_ids=inp["input_ids"], attention_mask=four_d),
                             hf(input_ids=inp["input_ids"], attention_mask=four_d), 1e-5)


def test_rotary_types_other_than_default_stay_transformers_with_a_reason():
    autotune._notes.clear()
    rope = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 160000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    hf = build_hf("ModernBertForMaskedLM", rope_parameters=rope, **LOCAL)
    with pytest.warns(RuntimeWarning, match="rope_type 'linear'"):
        ours = fastenc.from_hf(copy.deepcopy(hf))
    assert not any(isinstance(m, (_ModernBertLayer, _ModernBertModel)) for m in ours.modules())
    assert "rope_type 'linear'" in fastenc.explain()
    inp = _batch("ModernBertForMaskedLM")
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)


@pytest.mark.parametrize("block", ["ModernBertEncoderLayer", "ModernBertAttention", "ModernBertModel",
                                   "ModernBertEmbeddings", "ModernBertPredictionHead"])
def test_a_future_forward_parameter_keeps_transformers_block(block, monkeypatch, fresh_table):
    """A release whose forward takes a parameter fastenc does not know: that block stays transformers' (and the
    swaps that need it), warned and explained; the model gives transformers' numbers."""
    from transformers.models.modernbert import modeling_modernbert as hf_mod

    cls = getattr(hf_mod, block)
    original = cls.forward
    sig = inspect.signature(original)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))

    def forward(self, *args, future_option=None, **kwargs):
        return original(self, *args, **kwargs)

    extra = inspect.Parameter("future_option", inspect.Parameter.KEYWORD_ONLY, default=None)
    forward.__signature__ = sig.replace(parameters=[*params[:at], extra, *params[at:]])
    monkeypatch.setattr(cls, "forward", forward)
    hf = build_hf("ModernBertForMaskedLM", **LOCAL).train()
    with pytest.warns(RuntimeWarning, match=rf"{block} stays transformers' own"):
        ours = fastenc.from_hf(copy.deepcopy(hf)).train()
    assert all(type(m) is cls for m in ours.modules() if isinstance(m, cls))
    if block in ("ModernBertEncoderLayer", "ModernBertAttention"):  # each needs the other; the loop needs both
        assert hf_mod.ModernBertAttention in swaps.refused and hf_mod.ModernBertEncoderLayer in swaps.refused
        assert hf_mod.ModernBertModel in swaps.refused
    assert "future_option" in fastenc.explain()
    inp = _batch("ModernBertForMaskedLM")
    lab = labels_for("ModernBertForMaskedLM", inp)
    out, ref = ours(**inp, **lab), hf(**inp, **lab)
    assert_close(out.logits, ref.logits, 1e-5, "logits", mask=inp["attention_mask"].bool())
    assert_close(out.loss, ref.loss, 1e-5, "loss")
    out.loss.backward()
    ref.loss.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_auto_classes_and_gradient_checkpointing(tmp_path):
    hf = build_hf("ModernBertForSequenceClassification", **LOCAL)
    hf.save_pretrained(tmp_path)
    ours = fastenc.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(ours) is fastenc.ModernBertForSequenceClassification
    ours.gradient_checkpointing_enable()
    hf.gradient_checkpointing_enable()
    ours.train()
    hf.train()
    inp = _batch("ModernBertForSequenceClassification")
    lab = labels_for("ModernBertForSequenceClassification", inp)
    ref, out = hf(**inp, **lab).loss, ours(**inp, **lab).loss
    ref.backward()
    out.backward()
    assert_close(out, ref, 1e-4, "loss")
    assert_grads_close(ours, hf, 1e-4)


def test_rows_with_gaps_stay_padded_under_windows():
    """Packing closes the gaps of a row whose real tokens are not one run, which would change the distances a
    window measures: such a batch stays padded (one_run), with transformers' numbers."""
    from fastenc.models.packing import choose_packing

    runs = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    gaps = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    assert choose_packing(runs, True, one_run=True)[0].index.tolist() == [0, 1, 2, 5, 6]
    assert choose_packing(gaps, True, one_run=True) == (None, gaps)
    assert choose_packing(gaps, True)[0] is not None
    hf, ours = _pair("ModernBertModel")
    inp = {k: v[:2] for k, v in _batch("ModernBertModel").items()}
    inp["attention_mask"][1, 2:5] = 0
    with torch.no_grad():
        assert_outputs_close(ours(**inp, unpad=True), hf(**inp), 1e-5)


def _graph_batches(device: str):
    for b, s in ((4, 16), (1, 3), (3, 9), (4, 16), (2, 8)):
        inp = inputs("ModernBertModel", batch=b, seq=s, seed=b + s)
        inp["attention_mask"][:, 0] = 1  # the graphs wrapper's padded rows attend to their first position
        yield {k: v.to(device) for k, v in inp.items()}


def test_bucketed_graph_path_on_cpu():
    """fastenc.cuda_graphs' pad -> model -> trim path (capture off on CPU) over shrinking and growing shapes."""
    from fastenc.graphs import CudaGraphModel

    hf, ours = _pair("ModernBertModel")
    runner = CudaGraphModel(ours.eval(), batch_buckets=(2, 4), seq_buckets=(8, 16), capture=False)
    for inp in _graph_batches("cpu"):
        out = runner(inp["input_ids"], inp["attention_mask"])
        with torch.no_grad():
            ref = hf(**inp)
        assert_close(out.last_hidden_state, ref.last_hidden_state, 1e-5, "last_hidden_state",
                     mask=inp["attention_mask"].bool())


@pytest.mark.gpu
def test_cuda_graphs_replay_and_shape_changes():
    from fastenc.graphs import cuda_graphs

    hf, ours = _pair("ModernBertModel")
    hf, ours = hf.cuda(), ours.cuda().eval()
    graphs = cuda_graphs(ours, batch_buckets=(2, 4), seq_buckets=(8, 16))
    for inp in _graph_batches("cuda"):
        out = graphs(inp["input_ids"], inp["attention_mask"])
        with torch.no_grad():
            ref = hf(**inp)
        assert_close(out.last_hidden_state.cpu(), ref.last_hidden_state.cpu(), 1e-4, "last_hidden_state",
                     mask=inp["attention_mask"].bool().cpu())
    assert graphs.num_graphs == 3


def test_weights_a_checkpoint_lacks_are_initialised_as_transformers_does(tmp_path):
    """A head loaded from a base checkpoint: ModernBERT initialises the classifier (and Wqkv, Wi, ...) from the
    parent module's _init_weights branch, which transformers runs for its own classes only, not custom code."""
    build_hf("ModernBertModel", **LOCAL).save_pretrained(tmp_path)
    name = "ModernBertForSequenceClassification"
    torch.manual_seed(0)
    ref = getattr(transformers, name).from_pretrained(tmp_path)
    torch.manual_seed(0)
    ours = getattr(fastenc, name).from_pretrained(tmp_path)
    assert not type(ours).is_custom_code()
    assert inspect.signature(ours.model.forward) == inspect.signature(ref.model.forward)
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
