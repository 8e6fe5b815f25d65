"""ModernBERT: transformers' ModernBERT classes with fastenc's blocks (fastenc.models.modernbert_blocks: rotary
positions, alternating local / global attention, gated MLP, pre-LN residual chain). The base model's own forward is
a swap (ModernBERT has no encoder module to run the layer loop), so fastenc's ModernBertModel carries it before
transformers' class. The sparse MLM path's hook runs the prediction head and the tied decoder on the labelled rows
(transformers' own `config.sparse_prediction` gives the same rows and loss)."""

from __future__ import annotations

from typing import Any

import torch

from fastenc.models.families import classes
from fastenc.models.modernbert_blocks import _ModernBertModel


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.decoder(self.head(rows))


CLASSES = classes("modernbert", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits}},
                  mixins={"Model": _ModernBertModel})
globals().update(CLASSES)
__all__ = list(CLASSES)
