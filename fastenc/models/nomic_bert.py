"""NomicBERT (nomic-embed-text): transformers' NomicBERT classes with fastenc's rotary blocks
(fastenc.models.rotary_blocks); the base model is its own encoder, so its class carries the layout swap. The sparse
MLM path's hook: the prediction head on the labelled rows."""

from __future__ import annotations

from typing import Any

import torch

from fastenc.models.families import classes
from fastenc.models.rotary_blocks import _RotaryModel


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.cls(rows)


CLASSES = classes("nomic_bert", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits}}, {"Model": _RotaryModel})
globals().update(CLASSES)
__all__ = list(CLASSES)
