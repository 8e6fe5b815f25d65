"""DistilBERT: transformers' DistilBERT classes with fastenc's blocks (its own module names: q_lin / k_lin / v_lin /
out_lin, sa_layer_norm, ffn.lin1 / lin2, output_layer_norm; no token types; sinusoidal positions are only an
initialisation). The MLM head runs inline in transformers' forward; the sparse path's hook runs it fused."""

from __future__ import annotations

from typing import Any

import torch

from fastenc.models.families import classes
from fastenc.models.fused import linear_act_norm


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.vocab_projector(linear_act_norm(rows, self.vocab_transform, self.activation, self.vocab_layer_norm))


CLASSES = classes("distilbert", {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits}})
globals().update(CLASSES)
__all__ = list(CLASSES)
