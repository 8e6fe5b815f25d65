"""The launchers of backend "cuda": the compiled extension fastenc._C behind the launcher contracts of fastenc/ops.

Importing this module imports fastenc._C, whose load registers the `torch.ops.fastenc.*` ops (TORCH_LIBRARY in
csrc/bindings.cpp); a missing or unloadable build raises here and fastenc.backends reports backend "cuda" as
unavailable with the reason. This module also registers the fake (meta) implementations that let torch.compile
trace the ops without running them: those of fastenc.kernels._fakes, which the Triton launchers share.

The registered ops are the launchers, with no wrapper: like the Triton launchers they take None for an absent
input and return an empty tensor for an absent output (custom-op schemas cannot return None or alias one output to
another), and fastenc/ops reads only the outputs it asked for.
"""

from __future__ import annotations

import sys

import torch

import fastenc._C  # noqa: F401  (loads the library, which registers torch.ops.fastenc.*)
from fastenc.backends import Call, kernel_image_reason
from fastenc.kernels import _fakes as fakes
from fastenc.kernels._fakes import LAUNCHERS
from fastenc.ops._common import FLOAT_DTYPES

_ops = torch.ops.fastenc

# What the kernels support (see fastenc.backends); csrc/attention.cu instantiates exactly these head dims.
SUPPORT = {
    **{op: dict(devices=("cuda",), dtypes=FLOAT_DTYPES)
       for op in ("add_layer_norm", "bias_gelu", "gelu_layer_norm", "gated_act")},
    "embeddings": dict(devices=("cuda",), dtypes=FLOAT_DTYPES),
    "attention": dict(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16), head_dims=(32, 64, 128),
                      min_capability=(8, 0), layouts=("padded", "packed")),
}
# the architectures fastenc._C holds code for ("sm_80+sm_90a+compute_90"), set by setup.py; None in older builds
CUDA_ARCHS = getattr(sys.modules["fastenc._C"], "CUDA_ARCHS", None) or None


# torch.compile traces the ops through their fake implementations, shared with the Triton launchers.
for _name in LAUNCHERS:
    torch.library.register_fake(f"fastenc::{_name}")(getattr(fakes, _name))


# ---------------------------------------------------------------------------------------------------------------
# The launchers: the registered ops themselves (contracts: each fastenc/ops/<op>.py docstring).

add_layer_norm_fwd = _ops.add_layer_norm_fwd
add_layer_norm_bwd = _ops.add_layer_norm_bwd
bias_gelu_fwd = _ops.bias_gelu_fwd
bias_gelu_bwd = _ops.bias_gelu_bwd
gelu_layer_norm_fwd = _ops.gelu_layer_norm_fwd
gelu_layer_norm_bwd = _ops.gelu_layer_norm_bwd
gated_act_fwd = _ops.gated_act_fwd
gated_act_bwd = _ops.gated_act_bwd
embeddings_fwd = _ops.embeddings_fwd
embeddings_bwd = _ops.embeddings_bwd
attention_fwd = _ops.attention_fwd
attention_bwd = _ops.attention_bwd


def attention_dropout_mask(seed: torch.Tensor, batch: int, heads: int, seqlen: int, dropout_p: float) -> torch.Tensor:
    """The keep-mask the attention kernels apply for `seed` (the Philox scheme of fastenc.kernels.attention): bool
    [batch, heads, seqlen, seqlen], True = kept, in each sequence's own coordinates. For tests that replay dropout."""
    return _ops.attention_dropout_mask(seed, int(batch), int(heads), int(seqlen), float(dropout_p)).bool()


def not_supported_reasons(op: str, call: Call) -> list[str]:
    """What SUPPORT cannot declare: a kernel image for the device, and (attention) 16-byte aligned q, k, v rows."""
    out = []
    if call.device.type == "cuda":
        reason = kernel_image_reason(torch.cuda.get_device_capability(call.device), CUDA_ARCHS)
        if reason:
            out.append(reason)
    if op != "attention":
        return out
    for name in ("q", "k", "v"):
        t = call.tensors[name]
        # storage offsets, not data pointers, so that this also runs on fake tensors while torch.compile traces
        # (the allocator aligns storages; bindings.cpp checks the real pointers)
        elems = 16 // t.element_size() if t.element_size() <= 16 else 1
        if t.stride(-1) != 1 or t.storage_offset() % elems or any(s % elems for s in t.stride()[:-1]):
            out.append(f"{name} needs a unit last stride and 16-byte aligned rows")
    return out
