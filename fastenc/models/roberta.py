"""RoBERTa and the families with its architecture under their own transformers classes: XLM-RoBERTa
(multilingual-e5, bge-m3, XLM-R rerankers) and CamemBERT, identical but for names (no *ForCausalLM: decoding is not
fastenc's). The sparse MLM path's hook: the LM head on the labelled rows."""

from __future__ import annotations

from typing import Any

import torch

from fastenc.models.families import classes


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.lm_head(rows)


_HOOKS = {"ForMaskedLM": {"_fastenc_mlm_logits": _mlm_logits}}
CLASSES: dict[str, type] = {**classes("roberta", _HOOKS), **classes("xlm_roberta", _HOOKS),
                            **classes("camembert", _HOOKS)}
globals().update(CLASSES)
__all__ = list(CLASSES)
