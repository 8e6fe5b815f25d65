"""Fused linear helpers: a transformers Linear followed by its activation or its residual LayerNorm, as one fastenc op.

The matmul runs without its bias and the bias is folded into the next fused op (bias_gelu, add_layer_norm,
gelu_layer_norm) when fastenc's kernels run that op; on the reference path (CPU tensors under "auto") the bias stays
in the matmul, which adds it for free. Q, K and V come out of one matmul over the concatenated weights as strided
views. Only a plain nn.Linear is taken apart this way: any other projection (a LoRA or quantised wrapper) is called
as a module, so its own forward (and delta) still applies, and only the op after it is fused.

Submodules and parameters are read from the modules' `_modules` / `_parameters` dicts: `module.name` for those
goes through nn.Module.__getattr__, a Python fallback that costs about a microsecond each, tens of times a layer.
Nothing is cached across calls, so a projection replaced or wrapped later (PEFT) is seen at the next call.

Trade-off: the concatenated QKV weight is a copy. It is cached, keyed by the three weights' storage and version
(holding those storages until the next call sees new ones), while gradients are off; with gradients on it is
rebuilt every call (one weight-sized copy per layer and step, small next to the matmul), so the autograd graph
reaches the original Parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastenc import dispatch, ops
from fastenc.backends import Call
from fastenc.models.hf_internals import GELU_EXACT, GELU_TANH, is_capture_hook

EXACT_GELU = nn.GELU()  # for blocks that call transformers' functional gelu (RobertaLMHead)


def gelu_form(act: object) -> str | None:
    """'none' / 'tanh' for the GELU forms bias_gelu implements, None for any other activation."""
    name = type(act).__name__
    if name in GELU_EXACT:
        return "none"
    if name in GELU_TANH:
        return "tanh"
    if isinstance(act, nn.GELU):
        return act.approximate
    return None


_GLOBAL_HOOKS = tuple(getattr(nn.modules.module, n) for n in (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def hook_free(module: nn.Module) -> bool:
    """Whether using `module` without calling it (its forward called directly, or its weights read) skips nothing
    `module(...)` would run: no hooks, its own or global, but transformers' output-capturing ones (no-ops unless
    their key is recorded: a caller that skips one checks `recording` for it)."""
    if module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks or any(_GLOBAL_HOOKS):
        return False
    return all(is_capture_hook(h) for h in module._forward_hooks.values())


def is_plain_linear(m: nn.Module) -> bool:
    """An nn.Linear itself (no subclass, wrapper or parametrisation) with no hooks: its weight and bias can be used
    without calling it."""
    return type(m) is nn.Linear and hook_free(m)


def _params(m: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A Linear's or a norm's (weight, bias): from `_parameters` when both are plain entries there, else by attribute
    (a parametrised norm computes its weight; its `_parameters` lacks the name)."""
    p = m._parameters
    if "weight" in p and "bias" in p:
        return p["weight"], p["bias"]
    return m.weight, m.bias


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Parameters follow the activation's dtype (autocast gives fp16 matmul outputs next to fp32 parameters)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def kernels_run(x: torch.Tensor, op: str) -> bool:
    """Whether dispatch runs row op `op` on tensors like x with a kernel (not the reference). Only then is a bias
    taken out of its matmul: the reference would add it in a pass of its own, where torch's matmul adds it for free."""
    return not dispatch.reference_runs(Call(op, {"x": x}, length=1))


def linear_act(x: torch.Tensor, dense: nn.Module, act: nn.Module) -> torch.Tensor:
    """act(dense(x)); one bias_gelu after a bias-free matmul for the GELU family on a plain Linear."""
    approximate = gelu_form(act) if is_plain_linear(dense) and kernels_run(x, "bias_gelu") else None
    if approximate is None:
        return act(dense(x))
    weight, bias = _params(dense)
    y = F.linear(x, weight)
    return ops.bias_gelu(y, _cast(bias, y.dtype), approximate)


