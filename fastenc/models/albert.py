"""ALBERT: transformers' ALBERT classes with fastenc's blocks (shared layer groups run the same swapped modules)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.albert import modeling_albert as hf

from fastenc.models.heads import FastencModel, pretraining_loss


class AlbertModel(FastencModel, hf.AlbertModel):
    pass


class AlbertForMaskedLM(FastencModel, hf.AlbertForMaskedLM):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_mlm_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.predictions(rows)


class AlbertForPreTraining(FastencModel, hf.AlbertForPreTraining):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_sparse_head(self, outputs: Any, rows: torch.Tensor, labels: torch.Tensor, arg: Any) -> Any:
        scores = self.predictions(rows)
        sop = self.sop_classifier(outputs.pooler_output)
        loss = pretraining_loss(scores, labels, sop, arg("sentence_order_label"))
        return hf.AlbertForPreTrainingOutput(loss=loss, prediction_logits=scores, sop_logits=sop,
                                             hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class AlbertForSequenceClassification(FastencModel, hf.AlbertForSequenceClassification):
    pass


class AlbertForMultipleChoice(FastencModel, hf.AlbertForMultipleChoice):
    pass


class AlbertForTokenClassification(FastencModel, hf.AlbertForTokenClassification):
    _fastenc_padded_loss = "labels"


class AlbertForQuestionAnswering(FastencModel, hf.AlbertForQuestionAnswering):
    _fastenc_padded_loss = "spans"
