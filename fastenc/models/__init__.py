"""fastenc's model classes: transformers' encoder classes of the same names, running fastenc's blocks.

The names come from the table of families (fastenc.models.families); the classes are made when first asked for
(`fastenc.models.BertModel`, `MODEL_CLASSES`, ...), which imports transformers: importing this package alone does not.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastenc.models.families import CLASS_NAMES, FAMILIES

_MADE = ("MODEL_CLASSES", "FastencModel", "twin_of", *CLASS_NAMES)


def _model_classes() -> dict[str, type]:
    made: dict[str, type] = {}
    for file in dict.fromkeys(f.file for f in FAMILIES):
        made.update(importlib.import_module(f"fastenc.models.{file}").CLASSES)
    return {name: made[name] for name in CLASS_NAMES}


def twin_of(cls: type) -> type | None:
    """fastenc's class for exactly the transformers class `cls` (not a subclass of it, but for its block swap), or
    None."""
    cls = cls.__dict__.get("_fastenc_original", cls)
    twin = __getattr__("MODEL_CLASSES").get(cls.__name__)
    return twin if twin is not None and twin._fastenc_hf_class is cls else None


def __getattr__(name: str) -> Any:
    if name not in _MADE:
        raise AttributeError(f"module 'fastenc.models' has no attribute {name!r}")
    if name == "FastencModel":
        from fastenc.models.heads import FastencModel as value
    else:
        classes = globals().get("MODEL_CLASSES") or _model_classes()
        globals().update(classes, MODEL_CLASSES=classes)
        value = globals()[name]
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MADE})


__all__ = list(_MADE)