def linear_add_norm(x: torch.Tensor, dense: nn.Module, residual: torch.Tensor | None, norm: nn.LayerNorm,
                    dropout_p: float) -> torch.Tensor:
    """norm(dropout(dense(x)) + residual) in one add_layer_norm, the bias folded in for a plain Linear."""
    if is_plain_linear(dense) and kernels_run(x, "add_layer_norm"):
        weight, x_bias = _params(dense)
        y = F.linear(x, weight)
    else:
        y, x_bias = dense(x), None
    if residual is not None and residual.dtype != y.dtype:  # autocast: fp16 output beside an fp32 residual
        dtype = torch.promote_types(residual.dtype, y.dtype)
        y, residual = y.to(dtype), residual.to(dtype)
    weight, bias = _params(norm)
    return ops.add_layer_norm(y, residual, weight, bias, norm.eps, x_bias=_cast(x_bias, y.dtype), dropout_p=dropout_p)


def linear_act_norm(x: torch.Tensor, dense: nn.Module, act: nn.Module, norm: nn.LayerNorm) -> torch.Tensor:
    """norm(act(dense(x))), the MLM / generator head transform; one gelu_layer_norm for the GELU family."""
    approximate = gelu_form(act) if is_plain_linear(dense) and kernels_run(x, "gelu_layer_norm") else None
    norm_weight, norm_bias = _params(norm)
    if approximate is None:
        return ops.add_layer_norm(linear_act(x, dense, act), None, norm_weight, norm_bias, norm.eps)
    weight, bias = _params(dense)
    y = F.linear(x, weight)
    return ops.gelu_layer_norm(y, norm_weight, norm_bias, norm.eps, x_bias=_cast(bias, y.dtype),
                               approximate=approximate)


def _concatenated(module: nn.Module, lins: tuple[nn.Module, ...], slot: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of the plain Linears `lins` stacked along their outputs (bias None when none has one), or None
    when they cannot be (one is not a plain Linear, or some have biases and some not). Cached in module.__dict__[slot]
    while gradients are off (see the module doc)."""
    if not all(is_plain_linear(m) for m in lins):
        return None
    biased = [m._parameters["bias"] is not None for m in lins]
    if any(biased) and not all(biased):
        return None
    params = (*(m._parameters["weight"] for m in lins), *(m._parameters["bias"] for m in lins if biased[0]))
    n = len(lins)
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        return torch.cat(params[:n]), (torch.cat(params[n:]) if biased[0] else None)
    # Keyed by storage address and version: an in-place update bumps the version, and any new storage (.to(),
    # reassignment, `.data =`) has another address, because the cache holds the storages it was built from (a
    # caching allocator would otherwise hand a freed weight's block to its replacement).
    key = (*(p.data_ptr() for p in params), *(p._version for p in params), params[0].dtype, params[0].device)
    cache = module.__dict__.get(slot)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = module.__dict__[slot] = (key, torch.cat(params[:n]),
                                             torch.cat(params[n:]) if biased[0] else None,
                                             tuple(p.detach() for p in params))
    return cache[1], cache[2]


def qkv(module: nn.Module, x: torch.Tensor, names: tuple[str, str, str] = ("query", "key", "value"),
        heads: int | None = None, head_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V of `module` (its projections `names`) as [..., heads, head_dim]: strided views of one matmul over
    the concatenated weights when all three are plain Linears, all with biases or all without, and fastenc's
    kernels run the row ops, else three calls (on the CPU reference path three matmuls and contiguous q, k, v
    measured faster than one matmul and strided views: benchmarks/results/figures.md)."""
    heads, d = heads or module.num_attention_heads, head_dim or module.attention_head_size
    subs = module._modules
    lins = (subs[names[0]], subs[names[1]], subs[names[2]])
    fused = _concatenated(module, lins, "_fastenc_qkv") if kernels_run(x, "add_layer_norm") else None
    if fused is None:
        return tuple(m(x).unflatten(-1, (heads, d)) for m in lins)
    return F.linear(x, *fused).view(*x.shape[:-1], 3, heads, d).unbind(-3)


def gate_up(module: nn.Module, x: torch.Tensor, names: tuple[str, str] = ("gate_proj", "up_proj")
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A gated MLP's two input projections: (gate | up) [..., 2I] from one matmul over the concatenated weights
    (the layout `ops.gated_act(x)` splits in halves) when both are plain Linears and fastenc's kernels run, with
    None; else (gate [..., I], up [..., I]) from two calls."""
    lins = (module._modules[names[0]], module._modules[names[1]])
    fused = _concatenated(module, lins, "_fastenc_gate_up") if kernels_run(x, "gated_act") else None
    if fused is None:
        return lins[0](x), lins[1](x)
    return F.linear(x, *fused), None
