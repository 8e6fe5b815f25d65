"""A transformers release never breaks a model: a block whose installed forward takes a parameter fastenc's swap does
not know stays transformers' own (warned, and named in explain()), and the model gives transformers' numbers.

Each test fakes a future transformers release by giving one block class a forward with an extra keyword parameter,
then builds the swap table anew."""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
import transformers

import fastenc
from fastenc.models import blocks, swaps
from tests.models.harness import PREFIX, assert_close, assert_grads_close, build_hf, inputs, labels_for

FUTURE = "future_option"
CASES = [(family, name) for family, names in swaps.targets().items() for name in names
         if importlib.util.find_spec(f"transformers.models.{family}")]  # GTE: transformers >= 5.25


def _fake_future_forward(monkeypatch, cls: type) -> None:
    original = cls.forward
    sig = inspect.signature(original)
    params = list(sig.parameters.values())
    extra = inspect.Parameter(FUTURE, inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))

    def forward(self, *args, future_option=None, **kwargs):
        return original(self, *args, **kwargs)

    forward.__signature__ = sig.replace(parameters=[*params[:at], extra, *params[at:]])
    monkeypatch.setattr(cls, "forward", forward)


def _head_class(family: str, block: str = "") -> str:
    head = "ForSequenceClassification" if block.endswith("Pooler") else "ForMaskedLM"  # GTE / NomicBERT's pooler
    return PREFIX[family if family in PREFIX else "roberta"] + head


@pytest.mark.parametrize(("family", "block"), CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_unknown_parameter_keeps_transformers_block(family, block, monkeypatch, fresh_table):
    module = __import__(f"transformers.models.{family}.modeling_{family}", fromlist=["_"])
    cls = getattr(module, block)
    _fake_future_forward(monkeypatch, cls)
    name = _head_class(family, block)
    hf = build_hf(name).train()
    with pytest.warns(RuntimeWarning, match=rf"{cls.__name__} stays transformers' own \(transformers "
                                            rf"{transformers.__version__}\)"):
        ours = fastenc.from_hf(build_hf(name)).train()
    instances = [m for m in ours.modules() if isinstance(m, cls)]
    assert instances, f"{name} has no {block}: the case tests nothing"
    assert all(type(m) is cls for m in instances), f"{block} was swapped despite an unknown parameter"
    assert sum(isinstance(m, blocks._Swap) for m in ours.modules()) > 0, "nothing else was swapped"
    report = fastenc.explain()
    assert cls.__name__ in report and FUTURE in report and transformers.__version__ in report

    inp = inputs(name)
    inp = {k: v[:3] for k, v in inp.items()}  # full, right- and left-padded rows
    lab = labels_for(name, inp)
    real = inp["attention_mask"].bool()
    out, ref = ours(**inp, **lab), hf(**inp, **lab)
    assert_close(out.logits, ref.logits, 1e-5, "logits", mask=real if out.logits.dim() == 3 else None)
    assert_close(out.loss, ref.loss, 1e-5, "loss")
    out.loss.backward()
    ref.loss.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_needs_are_refused_with_what_they_need(monkeypatch, fresh_table):
    """DistilBERT's swapped attention leaves out_lin to the swapped block: with the block refused, both stay
    transformers' (and the encoder, whose packed rows need fastenc's attention)."""
    from transformers.models.distilbert import modeling_distilbert as hf_mod

    _fake_future_forward(monkeypatch, hf_mod.TransformerBlock)
    with pytest.warns(RuntimeWarning):
        table = swaps.swap_table()
    assert hf_mod.TransformerBlock in swaps.refused
    assert hf_mod.DistilBertSelfAttention in swaps.refused
    assert hf_mod.Transformer in swaps.refused
    assert "TransformerBlock" in swaps.refused[hf_mod.DistilBertSelfAttention]
    assert hf_mod.Embeddings in table


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_cache_names_of_both_releases_are_served(family):
    """transformers 5.25 renamed past_key_values -> cache and past_key_values_length -> cache_length: whichever the
    installed release uses, the blocks are swapped, and the embeddings honour the offset under either name."""
    name = _head_class(family)
    ours = fastenc.from_hf(build_hf(name)).eval()
    emb = ours.base_model.embeddings
    assert isinstance(emb, blocks._Embeddings)
    ids = inputs(family)["input_ids"][:2, :5]
    original = emb._fastenc_original.forward
    params = inspect.signature(original).parameters
    installed = next(n for n in ("cache_length", "past_key_values_length") if n in params)
    with torch.no_grad():
        ref = original(emb, input_ids=ids, **{installed: 2})
        assert (ref - original(emb, input_ids=ids)).abs().max() > 1e-3  # the offset matters
        for kw in ("cache_length", "past_key_values_length"):
            assert_close(emb(input_ids=ids, **{kw: 2}), ref, 1e-6, kw)
    with pytest.raises(ValueError, match="cache"):
        ours(input_ids=ids, cache=object())
