"""RoBERTa: transformers' RoBERTa classes with fastenc's blocks (no RobertaForCausalLM: decoding is not fastenc's)."""

from __future__ import annotations

import torch
from transformers.models.roberta import modeling_roberta as hf

from fastenc.models.heads import FastencModel


class RobertaModel(FastencModel, hf.RobertaModel):
    pass


class RobertaForMaskedLM(FastencModel, hf.RobertaForMaskedLM):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_mlm_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.lm_head(rows)


class RobertaForSequenceClassification(FastencModel, hf.RobertaForSequenceClassification):
    pass


class RobertaForMultipleChoice(FastencModel, hf.RobertaForMultipleChoice):
    pass


class RobertaForTokenClassification(FastencModel, hf.RobertaForTokenClassification):
    _fastenc_padded_loss = "labels"


class RobertaForQuestionAnswering(FastencModel, hf.RobertaForQuestionAnswering):
    _fastenc_padded_loss = "spans"
