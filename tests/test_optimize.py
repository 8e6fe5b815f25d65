"""fastenc.optimize on live transformers models: same outputs, losses and gradients as before, same parameters,
reversible, save/load, PEFT LoRA, sentence-transformers, gradient checkpointing, autocast.

The reference is the very same transformers model run before optimize() (fp32, dropout off). Padded inputs are
compared on real positions only: the packed path leaves zeros at padded positions (see fastenc.optimize)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from fastenc import is_optimized, optimize, restore

VOCAB, PAD = 60, 1
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD)
CONFIGS = {
    "bert": lambda: tf.BertConfig(**COMMON),
    "roberta": lambda: tf.RobertaConfig(**COMMON, hidden_act="gelu_new"),
    "albert": lambda: tf.AlbertConfig(**COMMON, embedding_size=16, classifier_dropout_prob=0.0),
    "electra": lambda: tf.ElectraConfig(**COMMON, embedding_size=16),
}
MODELS = [
    ("bert", tf.BertModel), ("bert", tf.BertForMaskedLM), ("bert", tf.BertForSequenceClassification),
    ("roberta", tf.RobertaModel), ("roberta", tf.RobertaForMaskedLM), ("roberta", tf.RobertaForTokenClassification),
    ("albert", tf.AlbertModel), ("albert", tf.AlbertForMaskedLM), ("albert", tf.AlbertForSequenceClassification),
    ("electra", tf.ElectraModel), ("electra", tf.ElectraForMaskedLM), ("electra", tf.ElectraForSequenceClassification),
]
IDS = [f"{v}-{c.__name__}" for v, c in MODELS]


def _inputs(b: int = 3, s: int = 9, lens=(9, 6, 3)) -> dict[str, torch.Tensor]:
    mask = (torch.arange(s)[None, :] < torch.tensor(lens)[:, None]).long()
    ids = torch.randint(3, VOCAB, (b, s)).masked_fill(mask == 0, PAD)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.randint(0, 2, (b, s)) * mask}


def _with_labels(model, inputs) -> dict[str, torch.Tensor]:
    """inputs plus random labels for the model's head (padded positions -100)."""
    mask = inputs["attention_mask"]
    name = type(model).__name__
    if name.endswith("SequenceClassification"):
        return {**inputs, "labels": torch.randint(0, model.config.num_labels, (mask.shape[0],))}
    if name.endswith(("MaskedLM", "TokenClassification")):
        classes = model.config.vocab_size if name.endswith("MaskedLM") else model.config.num_labels
        return {**inputs, "labels": torch.randint(0, classes, mask.shape).masked_fill(mask == 0, -100)}
    return inputs


def _loss(model, out, inputs) -> torch.Tensor:
    """The head's own loss, or for a base model a random projection of the real positions' hidden states."""
    if getattr(out, "loss", None) is not None:
        return out.loss
    g = torch.Generator().manual_seed(1)
    w = torch.randn(out.last_hidden_state.shape, generator=g)
    return (out.last_hidden_state * w * inputs["attention_mask"][..., None]).sum()


