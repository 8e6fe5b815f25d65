"""Canaries for every private name of transformers that fastenc reads (fastenc/models/hf_internals.py): each fails
naming the name and the installed release when that release moved it. And a missing one turns its path off with a
reason, never an error at call time."""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers

import fastenc
from fastenc import autotune
from fastenc.models import hf_internals
from tests.models.harness import build_hf, inputs

RELEASE = f"transformers {transformers.__version__}"


@pytest.mark.parametrize("what", sorted(hf_internals.MODULE_NAMES))
def test_module_level_private_name_exists(what):
    module, name = hf_internals.MODULE_NAMES[what]
    assert hasattr(importlib.import_module(module), name), f"{RELEASE} moved {module}.{name} ({what})"


def test_auto_mappings_exist():
    for auto in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification"):
        assert hasattr(getattr(transformers, auto), "_model_mapping"), f"{RELEASE} moved {auto}._model_mapping"


def test_config_records_the_requested_attention():
    config = transformers.BertConfig(attn_implementation="eager")
    attr = hf_internals.ATTN_IMPLEMENTATION_ATTR
    assert getattr(config, attr, "missing") == "eager", f"{RELEASE} moved config.{attr}"
    assert getattr(transformers.BertConfig(), attr, "missing") is None, f"{RELEASE} changed config.{attr}"


def test_capture_hooks_carry_their_name():
    """transformers installs its output-capture hooks at the first forward; at least one carries the name fastenc
    recognises."""
    model = build_hf("BertModel").eval()
    with torch.no_grad():
        model(**inputs("bert"), output_hidden_states=True)
    names = {getattr(h, "__name__", None) for m in model.modules() for h in m._forward_hooks.values()}
    assert hf_internals.OUTPUT_CAPTURING_HOOK in names, f"{RELEASE} renamed its capture hook: {sorted(map(str, names))}"


def test_recordable_outputs_follow_a_class_change():
    """A model whose class changed after construction (optimize, a base model's block swap) records hidden states
    once refresh_recordable registered its new class (the registry's keying differs between 5.17 and 5.25)."""
    model = build_hf("BertModel").eval()
    model.__class__ = type("BertModel", (type(model),), {"__module__": __name__})
    hf_internals.refresh_recordable(model)
    with torch.no_grad():
        out = model(**inputs("bert"), output_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == 3, f"{RELEASE} changed its registry"


def test_gelu_class_names():
    from transformers.activations import ACT2FN

    assert type(ACT2FN["gelu"]).__name__ in hf_internals.GELU_EXACT, f"{RELEASE} renamed its erf GELU class"
    for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        assert type(ACT2FN[name]).__name__ in hf_internals.GELU_TANH, f"{RELEASE} renamed the class of {name}"
    assert type(ACT2FN["silu"]).__name__ in hf_internals.SILU, f"{RELEASE} renamed its SiLU class"


def test_output_capture_registry_is_keyed_by_class_name():
    """register_recordable writes str(class) keys, which transformers' capture reads in every supported release."""
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    model = build_hf("ModernBertModel")
    key = str(type(model))
    assert key in _CAN_RECORD_REGISTRY, f"{RELEASE} keys its output-capture registry otherwise"
    renamed = type("Renamed", (type(model),), {})
    hf_internals.register_recordable(renamed)
    assert dict.get(_CAN_RECORD_REGISTRY, str(renamed)) == model._can_record_outputs


@pytest.fixture
def forget_lookups():
    hf_internals._found.clear()
    autotune._notes.clear()
    yield
    hf_internals._found.clear()
    autotune._notes.clear()


def test_missing_recording_state_turns_packing_off(monkeypatch, forget_lookups):
    """Without the recording state fastenc assumes recording: the model runs padded, with transformers' numbers."""
    monkeypatch.setitem(hf_internals.MODULE_NAMES, "recording state",
                        ("transformers.utils.output_capturing", "_name_of_a_future_release"))
    hf = build_hf("BertModel").eval()
    ours = fastenc.from_hf(build_hf("BertModel")).eval()
    inp = inputs("bert")
    with pytest.warns(RuntimeWarning, match="recording state is off"), torch.no_grad():
        out = ours(**inp).last_hidden_state
    with torch.no_grad():
        ref = hf(**inp).last_hidden_state
    real = inp["attention_mask"].bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    assert out[~real].abs().max() > 0  # padded positions computed as transformers does: the padded layout ran
    assert "_name_of_a_future_release" in fastenc.explain()


def test_missing_auto_resolution_is_a_clear_error(monkeypatch, forget_lookups):
    monkeypatch.setitem(hf_internals.MODULE_NAMES, "Auto class resolution",
                        ("transformers.models.auto.auto_factory", "_name_of_a_future_release"))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="fastenc.AutoModel: .*fastenc class by name"):
        fastenc.AutoModel.from_config(transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                              num_attention_heads=4, intermediate_size=37))
