"""GTE (transformers >= 5.25: gte-multilingual-base, gte-*-en-v1.5): transformers' GTE classes with fastenc's rotary
blocks (fastenc.models.rotary_blocks); the base model is its own encoder, so its class carries the layout swap. On a
release without transformers.models.gte the classes exist and raise an error naming it. The sparse MLM path's hook:
the LM head on the labelled rows."""

from __future__ import annotations

from typing import Any

import torch

from fastenc.models.families import classes
from fastenc.models.rotary_blocks import _RotaryModel


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.lm_head(rows)


CLASSES = classes("gte", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits}}, {"Model": _RotaryModel})
globals().update(CLASSES)
__all__ = list(CLASSES)
