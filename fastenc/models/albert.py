"""ALBERT: transformers' ALBERT classes with fastenc's blocks (shared layer groups run the same swapped modules). The
sparse MLM path's hooks: the prediction head on the labelled rows, and with the sentence-order objective."""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.albert import modeling_albert as hf

from fastenc.models.families import classes
from fastenc.models.heads import pretraining_loss


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.predictions(rows)


def _pretraining_head(self: Any, outputs: Any, rows: torch.Tensor, labels: torch.Tensor, arg: Any) -> Any:
    scores = self.predictions(rows)
    sop = self.sop_classifier(outputs.pooler_output)
    loss = pretraining_loss(scores, labels, sop, arg("sentence_order_label"))
    return hf.AlbertForPreTrainingOutput(loss=loss, prediction_logits=scores, sop_logits=sop,
                                         hidden_states=outputs.hidden_states, attentions=outputs.attentions)


CLASSES = classes("albert", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits},
                             "ForPreTraining": {"_fastenc_sparse_head": _pretraining_head}})
globals().update(CLASSES)
__all__ = list(CLASSES)
