"""The swap machinery: which transformers block classes get fastenc's forwards, and switching them in place.

Every family's block module (FAMILY_BLOCK_MODULES: fastenc.models.blocks for the BERT-like families,
rotary_blocks, modernbert_blocks) declares a TARGETS table {family: {transformers block class name: swap mixin}};
`swap_table` reads them once, checks each block's installed forward against its swap (`_Swap.serves`: a parameter
the swap does not know refuses it, warned and noted for explain(); `_Swap.needs`: a refused swap refuses the swaps
that need it) and registers the "fastenc" attention implementation (fastenc.models.attend). `install_blocks` sets
each supported module's `__class__` to a subclass (swap mixin, transformers class) and `remove_blocks` undoes it: no
parameter, buffer or submodule is created, moved or renamed.

Trade-off: the family modules are found by name (importlib), not imported here, so the block modules can import
`_Swap` from this one without a cycle; the price is a tuple of module names to keep in step with the files.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

from torch import nn

from fastenc.autotune import note
from fastenc.models.attend import ATTN_IMPLEMENTATION, _hf_attention, _padding_mask
from fastenc.models.hf_internals import VERSION, refresh_recordable


class _Swap:
    """serves: every parameter of the transformers forwards this swap replaces, in every release of the supported
    range (renames on both sides); a release whose forward has another one keeps transformers' block (`swap_table`).
    needs: swaps of the same family without which this one is wrong (a refused one refuses this one too)."""

    attrs: dict = {}  # instance attributes the forward needs, set by install_blocks (a callable: its value for the
    # module) and removed by remove_blocks
    serves: frozenset[str] = frozenset()
    needs: tuple[type, ...] = ()
    calls_attention_parts = False  # a <Prefix>Layer swap that calls the parts of transformers' <Prefix>Attention
    # itself: swap_table records that class in _ATTENTION_WRAPPERS (blocks._Layer)

    @staticmethod
    def supports(module: nn.Module) -> bool:
        return True


# modules with the families' swaps (a TARGETS each)
FAMILY_BLOCK_MODULES = ("fastenc.models.blocks", "fastenc.models.rotary_blocks", "fastenc.models.modernbert_blocks")


def targets() -> dict[str, dict[str, type]]:
    """Every family's {block class name: swap}: the TARGETS of FAMILY_BLOCK_MODULES."""
    merged = {}
    for name in FAMILY_BLOCK_MODULES:
        merged.update(importlib.import_module(name).TARGETS)
    return merged


_swaps: dict[type, type] | None = None  # transformers block class -> swap mixin
refused: dict[type, str] = {}  # transformers block class -> why it keeps its own forward in this release
_ATTENTION_WRAPPERS: set[type] = set()  # transformers' <Prefix>Attention of the layers that call its parts
_subclasses: dict[type, type] = {}  # transformers block class -> its swapped subclass


def swap_table() -> dict[type, type]:
    """{transformers block class: swap mixin}; registers the "fastenc" attention implementation on first use."""
    global _swaps
    if _swaps is None:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        table = {}
        for family, names in targets().items():
            try:
                module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
            except ImportError:  # a family newer than this release: its classes say so (families.unavailable)
                note(f"blocks of {family}", f"transformers {VERSION} has no transformers.models.{family}")
                continue
            table.update(_family_swaps(module, names))
            _ATTENTION_WRAPPERS.update(getattr(module, name.removesuffix("Layer") + "Attention")
                                       for name, swap in names.items() if swap.calls_attention_parts
                                       and hasattr(module, name))
        AttentionInterface.register(ATTN_IMPLEMENTATION, _hf_attention)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _padding_mask)
        _swaps = table
    return _swaps


def _unknown_parameters(cls: type, swap: type) -> list[str]:
    """Parameters of transformers' `cls.forward` (as installed) that `swap` does not serve."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in swap.serves]


def _refuse(cls: type, why: str) -> None:
    refused[cls] = why
    text = f"{cls.__name__} stays transformers' own (transformers {VERSION}): {why}"
    warnings.warn(f"fastenc: {text}", RuntimeWarning, stacklevel=4)
    note(f"block {cls.__module__}.{cls.__name__}", text)


def _family_swaps(module, names: dict[str, type]) -> dict[type, type]:
    """{class: swap} for one family's module: a block whose installed forward takes a parameter its swap does not
    serve keeps transformers' forward (warned, and noted for explain()), and so does a swap that needs it."""
    swaps = {}
    for name, swap in names.items():
        cls = getattr(module, name, None)
        if cls is None:
            note(f"block {module.__name__}.{name}", f"transformers {VERSION} has no such class: nothing to swap")
            continue
        unknown = _unknown_parameters(cls, swap)
        if unknown:
            _refuse(cls, f"its forward takes {', '.join(repr(n) for n in unknown)}, which fastenc's "
                         f"{swap.__name__.lstrip('_')} block does not know")
        else:
            swaps[cls] = swap
    changed = True
    while changed:  # a refusal can refuse the swaps that need it, in turn
        changed = False
        off = {swap: cls for name, swap in names.items() if (cls := getattr(module, name, None)) in refused}
        for cls, swap in list(swaps.items()):
            missing = [off[n] for n in swap.needs if n in off]
            if missing:
                del swaps[cls]
                _refuse(cls, f"it needs fastenc's {missing[0].__name__}, which stays transformers'")
                changed = True
    return swaps


def _subclass(cls: type) -> type:
    if cls not in _subclasses:
        _subclasses[cls] = type(cls.__name__, (swap_table()[cls], cls),
                                {"_fastenc_original": cls, "__module__": __name__, "__qualname__": cls.__qualname__})
    return _subclasses[cls]


def install_blocks(model: nn.Module) -> int:
    """Swap every supported block inside `model` (in place); returns how many were swapped."""
    table = swap_table()
    swapped = 0
    for m in model.modules():
        if type(m) in table and table[type(m)].supports(m):
            m.__class__ = _subclass(type(m))
            if hasattr(m, "_can_record_outputs"):  # a base model that is its own encoder (GTE): registry by class
                refresh_recordable(m)
            for name, value in type(m).attrs.items():
                setattr(m, name, value(m) if callable(value) else value)
            swapped += 1
    return swapped


def remove_blocks(model: nn.Module) -> None:
    """Give every swapped block inside `model` its transformers class back (a fastenc model class that carries a swap,
    ModernBertModel, loses the swap's attributes here and its class in optimize.restore)."""
    for m in model.modules():
        if not isinstance(m, _Swap):
            continue
        for name in (*type(m).attrs, "_fastenc_qkv", "_fastenc_gate_up"):
            m.__dict__.pop(name, None)
        original = type(m).__dict__.get("_fastenc_original")
        if original is not None:  # a fastenc model class (a swap of its own: families.classes) keeps its class here
            m.__class__ = original


def has_blocks(model: nn.Module) -> bool:
    return any(isinstance(m, _Swap) for m in model.modules())
