"""Checkpoints and twins. Loading and saving are transformers' own (fastenc's classes subclass transformers'); these
tests check that they reach through fastenc's classes intact: from_hf, save_pretrained -> transformers, strict
state_dict both ways, heads from base checkpoints with transformers' loading report, sharded safetensors,
pytorch_model.bin, dtype, shape mismatches, configs, Auto classes and the PreTrainedModel API."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import fastenc
from tests.models.harness import (
    ALL_CLASSES,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
    hf_config,
    inputs,
    labels_for,
    variant_of,
)

ONE_PER_VARIANT = ["BertForMaskedLM", "RobertaForMaskedLM", "AlbertForPreTraining", "ElectraForMaskedLM"]


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_from_hf_shares_parameters_and_matches(name):
    hf = build_hf(name)
    ours = fastenc.from_hf(hf)
    assert type(ours).__name__ == name
    hf_params = dict(hf.named_parameters(remove_duplicate=False))
    for key, p in ours.named_parameters(remove_duplicate=False):
        assert p is hf_params[key], key
    inp = inputs(name, batch=3)
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)


def test_from_hf_training_step_matches():
    hf = build_hf("RobertaForSequenceClassification")
    twin = build_hf("RobertaForSequenceClassification")
    ours = fastenc.from_hf(twin).train()
    hf.train()
    inp = inputs("roberta")
    lab = labels_for("RobertaForSequenceClassification", inp)
    hf(**inp, **lab).loss.backward()
    ours(**inp, **lab).loss.backward()
    assert_grads_close(ours, hf, 1e-4)


def test_from_hf_rejects_other_models():
    with pytest.raises(TypeError, match="no fastenc class"):
        fastenc.from_hf(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ONE_PER_VARIANT + ["ElectraForPreTraining", "BertForSequenceClassification"])
def test_save_pretrained_loads_in_transformers(name, tmp_path):
    ours = fastenc.from_hf(build_hf(name))
    ours.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    tied = set(ours._tied_weights_keys or {})
    assert not tied & set(saved), "tied copies must not be saved"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [name] and config["model_type"] == variant_of(name)
    hf, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inp = inputs(name, batch=3)
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf.eval()(**inp), 1e-5)
    for key, p in ours.state_dict().items():
        assert torch.equal(p, hf.state_dict()[key]), key


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_state_dict_strict_both_ways(name):
    hf = build_hf(name)
    cfg = hf.config
    ours = getattr(fastenc, name)(cfg)
    assert list(ours.state_dict()) == list(hf.state_dict())
    ours.load_state_dict(hf.state_dict(), strict=True)
    other = build_hf(name, seed=1)
    other.load_state_dict(ours.state_dict(), strict=True)
    assert {k for k, _ in ours.named_buffers()} == {k for k, _ in hf.named_buffers()}
    for key, b in hf.named_buffers():
        assert torch.equal(dict(ours.named_buffers())[key], b), key
    for target, source in (ours._tied_weights_keys or {}).items():
        assert ours.get_parameter(target) is ours.get_parameter(source)


def test_head_from_base_checkpoint_reports_and_initialises(tmp_path):
    base = build_hf("BertModel")
    base.save_pretrained(tmp_path)
    ours, info = fastenc.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    _, hf_info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(hf_info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"]
    assert torch.equal(ours.classifier.bias, torch.zeros(3))
    assert 0.1 < ours.classifier.weight.std().item() < 0.3  # initializer_range 0.2
    for key, p in base.state_dict().items():
        assert torch.equal(ours.state_dict()["bert." + key], p)
    assert type(ours) is fastenc.BertForSequenceClassification and ours.training is False


def test_base_from_head_checkpoint_drops_prefix(tmp_path):
    head = build_hf("ElectraForPreTraining")
    head.save_pretrained(tmp_path)
    ours, info = fastenc.ElectraModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert info["unexpected_keys"] and all(k.startswith("discriminator_predictions.") for k in info["unexpected_keys"])
    inp = inputs("electra", batch=3)
    with torch.no_grad():
        assert_outputs_close(ours(**inp), head.electra(**inp), 1e-5)


def test_sharded_and_bin_checkpoints(tmp_path):
    hf = build_hf("AlbertForMaskedLM")
    inp = inputs("albert", batch=3)
    with torch.no_grad():
        ref = hf(**inp)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    legacy = tmp_path / "bin"
    hf.config.save_pretrained(legacy)
    torch.save(hf.state_dict(), legacy / "pytorch_model.bin")
    for d in (tmp_path / "sharded", legacy):
        ours, info = fastenc.AlbertForMaskedLM.from_pretrained(d, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            assert_outputs_close(ours(**inp), ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "bfloat16"])
def test_from_pretrained_dtype(dtype, tmp_path):
    build_hf("BertModel").save_pretrained(tmp_path)
    ours = fastenc.BertModel.from_pretrained(tmp_path, dtype=dtype)
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert all(p.dtype == want for p in ours.parameters())
    assert ours.embeddings.position_ids.dtype == torch.long


def test_shape_mismatch_raises_unless_ignored(tmp_path):
    build_hf("BertForSequenceClassification").save_pretrained(tmp_path)  # num_labels=3
    with pytest.raises(RuntimeError, match="size mismatch|mismatch"):
        fastenc.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    ours, info = fastenc.BertForSequenceClassification.from_pretrained(
        tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert ours.classifier.out_features == 5 and info["mismatched_keys"]


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(OSError):
        fastenc.BertModel.from_pretrained(tmp_path / "nowhere", local_files_only=True)


def test_config_is_transformers_config_and_decoders_are_refused():
    assert fastenc.BertConfig is transformers.BertConfig
    cfg = hf_config("bert")
    model = fastenc.BertModel(cfg)
    assert isinstance(model, transformers.BertModel) and isinstance(model, transformers.PreTrainedModel)
    assert model.config is cfg and model.config._attn_implementation == "fastenc"
    for field in ("is_decoder", "add_cross_attention"):
        with pytest.raises(ValueError, match=field):
            fastenc.BertModel(hf_config("bert", **{field: True}))


def test_unknown_attention_implementation_is_not_saved(tmp_path):
    build_hf("BertModel").save_pretrained(tmp_path / "a")
    ours = fastenc.BertModel.from_pretrained(tmp_path / "a", attn_implementation="eager")
    ours.save_pretrained(tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert "attn_implementation" not in saved and "_attn_implementation" not in saved
    transformers.BertModel.from_pretrained(tmp_path / "b")  # loads in transformers


def test_lazy_names_list_every_model_class():
    assert set(fastenc._MODELS) == set(fastenc.models.MODEL_CLASSES)
    for name in fastenc._MODELS:
        cls = getattr(fastenc, name)
        assert cls._fastenc_hf_class is getattr(transformers, name, None) and issubclass(cls, cls._fastenc_hf_class) \
            if cls._fastenc_hf_class is not None else not hasattr(transformers, name)


def test_auto_classes_resolve_to_fastenc(tmp_path):
    for name in ("RobertaForTokenClassification", "ElectraForPreTraining", "AlbertForMultipleChoice"):
        build_hf(name).save_pretrained(tmp_path / name)
    assert type(fastenc.AutoModelForTokenClassification.from_pretrained(
        tmp_path / "RobertaForTokenClassification")) is fastenc.RobertaForTokenClassification
    assert type(fastenc.AutoModelForPreTraining.from_pretrained(
        tmp_path / "ElectraForPreTraining")) is fastenc.ElectraForPreTraining
    assert type(fastenc.AutoModelForMultipleChoice.from_pretrained(
        tmp_path / "AlbertForMultipleChoice")) is fastenc.AlbertForMultipleChoice
    base = fastenc.AutoModel.from_pretrained(tmp_path / "ElectraForPreTraining", num_hidden_layers=1)
    assert type(base) is fastenc.ElectraModel and base.config.num_hidden_layers == 1
    assert type(fastenc.AutoModel.from_config(hf_config("albert"))) is fastenc.AlbertModel
    with pytest.raises(ValueError, match="no class for"):
        fastenc.AutoModel.from_config(transformers.MPNetConfig(hidden_size=32, num_attention_heads=4,
                                                               num_hidden_layers=1, intermediate_size=37))


def test_pretrained_model_api_through_fastenc():
    """A few PreTrainedModel features that fastenc used to lack, now inherited: they must keep fastenc's blocks."""
    ours = fastenc.from_hf(build_hf("BertForMaskedLM"))
    hf = build_hf("BertForMaskedLM")
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.base_model is ours.bert
    ours.resize_token_embeddings(120)
    hf.resize_token_embeddings(120)
    assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight
    inp = inputs("bert", batch=3)
    inp["input_ids"][0, 1] = 110  # a new token
    ours.get_input_embeddings().weight.data.copy_(hf.get_input_embeddings().weight.data)
    ours.cls.predictions.bias.data.copy_(hf.cls.predictions.bias.data)
    with torch.no_grad():
        assert_outputs_close(ours.eval()(**inp), hf.eval()(**inp), 1e-5)
    assert fastenc.is_optimized(ours)
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    ours.enable_input_require_grads()
