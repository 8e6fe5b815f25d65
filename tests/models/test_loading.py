"""Checkpoints and twins: from_hf, save_pretrained -> transformers, strict state_dict both ways, heads from base
checkpoints (and the reverse) with their loading report, sharded safetensors and pytorch_model.bin, torch_dtype,
configs from transformers objects."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import fastenc
from tests.models.harness import (
    ALL_CLASSES,
    assert_close,
    assert_grads_close,
    assert_outputs_close,
    build_hf,
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
    inp = inputs(variant_of(name), batch=3)
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
    tied = set(ours._tied_weights_keys)
    assert not tied & set(saved), "tied copies must not be saved"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [name] and config["model_type"] == variant_of(name)
    hf, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inp = inputs(variant_of(name), batch=3)
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
    for target, source in ours._tied_weights_keys.items():
        assert ours.get_parameter(target) is ours.get_parameter(source)


def test_head_from_base_checkpoint_reports_and_initialises(tmp_path):
    base = build_hf("BertModel")
    base.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="newly initialised"):
        ours, info = fastenc.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["classifier.bias", "classifier.weight"]
    assert info["unexpected_keys"] == []
    assert torch.equal(ours.classifier.bias, torch.zeros(3))
    assert 0.1 < ours.classifier.weight.std().item() < 0.3  # initializer_range 0.2
    hf_head = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    for key, p in base.state_dict().items():
        assert torch.equal(ours.state_dict()["bert." + key], p)
        assert torch.equal(hf_head.state_dict()["bert." + key], p)


def test_base_from_head_checkpoint_drops_prefix(tmp_path):
    head = build_hf("ElectraForPreTraining")
    head.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="unexpected"):
        ours, info = fastenc.ElectraModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == []
    assert all(k.startswith("discriminator_predictions.") for k in info["unexpected_keys"])
    inp = inputs("electra", batch=3)
    with torch.no_grad():
        assert_outputs_close(ours(**inp), head.electra(**inp), 1e-5)


def test_sharded_and_bin_checkpoints(tmp_path):
    hf = build_hf("AlbertForMaskedLM")
    inp = inputs("albert", batch=3)
    with torch.no_grad():
        ref = hf(**inp)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k not in hf._tied_weights_keys}
    keys = sorted(state)
    sharded, legacy = tmp_path / "sharded", tmp_path / "bin"
    for d in (sharded, legacy):
        d.mkdir()
        hf.config.save_pretrained(d)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for file, part in halves.items():
        save_file({k: state[k] for k in part}, str(sharded / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save(state, legacy / "pytorch_model.bin")
    for d in (sharded, legacy):
        ours, info = fastenc.AlbertForMaskedLM.from_pretrained(d, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        with torch.no_grad():
            assert_outputs_close(ours(**inp), ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "bfloat16"])
def test_from_pretrained_torch_dtype(dtype, tmp_path):
    build_hf("BertModel").save_pretrained(tmp_path)
    ours = fastenc.BertModel.from_pretrained(tmp_path, torch_dtype=dtype)
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert all(p.dtype == want for p in ours.parameters())
    assert ours.embeddings.position_ids.dtype == torch.long
    with pytest.raises(TypeError, match="torch_dtype"):
        fastenc.BertModel.from_pretrained(tmp_path, torch_dtype=torch.int8)


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        fastenc.BertModel.from_pretrained(tmp_path / "nowhere")
    build_hf("BertModel").config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        fastenc.BertModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        fastenc.RobertaModel.from_pretrained(tmp_path)


def test_config_from_transformers_and_back():
    hf_cfg = transformers.AlbertConfig(embedding_size=16, hidden_size=32, num_attention_heads=4, num_labels=5,
                                       hidden_act="relu")
    ours = fastenc.AlbertConfig.from_any(hf_cfg)
    assert (ours.embedding_size, ours.hidden_act, ours.num_labels) == (16, "relu", 5)
    assert ours.classifier_dropout_prob == hf_cfg.classifier_dropout_prob
    again = transformers.AlbertConfig(**ours.to_dict())
    assert again.num_labels == 5 and again.embedding_size == 16
    defaults = fastenc.RobertaConfig()
    assert (defaults.pad_token_id, defaults.vocab_size, defaults.layer_norm_eps) == (1, 50265, 1e-12)
    with pytest.raises(ValueError, match="model_type"):
        fastenc.BertConfig.from_any(hf_cfg)
    with pytest.raises(ValueError, match="multiple"):
        fastenc.BertConfig(hidden_size=30, num_attention_heads=4)


def test_config_file_round_trip(tmp_path):
    cfg = fastenc.ElectraConfig(embedding_size=16, hidden_size=32, num_attention_heads=4, num_labels=4,
                                layer_norm_eps=1e-7, some_future_field=[1, 2])
    cfg.save_pretrained(tmp_path)
    again = fastenc.ElectraConfig.from_pretrained(tmp_path)
    assert again == cfg and again.some_future_field == [1, 2]
    assert os.path.isfile(tmp_path / "config.json")
    assert_close(torch.tensor(again.layer_norm_eps), torch.tensor(1e-7), 0.0, "eps")


def test_from_pretrained_config_overrides_and_auto_dtype(tmp_path):
    base = build_hf("BertModel").to(torch.bfloat16)
    base.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="newly initialised"):
        ours = fastenc.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5, torch_dtype="auto")
    assert ours.classifier.out_features == 5 and ours.config.num_labels == 5
    assert ours.dtype == torch.bfloat16
    assert fastenc.BertModel.from_pretrained(tmp_path).dtype == torch.float32  # transformers' default: float32


def test_legacy_checkpoint_names(tmp_path):
    """Old checkpoints: LayerNorm.gamma / .beta and stored position_ids buffers, in a pytorch_model.bin."""
    hf = build_hf("BertForPreTraining")
    state = {}
    for key, value in hf.state_dict().items():
        if "LayerNorm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        state[key] = value.clone()
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    hf.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours, info = fastenc.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inp = inputs("bert", batch=3)
    with torch.no_grad():
        assert_outputs_close(ours(**inp), hf(**inp), 1e-5)
