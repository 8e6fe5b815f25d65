"""Run transformers' own model tests with fastenc swapped in. Activated by FASTENC_HF_MODE:

  (unset) / "off"  plain transformers (baseline)
  "classes"        every transformers model class that fastenc exports under the same name (fastenc.MODEL_CLASSES plus
                   any nn.Module subclass in dir(fastenc) that is also in dir(transformers)) is replaced by fastenc's
                   class in `transformers`, `transformers.models.<family>` and its `modeling_*` module.
  "optimize"       those same transformers classes call `fastenc.optimize(self)` at the end of construction (outermost
                   constructor only, so a head's inner BertModel is not optimized twice). Decoder configs that
                   fastenc refuses (ValueError naming is_decoder / add_cross_attention) stay unoptimized.
                   FASTENC_HF_OPTIMIZE_STYLE picks how:
                     "inplace" (default): wrap the ORIGINAL class's __init__. Class identity is unchanged, so
                        fastenc.twin_of() works and optimize() swaps the instance to fastenc's class, exactly as a
                        user calling fastenc.optimize(model) gets.
                     "subclass": replace X by a subclass X (same __name__/__qualname__/__module__) whose __init__
                        optimizes. NOTE fastenc.twin_of() matches the exact transformers class, so on these instances
                        optimize() switches the blocks but NOT the class (fastenc's head forwards are not used).

Why the package and modeling modules are patched too: transformers' auto mappings (MODEL_MAPPING, ...) resolve a class
by getattr on `transformers.models.<family>`, and the tests compare classes by identity
(`model_class in get_values(MODEL_FOR_PRETRAINING_MAPPING)`), so every place a class is looked up must agree.
Most checks in tests/test_modeling_common.py are by __name__ (…_MAPPING_NAMES) and need nothing.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading

MODES = ("off", "classes", "optimize")
STYLES = ("inplace", "subclass")


def mode() -> str:
    value = os.environ.get("FASTENC_HF_MODE", "off") or "off"
    if value not in MODES:
        raise ValueError(f"FASTENC_HF_MODE must be one of {MODES}, got {value!r}")
    return value


def style() -> str:
    value = os.environ.get("FASTENC_HF_OPTIMIZE_STYLE", "inplace")
    if value not in STYLES:
        raise ValueError(f"FASTENC_HF_OPTIMIZE_STYLE must be one of {STYLES}, got {value!r}")
    return value


def _fastenc():
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
    import fastenc

    return fastenc


def swappable_names(fastenc, transformers) -> list[str]:
    """Names fastenc exports as nn.Module classes that transformers also has (MODEL_CLASSES first)."""
    from torch import nn

    names = list(getattr(fastenc, "MODEL_CLASSES", {}))
    for name in dir(fastenc):
        obj = getattr(fastenc, name, None)
        if name in names or not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            continue
        if hasattr(transformers, name):
            names.append(name)
    return names


def _homes(original: type) -> list:
    """Modules where `original` is looked up by name: its defining module and its family package."""
    modeling = sys.modules[original.__module__]
    homes = [modeling]
    package = original.__module__.rsplit(".", 1)[0]
    if package.startswith("transformers.models."):
        homes.append(importlib.import_module(package))
    return homes


def _set_everywhere(name: str, new: type, homes: list) -> None:
    transformers = sys.modules["transformers"]
    for module in [transformers, *homes]:
        setattr(module, name, new)


_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _optimize_if_encoder(fastenc, model) -> None:
    try:
        fastenc.optimize(model)
    except ValueError as err:  # fastenc refuses decoder / cross-attention configs: keep transformers' model
        if "is_decoder" not in str(err) and "add_cross_attention" not in str(err):
            raise
        model._fastenc_refused = str(err)


def _optimizing_init(fastenc, orig_init, targets: set):
    @functools.wraps(orig_init)
    def __init__(self, *args, **kwargs):
        _state.depth = _depth() + 1
        try:
            orig_init(self, *args, **kwargs)
        finally:
            _state.depth -= 1
        if _depth() == 0 and type(self) in targets:
            _optimize_if_encoder(fastenc, self)

    __init__._fastenc_swap_original = orig_init
    return __init__


APPLIED: dict[str, str] = {}  # name -> what was done, for the report header
_ORIGINALS: dict[str, type] = {}  # name -> transformers' own class, recorded on the first apply()


def apply() -> dict[str, str]:
    """Patch transformers for the current mode; idempotent (safe to call again after `transformers` is re-imported)."""
    current = mode()
    if current == "off":
        return APPLIED
    import transformers

    fastenc = _fastenc()
    for name in swappable_names(fastenc, transformers):
        _ORIGINALS.setdefault(name, getattr(transformers, name))
    if current == "classes":
        for name, original in _ORIGINALS.items():
            new = getattr(fastenc, name)
            _set_everywhere(name, new, _homes(original))
            APPLIED[name] = f"{original.__module__}.{name} -> {new.__module__}.{name}"
        return APPLIED
    if style() == "inplace":
        targets = set(_ORIGINALS.values())
        for name, original in _ORIGINALS.items():
            if not hasattr(original.__init__, "_fastenc_swap_original"):
                original.__init__ = _optimizing_init(fastenc, original.__init__, targets)
            _set_everywhere(name, original, _homes(original))
            APPLIED[name] = f"{original.__module__}.{name}.__init__ now ends with fastenc.optimize(self)"
        return APPLIED
    made = {}
    for name, original in _ORIGINALS.items():
        made[name] = getattr(transformers, name)
        if made[name] is original:
            made[name] = type(name, (original,), {"__module__": original.__module__,
                                                  "__qualname__": original.__qualname__})
    targets = set(made.values())
    for name, sub in made.items():
        if not hasattr(sub.__dict__.get("__init__"), "_fastenc_swap_original"):
            sub.__init__ = _optimizing_init(fastenc, _ORIGINALS[name].__init__, targets)
        _set_everywhere(name, sub, _homes(_ORIGINALS[name]))
        APPLIED[name] = f"{_ORIGINALS[name].__module__}.{name} -> subclass whose __init__ ends with fastenc.optimize"
    return APPLIED


def check_auto_mappings() -> list[str]:
    """Names whose auto-mapping lookup disagrees with `transformers.<name>` after apply() (should be empty)."""
    import transformers
    from transformers.models.auto import get_values, modeling_auto

    mapped = {}
    for attr in dir(modeling_auto):
        if attr.startswith("MODEL_") and attr.endswith("_MAPPING"):
            try:
                for value in get_values(getattr(modeling_auto, attr)):
                    mapped.setdefault(value.__name__, set()).add(value)
            except Exception:  # some mappings need optional backends
                continue
    bad = []
    for name in APPLIED:
        for value in mapped.get(name, ()):
            if value is not getattr(transformers, name):
                bad.append(name)
    return sorted(set(bad))


def pytest_report_header(config):
    current = mode()
    if current == "off":
        return "fastenc_swap: off (plain transformers)"
    extra = f", style={style()}" if current == "optimize" else ""
    bad = check_auto_mappings()
    lines = [f"fastenc_swap: mode={current}{extra}, {len(APPLIED)} classes patched; auto-mapping mismatches: {bad}"]
    lines += [f"  {v}" for v in APPLIED.values()]
    return lines
