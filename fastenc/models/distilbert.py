"""DistilBERT: transformers' DistilBERT classes with fastenc's blocks (its own module names: q_lin / k_lin / v_lin /
out_lin, sa_layer_norm, ffn.lin1 / lin2, output_layer_norm; no token types; sinusoidal positions are only an
initialisation). The MLM head runs inline in transformers' forward; the sparse path runs it fused."""

from __future__ import annotations

import torch
from transformers.models.distilbert import modeling_distilbert as hf

from fastenc.models.fused import linear_act_norm
from fastenc.models.heads import FastencModel


class DistilBertModel(FastencModel, hf.DistilBertModel):
    pass


class DistilBertForMaskedLM(FastencModel, hf.DistilBertForMaskedLM):
    _fastenc_padded_loss = "labels"
    _fastenc_sparse = True

    def _fastenc_mlm_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.vocab_projector(linear_act_norm(rows, self.vocab_transform, self.activation,
                                                    self.vocab_layer_norm))


class DistilBertForSequenceClassification(FastencModel, hf.DistilBertForSequenceClassification):
    pass


class DistilBertForMultipleChoice(FastencModel, hf.DistilBertForMultipleChoice):
    pass


class DistilBertForTokenClassification(FastencModel, hf.DistilBertForTokenClassification):
    _fastenc_padded_loss = "labels"


class DistilBertForQuestionAnswering(FastencModel, hf.DistilBertForQuestionAnswering):
    _fastenc_padded_loss = "spans"