def _real(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real positions of a [B, S, ...] output; other outputs whole."""
    return t[mask.bool()] if t.dim() >= 2 and t.shape[:2] == mask.shape else t


def _assert_outputs_equal(out, ref, mask, whole: bool = False) -> None:
    assert set(out.keys()) == set(ref.keys())
    for key in ref.keys():
        got, want = out[key], ref[key]
        if isinstance(want, tuple):
            for g, w in zip(got, want, strict=True):
                _assert_outputs_equal({key: g}, {key: w}, mask, whole)
            continue
        assert torch.isfinite(got).all(), key
        if not whole:
            got, want = _real(got, mask), _real(want, mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward + backward; `inputs` holds the labels (from _labels) for head models."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss = _loss(model, out, inputs)
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_grads_equal(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """Same gradients, each to rtol of its own scale (summation order differs between the fused and eager ops)."""
    assert got.keys() == want.keys() and want
    for name, g in want.items():
        assert torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name], g, rtol=rtol, atol=rtol * g.abs().max().item() + 1e-8,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("variant,cls", MODELS, ids=IDS)
def test_outputs_same_parameters_and_restore(variant, cls):
    model = cls(CONFIGS[variant]()).eval()
    inputs = _inputs()
    with torch.no_grad():
        ref = model(**inputs)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]

    assert optimize(model) is model and is_optimized(model)
    assert {n: p for n, p in model.named_parameters()} == params  # the same Parameter objects
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        _assert_outputs_equal(model(**inputs), ref, inputs["attention_mask"])
        # the padded layout computes every position: then even padded positions match
        optimize(model, unpad=False)
        _assert_outputs_equal(model(**inputs), ref, inputs["attention_mask"], whole=True)

    restore(model)
    assert [type(m) for m in model.modules()] == classes and not is_optimized(model)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        _assert_outputs_equal(model(**inputs), ref, inputs["attention_mask"], whole=True)


@pytest.mark.parametrize("variant,cls", MODELS, ids=IDS)
def test_training_step_same_loss_and_grads(variant, cls):
    model = cls(CONFIGS[variant]()).train()
    inputs = _with_labels(model, _inputs())
    ref_loss, ref_grads = _step(model, inputs)
    optimize(model)
    loss, grads = _step(model, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    _assert_grads_equal(grads, ref_grads)


def test_recorded_hidden_states_and_attentions():
    """output_hidden_states / output_attentions keep the padded layout, so every recorded tensor is [B, S, ...]."""
    model = tf.BertModel(CONFIGS["bert"]()).eval()
    model.set_attn_implementation("eager")  # sdpa records no attentions
    inputs = _inputs()
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True, output_attentions=True)
        optimize(model)
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    _assert_outputs_equal(out, ref, inputs["attention_mask"], whole=True)
    restore(model)
    assert model.config._attn_implementation == "eager"


def test_save_pretrained_after_optimize_loads_in_transformers(tmp_path):
    model = optimize(tf.RobertaForMaskedLM(CONFIGS["roberta"]()).eval())
    inputs = _inputs()
    model.save_pretrained(tmp_path)
    loaded = tf.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is tf.RobertaForMaskedLM and not is_optimized(loaded)
    assert loaded.config._attn_implementation != "fastenc"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    with torch.no_grad():
        _assert_outputs_equal(model(**inputs), loaded(**inputs), inputs["attention_mask"])


def test_gradient_checkpointing_goes_through_transformers_and_gives_same_grads():
    model = tf.BertForSequenceClassification(CONFIGS["bert"]()).train()
    inputs = _with_labels(model, _inputs())
    ref_loss, ref_grads = _step(model, inputs)
    model.gradient_checkpointing_enable()
    optimize(model)
    calls = []
    model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *a: calls.append(1))
    loss, grads = _step(model, inputs)
    assert len(calls) == 2  # the forward and its recomputation in backward
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    _assert_grads_equal(grads, ref_grads)


def test_autocast_matches_transformers_under_autocast():
    model = tf.ElectraForSequenceClassification(CONFIGS["electra"]()).train()
    inputs = _with_labels(model, _inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = _step(model, inputs)
        optimize(model)
        loss, grads = _step(model, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    _assert_grads_equal(grads, ref_grads, rtol=5e-2)


def test_peft_lora_through_optimize():
    peft = pytest.importorskip("peft")
    base = tf.BertForSequenceClassification(CONFIGS["bert"]())
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                      lora_dropout=0.0, task_type="SEQ_CLS"))
    with torch.no_grad():  # LoRA's B starts at zero: give the delta a value so that losing it would show
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    model.train()
    inputs = _with_labels(base, _inputs())
    ref_loss, ref_grads = _step(model, inputs)
    assert any("lora_A" in n for n in ref_grads)
    optimize(model)
    attn = base.bert.encoder.layer[0].attention.self
    assert type(attn.query).__name__ == "Linear" and attn.query.__module__.startswith("peft")
    loss, grads = _step(model, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    _assert_grads_equal(grads, ref_grads)


def test_sentence_transformers_encode_through_optimize(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    st_models = pytest.importorskip("sentence_transformers.models")
    words = ["hello", "world", "fast", "encoder", "kernels", "on", "a", "gpu", "the", "model"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tf.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = tf.BertConfig(**{**COMMON, "vocab_size": len(vocab), "pad_token_id": 0})
    tf.BertModel(config).save_pretrained(tmp_path)
    encoder = st.SentenceTransformer(modules=[st_models.Transformer(str(tmp_path)),
                                              st_models.Pooling(32, pooling_mode="mean")], device="cpu")
    sentences = ["hello world", "fast encoder kernels on a gpu", "the model", "hello"]
    ref = encoder.encode(sentences, convert_to_tensor=True)
    optimize(encoder)
    assert is_optimized(encoder)
    out = encoder.encode(sentences, convert_to_tensor=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_triton_backend_through_optimize():
    """The fused Triton kernels (interpreter on CPU) through an optimized transformers model, packed path."""
    from fastenc import use_backend

    model = tf.BertForSequenceClassification(CONFIGS["bert"]()).train()
    inputs = _with_labels(model, _inputs())
    ref_loss, ref_grads = _step(model, inputs)
    optimize(model)
    with use_backend("triton"):
        loss, grads = _step(model, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    _assert_grads_equal(grads, ref_grads, rtol=1e-4)


def test_errors():
    with pytest.raises(TypeError, match="found no encoder fastenc covers"):
        optimize(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        optimize("bert-base-uncased")
    decoder = tf.BertLMHeadModel(tf.BertConfig(**COMMON, is_decoder=True))
    with pytest.raises(ValueError, match="decoder"):
        optimize(decoder)
    assert not is_optimized(decoder)


@pytest.mark.parametrize("mask_kind", ["left-padded", "4-d"])
def test_left_padding_and_4d_masks_keep_transformers_outputs(mask_kind):
    """Left padding (position 0 padded: the pooler reads it) keeps the padded layout; a caller's 4-D mask runs as an
    additive bias. Either way every position matches transformers."""
    model = tf.BertModel(CONFIGS["bert"]()).eval()
    inputs = _inputs()
    mask = inputs["attention_mask"] = inputs["attention_mask"].flip(1)
    if mask_kind == "4-d":
        inputs["attention_mask"] = mask.bool()[:, None, None, :] & torch.ones(1, 1, 9, 1, dtype=torch.bool)
    with torch.no_grad():
        ref = model(**inputs)
        optimize(model)
        out = model(**inputs)
    _assert_outputs_equal(out, ref, mask, whole=True)


def test_hf_trainer_step_after_optimize(tmp_path):
    """transformers' Trainer runs an optimized model unchanged: one SGD step lands on the same parameters."""
    pytest.importorskip("accelerate")
    inputs = _inputs()
    rows = [{k: v[i] for k, v in inputs.items()} | {"labels": torch.tensor(i % 2)} for i in range(3)]
    trained = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = tf.BertForSequenceClassification(CONFIGS["bert"]())
        if fast:
            optimize(model)
        args = tf.TrainingArguments(output_dir=str(tmp_path / str(fast)), per_device_train_batch_size=3, max_steps=1,
                                    optim="sgd", learning_rate=0.5, report_to=[], use_cpu=True, save_strategy="no",
                                    logging_strategy="no", dataloader_num_workers=0, seed=0)
        tf.Trainer(model=model, args=args, train_dataset=rows).train()
        assert is_optimized(model) == fast
        trained.append(model.state_dict())
    torch.manual_seed(0)
    initial = tf.BertForSequenceClassification(CONFIGS["bert"]()).state_dict()
    ref, got = trained
    assert not torch.equal(ref["classifier.weight"], initial["classifier.weight"])  # the step did happen
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_torch_compile_fullgraph_after_optimize():
    """An optimized model traces as one graph (padded path under tracing: no host sync, no graph break)."""
    model = optimize(tf.BertForSequenceClassification(CONFIGS["bert"]()).eval())
    inputs = _inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
        out = torch.compile(model, backend="eager", fullgraph=True)(**inputs).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
