"""Every private name of transformers that fastenc reads, in one place (tests/models/test_hf_internals.py is the canary
of each one).

A name missing from the installed transformers turns off the path that needs it, with a reason that a warning and
`fastenc.explain()` give (the name and the release): never an ImportError or AttributeError at call time.

Each name, what it serves, and what turns off without it:
  - transformers.utils.output_capturing._active_collector: whether hidden states / attentions are being recorded;
    without it recording is assumed, which turns off packing and the direct layer path.
  - transformers.utils.output_capturing._CAN_RECORD_REGISTRY: a model class's recordable outputs (5.25: set through
    the instance; 5.17: a plain dict keyed by str(class)), registered when optimize() or a block swap changes a
    model's class; without it transformers' own entry stays.
  - transformers.models.auto.auto_factory._get_model_class and the Auto classes' _model_mapping: the architecture
    transformers would pick for fastenc.AutoModel*; without them those raise an error that says so.
  - transformers.utils.output_capturing.capture_outputs: the output capture around fastenc's own ModernBERT layer
    loop (fastenc.models.modernbert_blocks); without it ModernBERT runs transformers' model forward.
  - config._attn_implementation_internal: whether "eager" attention was asked for; without it an explicit "eager" is
    replaced by "fastenc" like any other.
  - "output_capturing_hook", the name of transformers' capture hooks: such hooks do not stop a block's forward from
    being called directly; without the name every hooked block is called as a module.
  - the GELU and SiLU class names of transformers.activations: the activations bias_gelu and gated_act implement;
    other names run unfused.

Trade-off: reading internals buys behaviour transformers exposes no public way to get (recording state, the Auto
resolution); each is looked up once, at first use, so a release that moves one costs that path, not the model.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import transformers

from fastenc.autotune import note

VERSION = transformers.__version__

OUTPUT_CAPTURING_HOOK = "output_capturing_hook"  # __name__ of transformers' output-capture forward hooks
ATTN_IMPLEMENTATION_ATTR = "_attn_implementation_internal"  # config: the implementation asked for, None if default
GELU_EXACT = ("GELUActivation",)  # transformers.activations classes computing erf GELU
GELU_TANH = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation")  # ... and its tanh form
SILU = ("SiLUActivation",)  # ... computing silu (x * sigmoid(x)), besides torch's nn.SiLU

# module-level private names: what they serve -> (module, name)
MODULE_NAMES: dict[str, tuple[str, str]] = {
    "recording state": ("transformers.utils.output_capturing", "_active_collector"),
    "recordable outputs registry": ("transformers.utils.output_capturing", "_CAN_RECORD_REGISTRY"),
    "Auto class resolution": ("transformers.models.auto.auto_factory", "_get_model_class"),
    "ModernBERT's layer loop": ("transformers.utils.output_capturing", "capture_outputs"),
}

_MISSING = object()
_found: dict[str, Any] = {}


def missing_reason(what: str, detail: str) -> str:
    return f"transformers {VERSION} has no {detail}: {what} is off"


def lookup(what: str) -> Any | None:
    """The private object serving `what` (a MODULE_NAMES key), or None, with a warning and an explain() note, when
    this transformers release does not have it. Every name is looked up once, when this module is imported."""
    value = _found.get(what, _MISSING)
    if value is _MISSING:
        module, name = MODULE_NAMES[what]
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            value = None
            reason = missing_reason(what, f"{module}.{name}")
            warnings.warn(f"fastenc: {reason}", RuntimeWarning, stacklevel=2)
            note(f"transformers internals: {what}", reason)
        _found[what] = value
    return value


def recording(key: str) -> bool:
    """Whether transformers is recording `key` ("hidden_states" / "attentions") in the forward call in progress
    (True when this release does not say: recording only turns fast paths off)."""
    collector = lookup("recording state")
    if collector is None:
        return True
    collected = collector.get()
    return collected is not None and key in collected


def refresh_recordable(model: Any) -> None:
    """Tell transformers' output-capture registry the recordable outputs of `model`'s (new) class."""
    register_recordable(type(model))


def register_recordable(cls: type) -> None:
    """Register a model class's recordable outputs in transformers' output-capture registry, keyed by str(class) as
    every supported release keys it (< 5.25 a plain dict written with that key; >= 5.25 a dict subclass whose
    __setitem__ takes the model and stores that key)."""
    registry = lookup("recordable outputs registry")
    if registry is not None:
        dict.__setitem__(registry, str(cls), cls._can_record_outputs)


def auto_model_class(config: Any, auto_name: str) -> type:
    """The transformers class `transformers.<auto_name>` would build for `config`."""
    resolve = lookup("Auto class resolution")
    mapping = getattr(getattr(transformers, auto_name), "_model_mapping", None)
    if resolve is None or mapping is None:
        detail = ("transformers.models.auto.auto_factory._get_model_class" if resolve is None
                  else f"{auto_name}._model_mapping")
        raise RuntimeError(f"fastenc.{auto_name}: {missing_reason('resolving Auto classes', detail)}; load the "
                           f"fastenc class by name instead (fastenc.<Architecture>.from_pretrained)")
    return resolve(config, mapping)


def requested_attn_implementation(config: Any) -> str | None:
    """The attention implementation the caller asked for (None: transformers' default)."""
    if not hasattr(config, ATTN_IMPLEMENTATION_ATTR):  # note() keeps one line per topic
        note("transformers internals: explicit eager attention", missing_reason(
            "keeping an explicitly requested eager attention", f"config.{ATTN_IMPLEMENTATION_ATTR}"))
        return None
    return getattr(config, ATTN_IMPLEMENTATION_ATTR)


for _what in MODULE_NAMES:  # at import: a lookup inside a torch.compile trace is then a dict read
    lookup(_what)


def is_capture_hook(hook: Any) -> bool:
    return getattr(hook, "__name__", None) == OUTPUT_CAPTURING_HOOK
