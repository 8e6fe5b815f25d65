"""fastenc.optimize and fastenc.from_hf: a live transformers encoder switched to fastenc in place, or twinned, with
the same parameters.

optimize(model) gives every transformers model inside `model` that fastenc has a class for (BertModel,
RobertaForMaskedLM, ...) that class - fastenc's classes subclass transformers' and add no state, so this is a
`__class__` assignment - and switches every supported block to fastenc's ops (`fastenc.models.swaps`). Models of
other classes (a user's own head around a BertModel) keep their class; their blocks are switched all the same. No
parameter, buffer or submodule is created, moved or renamed: optimizers, DDP, hooks, PEFT LoRA wrappers,
gradient checkpointing, AMP and the HF Trainer keep working. `restore(model)` undoes all of it.

Trade-off: in-place swapping keeps every reference the caller holds valid and is undone by one assignment per
module, at the price of transformers' module layout (separate Q/K/V weights, concatenated per call to fuse them).
Decoder configurations (is_decoder, cross-attention) are refused: their causal and cross masks are not handled.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastenc.models import MODEL_CLASSES, FastencModel, twin_of
from fastenc.models.attend import ATTN_IMPLEMENTATION
from fastenc.models.heads import adopt, check_encoder_config
from fastenc.models.swaps import _Swap, has_blocks, install_blocks, remove_blocks


def _pretrained_models(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(every transformers PreTrainedModel inside `model`, the outermost of them)."""
    from transformers import PreTrainedModel

    every = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    roots, inner = [], set()
    for m in every:
        if id(m) not in inner:
            roots.append(m)
            inner.update(id(s) for s in m.modules())
    return every, roots


def optimize(model: nn.Module, *, unpad: bool = True) -> nn.Module:
    """Switch a transformers encoder of the families fastenc covers (base or head, or a sentence-transformers or
    PEFT wrapper around one) to fastenc, in place; returns `model`. Same parameters, buffers, state_dict keys and
    call signature. Undo with `fastenc.restore(model)`. Calling it again only updates `unpad`.

    unpad: run the layers on the real tokens only when a batch has padding (padded positions of the hidden states
    are then zeros instead of the values transformers computes there; losses are unchanged); False keeps the padded
    layout.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(unpad, bool):
        raise TypeError(f"unpad must be a bool, got {type(unpad).__name__}")
    every, roots = _pretrained_models(model)
    for m in every:
        check_encoder_config(m.config, f"model ({type(m).__name__})")
    if not roots or not (install_blocks(model) or has_blocks(model)):
        raise TypeError(f"model: found no encoder fastenc covers (BERT, RoBERTa, ALBERT, ELECTRA, XLM-RoBERTa, "
                        f"CamemBERT, DistilBERT, ModernBERT, GTE, NomicBERT) from transformers inside "
                        f"{type(model).__name__}")
    for m in every:  # a base model whose forward is a swap (ModernBERT) is matched by its transformers class
        twin = twin_of(type(m).__dict__.get("_fastenc_original", type(m)))
        if twin is not None:
            adopt(m, twin)
    for root in roots:  # eager is kept, as fastenc's classes keep it: asked for, for attention probabilities
        if root.config._attn_implementation not in (ATTN_IMPLEMENTATION, "eager"):
            root._fastenc_attn_implementation = root.config._attn_implementation
            root.set_attn_implementation(ATTN_IMPLEMENTATION)
    for m in model.modules():
        if isinstance(m, _Swap) and "_fastenc_unpad" in m.attrs:  # encoders, and base models that are their own
            m._fastenc_unpad = None if unpad else False
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo `optimize`: every module gets its transformers class back and the attention implementation it had."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    remove_blocks(model)
    every, roots = _pretrained_models(model)
    for m in every:
        if isinstance(m, FastencModel) and type(m) in MODEL_CLASSES.values():
            adopt(m, type(m)._fastenc_hf_class)
    for root in roots:
        previous = root.__dict__.pop("_fastenc_attn_implementation", None)
        if previous is not None:
            root.set_attn_implementation(previous)
    return model


def is_optimized(model: nn.Module) -> bool:
    """Whether any module of `model` runs fastenc's forward (after `optimize`, before `restore`)."""
    return has_blocks(model)


def from_hf(hf_model: nn.Module) -> FastencModel:
    """A new fastenc model of the same class name as the live transformers model `hf_model`, with a copy of its
    config and the SAME parameter tensors (shared nn.Parameter objects: training either trains both); buffers are
    copied. Built on the meta device first, so nothing is initialised twice."""
    cls = MODEL_CLASSES.get(type(hf_model).__name__)
    if cls is None:
        raise TypeError(f"from_hf: no fastenc class for {type(hf_model).__name__}; supported: "
                        f"{sorted(MODEL_CLASSES)}")
    with torch.device("meta"):
        model = cls(copy.deepcopy(hf_model.config))
    hf_params = dict(hf_model.named_parameters(remove_duplicate=False))
    own = dict(model.named_parameters(remove_duplicate=False))
    if set(own) != set(hf_params):
        raise ValueError(f"from_hf: parameter names differ: only in fastenc {sorted(set(own) - set(hf_params))}, "
                         f"only in transformers {sorted(set(hf_params) - set(own))}")
    for key, param in hf_params.items():
        owner, _, attr = key.rpartition(".")
        setattr(model.get_submodule(owner), attr, param)
    hf_buffers = dict(hf_model.named_buffers(remove_duplicate=False))
    for key, _ in list(model.named_buffers(remove_duplicate=False)):
        owner, _, attr = key.rpartition(".")
        module = model.get_submodule(owner)
        module.register_buffer(attr, hf_buffers[key].clone(), persistent=attr in module.state_dict())
    model.train(hf_model.training)
    return model
