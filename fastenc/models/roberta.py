"""RoBERTa and the families with its architecture under their own transformers classes: XLM-RoBERTa
(multilingual-e5, bge-m3, XLM-R rerankers) and CamemBERT. One table makes each family's classes from its
transformers module, so the three stay identical but for names (no *ForCausalLM: decoding is not fastenc's)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from transformers.models.camembert import modeling_camembert
from transformers.models.roberta import modeling_roberta
from transformers.models.xlm_roberta import modeling_xlm_roberta

from fastenc.models.heads import FastencModel


def _mlm_logits(self: Any, rows: torch.Tensor) -> torch.Tensor:
    return self.lm_head(rows)


_HEADS: dict[str, dict[str, Any]] = {
    "Model": {},
    "ForMaskedLM": {"_fastenc_padded_loss": "labels", "_fastenc_sparse": True, "_fastenc_mlm_logits": _mlm_logits},
    "ForSequenceClassification": {},
    "ForMultipleChoice": {},
    "ForTokenClassification": {"_fastenc_padded_loss": "labels"},
    "ForQuestionAnswering": {"_fastenc_padded_loss": "spans"},
}


def _family(hf: ModuleType, prefix: str) -> dict[str, type]:
    return {prefix + head: type(prefix + head, (FastencModel, getattr(hf, prefix + head)),
                                {**attrs, "__module__": __name__, "__qualname__": prefix + head})
            for head, attrs in _HEADS.items()}


CLASSES: dict[str, type] = {**_family(modeling_roberta, "Roberta"), **_family(modeling_xlm_roberta, "XLMRoberta"),
                            **_family(modeling_camembert, "Camembert")}
globals().update(CLASSES)
__all__ = list(CLASSES)
