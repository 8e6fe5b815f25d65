"""Bad input gets a clear error naming the argument, at the model level."""

from __future__ import annotations

import pytest
import torch

import fastenc
from tests.models.harness import build_hf, inputs


@pytest.fixture(scope="module")
def bert():
    return fastenc.from_hf(build_hf("BertModel"))


@pytest.fixture(scope="module")
def roberta():
    return fastenc.from_hf(build_hf("RobertaModel"))


def test_sequence_longer_than_positions(bert, roberta):
    with pytest.raises(ValueError, match="input_ids has sequence length 65.*64"):
        bert(torch.randint(1, 99, (1, 65)))
    bert(torch.randint(1, 99, (1, 64)))
    # RoBERTa positions start at padding_idx + 1 = 2: 62 tokens fit in 64 positions
    with pytest.raises(ValueError, match="input_ids has sequence length 63.*62"):
        roberta(torch.randint(3, 99, (1, 63)))
    roberta(torch.randint(3, 99, (1, 62)))
    with pytest.raises(ValueError, match="inputs_embeds has sequence length"):
        bert(inputs_embeds=torch.randn(1, 65, 32))


def test_ids_out_of_vocabulary_or_negative(bert):
    with pytest.raises(IndexError, match="input_ids"):
        bert(torch.tensor([[1, 2, 99]]))
    with pytest.raises(IndexError, match="input_ids"):
        bert(torch.tensor([[1, -1, 3]]))


def test_token_type_ids_out_of_range(bert):
    with pytest.raises(IndexError, match="token_type_ids"):
        bert(torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 1, 2]]))


def test_position_ids_out_of_range(bert):
    with pytest.raises(IndexError, match="position_ids"):
        bert(torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 1, 64]]))


def test_float_ids(bert, roberta):
    for model in (bert, roberta):
        with pytest.raises(TypeError, match="input_ids"):
            model(torch.tensor([[1.0, 2.0, 3.0]]))
    with pytest.raises(TypeError, match="token_type_ids"):
        bert(torch.tensor([[1, 2, 3]]), token_type_ids=torch.zeros(1, 3))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_narrow_integer_ids_name_the_argument(bert, dtype):
    """torch's gather takes int64 / int32 ids only; its own error names no argument."""
    with pytest.raises(TypeError, match=f"input_ids must hold integer ids .*{dtype}"):
        bert(torch.tensor([[1, 2, 3]], dtype=dtype))
    with pytest.raises(TypeError, match=f"token_type_ids must hold integer ids .*{dtype}"):
        bert(torch.tensor([[1, 2, 3]]), token_type_ids=torch.zeros(1, 3, dtype=dtype))
    out = bert(torch.tensor([[1, 2, 3]], dtype=torch.int32)).last_hidden_state
    torch.testing.assert_close(out, bert(torch.tensor([[1, 2, 3]])).last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)], ids=["no-rows", "zero-length"])
def test_empty_batch_or_zero_length_names_the_argument(shape):
    """transformers cannot run these either (a reshape error); fastenc says which argument, with or without a mask,
    for a head and for the multiple-choice layout."""
    for name, full in (("BertForSequenceClassification", shape), ("DistilBertForMultipleChoice", (2, *shape))):
        model = fastenc.from_hf(build_hf(name))
        ids = torch.randint(3, 99, full)
        for mask in (None, torch.ones(full, dtype=torch.long)):
            with pytest.raises(ValueError, match=r"input_ids has shape .*empty batch or zero-length"):
                model(ids, attention_mask=mask)
        with pytest.raises(ValueError, match=r"inputs_embeds has shape .*empty batch or zero-length"):
            model(inputs_embeds=torch.randn(*full, 32))


def test_mask_shape_must_match_input_ids(bert):
    inp = inputs("bert", batch=2, seq=6)
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        bert(inp["input_ids"], attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        bert(inp["input_ids"], attention_mask=torch.ones(3, 6))
    with pytest.raises(ValueError, match="4-D attention_mask must broadcast"):
        bert(inp["input_ids"], attention_mask=torch.zeros(2, 1, 6, 5))
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        bert(inp["input_ids"], attention_mask=torch.ones(6))
    with pytest.raises(TypeError, match="attention_mask"):
        bert(inp["input_ids"], attention_mask=[[1] * 6] * 2)


def test_input_ids_and_inputs_embeds_both_or_neither(bert):
    ids = torch.randint(1, 99, (2, 5))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        bert(ids, inputs_embeds=torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        bert()
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        bert(torch.randint(1, 99, (5,)))
    with pytest.raises(ValueError, match="inputs_embeds must have last dim 32"):
        bert(inputs_embeds=torch.randn(2, 5, 31))


def test_decoder_only_arguments_are_refused(bert):
    for name in ("encoder_hidden_states", "encoder_attention_mask"):
        with pytest.raises(ValueError, match=name):
            bert(torch.randint(1, 99, (2, 5)), **{name: torch.randn(2, 5, 32)})


def test_fully_masked_rows_never_make_nan():
    """Every head in train mode, all rows fully padded: finite outputs and finite gradients."""
    for name in ("BertForMaskedLM", "ElectraForPreTraining", "AlbertForSequenceClassification"):
        model = fastenc.from_hf(build_hf(name)).train()
        inp = inputs(name.split("For")[0].lower(), batch=2, seq=6)
        inp["attention_mask"].zero_()
        out = model(**inp, output_hidden_states=True)
        logits = out.logits if hasattr(out, "logits") and out.logits is not None else out.prediction_logits
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
