"""The one table of model families: every fastenc class name, `MODEL_CLASSES`, the lazy names of `fastenc`, the Auto
classes and optimize's mapping derive from it.

A family is a transformers model package (transformers.models.<name>) whose encoder classes fastenc subclasses: one
class per head, `<prefix><head>`, made by `classes()` from the family's file in fastenc/models (`file`), which adds
only what its heads compute differently on the sparse MLM path. Importing this module imports no transformers, so
`import fastenc` stays cheap.

Trade-off: classes made from a table are not spelled out in source (an editor's go-to-definition lands here), in
exchange a family is one table row and a file of a few hooks, and no list of names is written twice.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SHARED = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForMultipleChoice", "ForTokenClassification",
           "ForQuestionAnswering")
_ROTARY = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification")  # GTE and NomicBERT

# head -> the FastencModel class attributes it sets (heads.FastencModel says what each means)
HEAD_ATTRS: dict[str, dict[str, Any]] = {
    "Model": {},
    "ForMaskedLM": {"_fastenc_padded_loss": "labels", "_fastenc_sparse": True},
    "ForPreTraining": {"_fastenc_padded_loss": "labels", "_fastenc_sparse": True},  # BERT and ALBERT: MLM + pair
    "ForNextSentencePrediction": {},
    "ForSequenceClassification": {},
    "ForMultipleChoice": {},
    "ForTokenClassification": {"_fastenc_padded_loss": "labels"},
    "ForQuestionAnswering": {"_fastenc_padded_loss": "spans"},
}


@dataclass(frozen=True)
class Family:
    name: str  # transformers.models.<name>.modeling_<name>
    prefix: str  # class-name prefix: <prefix>Model, <prefix>ForMaskedLM, ...
    heads: tuple[str, ...]
    file: str  # fastenc.models.<file> holds its hooks
    plain: tuple[str, ...] = ()  # heads that keep transformers' head as is (no MLM prediction on the sparse path)

    @property
    def config(self) -> str:
        return f"{self.prefix}Config"

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.prefix + head for head in self.heads)


FAMILIES: tuple[Family, ...] = (
    Family("bert", "Bert", (*_SHARED, "ForPreTraining", "ForNextSentencePrediction"), "bert"),
    Family("roberta", "Roberta", _SHARED, "roberta"),
    Family("albert", "Albert", (*_SHARED, "ForPreTraining"), "albert"),
    Family("electra", "Electra", (*_SHARED, "ForPreTraining"), "electra", plain=("ForPreTraining",)),  # discriminator
    Family("xlm_roberta", "XLMRoberta", _SHARED, "roberta"),  # RoBERTa's architecture under its own classes
    Family("camembert", "Camembert", _SHARED, "roberta"),
    Family("distilbert", "DistilBert", _SHARED, "distilbert"),
    Family("gte", "Gte", _ROTARY, "gte"),  # transformers >= 5.25 (rotary_blocks)
    Family("nomic_bert", "NomicBert", _ROTARY, "nomic_bert"),
    Family("modernbert", "ModernBert", _SHARED, "modernbert"),
)

CLASS_NAMES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.class_names)
CONFIG_NAMES: tuple[str, ...] = tuple(sorted(family.config for family in FAMILIES))
AUTO_NAMES: tuple[str, ...] = tuple(f"AutoModel{'' if head == 'Model' else head}" for head in HEAD_ATTRS)


def classes(name: str, hooks: dict[str, dict[str, Callable[..., Any]]],
            mixins: dict[str, type] | None = None) -> dict[str, type]:
    """fastenc's classes of the family `name`: FastencModel before each transformers class, with the head's
    attributes, and per head the methods in `hooks` (`_fastenc_mlm_logits`, `_fastenc_sparse_head`) for the heads
    that predict MLM tokens on the sparse path. `mixins`: per head, a block swap placed between FastencModel and the
    transformers class (a base model that is its own encoder: GTE, NomicBERT; ModernBERT's layer loop). A family the
    installed transformers lacks gets classes that raise an error naming the release (`unavailable`)."""
    from fastenc.models.heads import FastencModel

    fam = family(name)
    try:
        hf = importlib.import_module(f"transformers.models.{fam.name}.modeling_{fam.name}")
    except ImportError as e:
        return unavailable(fam, e)
    made = {}
    for head in fam.heads:
        cls_name = fam.prefix + head
        attrs = {} if head in fam.plain else {**HEAD_ATTRS[head], **hooks.get(head, {})}
        missing = attrs.get("_fastenc_sparse") and not {"_fastenc_mlm_logits", "_fastenc_sparse_head"} & set(attrs)
        if missing:
            raise TypeError(f"fastenc.models.{fam.file}: {cls_name} predicts MLM tokens but has no hook for it")
        bases = (FastencModel, *((mixins[head],) if mixins and head in mixins else ()), getattr(hf, cls_name))
        made[cls_name] = type(cls_name, bases,
                              {**attrs, "__module__": f"fastenc.models.{fam.file}", "__qualname__": cls_name})
    return made


def unavailable(fam: Family, error: ImportError) -> dict[str, type]:
    """Classes of a family the installed transformers does not have: importing and listing them works; building or
    loading one raises ImportError naming the release (a warning and explain() say it once)."""
    import warnings

    import transformers

    from fastenc.autotune import note

    reason = (f"transformers {transformers.__version__} has no transformers.models.{fam.name} ({error}); the "
              f"{fam.prefix} classes need a release that has it")
    warnings.warn(f"fastenc: {reason}", RuntimeWarning, stacklevel=3)
    note(f"family {fam.name}", reason)

    return {fam.prefix + head: _refusing(fam.prefix + head, f"fastenc.models.{fam.file}", reason)
            for head in fam.heads}


def missing_config(name: str) -> type:
    """fastenc.<Prefix>Config for a family the installed transformers lacks (`from fastenc import *` still works):
    using it raises ImportError naming the release."""
    import transformers

    fam = next(f for f in FAMILIES if f.config == name)
    return _refusing(name, "fastenc", f"transformers {transformers.__version__} has no {name}: the {fam.prefix} "
                                      f"classes need a release that has transformers.models.{fam.name}")


def _refusing(name: str, module: str, reason: str) -> type:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ImportError(f"fastenc: {reason}")

    return type(name, (), {"__init__": refuse, "from_pretrained": classmethod(refuse),
                           "_from_config": classmethod(refuse), "_fastenc_hf_class": None,
                           "_fastenc_unavailable": reason, "__module__": module, "__qualname__": name})


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)
