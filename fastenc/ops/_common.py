"""Pieces every op shares: the dropout seed and argument checks (how an op runs a call: fastenc.dispatch.run_op).

Kernel dropout draws from a counter-based generator (Philox) keyed by a seed tensor and the element index, so the
backward pass regenerates the forward mask from the same seed instead of storing it. The seed is drawn from torch's
generator on the op's device as a 1-element int64 tensor: it follows `torch.manual_seed`, it is restored with the
RNG state by `torch.utils.checkpoint` (so recomputation draws the same mask), and it needs no host sync, so
torch.compile and CUDA graphs can capture it.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dropout_seed(device: torch.device) -> torch.Tensor:
    """A fresh seed for one kernel-dropout call: int64 tensor of shape [1] on `device`."""
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)


def check_dropout_p(p: float, name: str = "dropout_p") -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


def check_last_dim(t: torch.Tensor | None, size: int, name: str, ref_name: str) -> None:
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"{name} must have shape [{size}] (the last dim of {ref_name}), got {tuple(t.shape)}")


def check_same_dtype(ref: torch.Tensor, **named: torch.Tensor | None) -> None:
    for name, t in named.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected {ref.dtype} like the input")

