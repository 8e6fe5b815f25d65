"""BERT: transformers' BERT classes with fastenc's blocks; the encoder heads (no BertLMHeadModel: decoding is not
fastenc's)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.bert import modeling_bert as hf

from fastenc.models.heads import FastencModel, pretraining_loss


class BertModel(FastencModel, hf.BertModel):
    pass


class BertForMaskedLM(FastencModel, hf.BertForMaskedLM):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_mlm_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.cls(rows)


class BertForPreTraining(FastencModel, hf.BertForPreTraining):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_sparse_head(self, outputs: Any, rows: torch.Tensor, labels: torch.Tensor, arg: Any) -> Any:
        scores, nsp = self.cls(rows, outputs.pooler_output)
        loss = pretraining_loss(scores, labels, nsp, arg("next_sentence_label"))
        return hf.BertForPreTrainingOutput(loss=loss, prediction_logits=scores, seq_relationship_logits=nsp,
                                           hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class BertForNextSentencePrediction(FastencModel, hf.BertForNextSentencePrediction):
    pass


class BertForSequenceClassification(FastencModel, hf.BertForSequenceClassification):
    pass


class BertForMultipleChoice(FastencModel, hf.BertForMultipleChoice):
    pass


class BertForTokenClassification(FastencModel, hf.BertForTokenClassification):
    _fastenc_padded_loss = "labels"


class BertForQuestionAnswering(FastencModel, hf.BertForQuestionAnswering):
    _fastenc_padded_loss = "spans"
