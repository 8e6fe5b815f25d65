"""BERT: transformers' BERT classes with fastenc's blocks; the encoder heads (no BertLMHeadModel: decoding is not
fastenc's). The sparse MLM path's hooks: the prediction head on the labelled rows, and with NSP."""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.bert import modeling_bert as hf

from fastenc.models.families import classes
from fastenc.models.heads import pretraining_loss


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.cls(rows)


def _pretraining_head(self: Any, outputs: Any, rows: torch.Tensor, labels: torch.Tensor, arg: Any) -> Any:
    scores, nsp = self.cls(rows, outputs.pooler_output)
    loss = pretraining_loss(scores, labels, nsp, arg("next_sentence_label"))
    return hf.BertForPreTrainingOutput(loss=loss, prediction_logits=scores, seq_relationship_logits=nsp,
                                       hidden_states=outputs.hidden_states, attentions=outputs.attentions)


CLASSES = classes("bert", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits},
                           "ForPreTraining": {"_fastenc_sparse_head": _pretraining_head}})
globals().update(CLASSES)
__all__ = list(CLASSES)
