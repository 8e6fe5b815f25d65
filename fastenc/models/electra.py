"""ELECTRA: transformers' ELECTRA classes with fastenc's blocks. ForPreTraining is the replaced-token-detection
discriminator (its loss reads real positions only), ForMaskedLM the generator; no ElectraForCausalLM."""

from __future__ import annotations

import torch
from transformers.models.electra import modeling_electra as hf

from fastenc.models.heads import FastencModel


class ElectraModel(FastencModel, hf.ElectraModel):
    pass


class ElectraForMaskedLM(FastencModel, hf.ElectraForMaskedLM):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_mlm_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.generator_lm_head(self.generator_predictions(rows))


class ElectraForPreTraining(FastencModel, hf.ElectraForPreTraining):
    pass


class ElectraForSequenceClassification(FastencModel, hf.ElectraForSequenceClassification):
    pass


class ElectraForMultipleChoice(FastencModel, hf.ElectraForMultipleChoice):
    pass


class ElectraForTokenClassification(FastencModel, hf.ElectraForTokenClassification):
    _fastenc_padded_loss = "labels"


class ElectraForQuestionAnswering(FastencModel, hf.ElectraForQuestionAnswering):
    _fastenc_padded_loss = "spans"
