"""ELECTRA: transformers' ELECTRA classes with fastenc's blocks. ForPreTraining is the replaced-token-detection
discriminator (its loss reads real positions only), ForMaskedLM the generator; no ElectraForCausalLM. The sparse MLM
path's hook: the generator's prediction head on the labelled rows."""

from __future__ import annotations

from typing import Any

import torch

from fastenc.models.families import classes


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.generator_lm_head(self.generator_predictions(rows))


CLASSES = classes("electra", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits}})
globals().update(CLASSES)
__all__ = list(CLASSES)
