"""rotary: rotary position embedding (RoPE) of q and k before attention, rotate-half form over the whole head dim.

The GPT-NeoX / transformers `rotate_half` layout (ModernBERT, GTE, NomicBERT): with inv_freq_i = theta ** (-2i / D)
and a = pos * inv_freq_i for i < D / 2,
    out[i] = x[i] cos a - x[i + D/2] sin a,    out[i + D/2] = x[i + D/2] cos a + x[i] sin a,
in fp32, the result in the input's dtype. The kernels compute inv_freq and cos / sin from the positions and theta
in registers (no cos / sin table is built or read: a few transcendentals per token and frequency, shared by every
head, against a table's extra traffic and a host-side cache keyed by length and device). q and k go through one
launch, so each angle is computed once for both. The rotation is orthogonal: backward is the rotation by -a of the
output gradients, so nothing but the positions is saved.

Layouts: padded q, k [B, S, H, D] or packed [T, H, D] (any leading shape), positions of shape q.shape[:-2] (padded:
usually arange(S) per row; packed: the position within each token's own sequence). q and k may be strided views
(e.g. of one fused QKV output [.., 3, H, D]) with a unit last stride; the outputs are contiguous.

Launcher contract (fastenc.kernels.rotary and fastenc._cuda), on [N, H, D] tensors with unit last stride:
    rotary_fwd(q [N, H, D], k [N, H, D], positions [N] int32 | int64 contiguous, theta: float)
        -> (q_rot [N, H, D], k_rot [N, H, D]) contiguous, in q's dtype
    rotary_bwd(dq_rot [N, H, D], dk_rot [N, H, D], positions, theta) -> (dq, dk): the same rotation by -a
"""

from __future__ import annotations

import math

import torch

from fastenc import backends, dispatch
from fastenc.ops._common import check_same_dtype

POSITION_DTYPES = (torch.int32, torch.int64)


def rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """Reference: the formula of the module doc in plain PyTorch, computed in fp32 (float64 for float64 inputs),
    returned in q's dtype; differentiable through torch's autograd."""
    math_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    d = q.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=q.device, dtype=math_dtype) / d)
    angle = positions.to(math_dtype)[..., None, None] * inv_freq  # [..., 1, D/2]: one angle for every head
    cos, sin = angle.cos(), angle.sin()

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.to(math_dtype).chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(q.dtype)

    return rotate(q), rotate(k)


def _check(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float) -> None:
    for name, t in (("q", q), ("k", k), ("positions", positions)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() < 3:
        raise ValueError(f"q must be [..., heads, head_dim] (padded [batch, seq, heads, head_dim] or packed "
                         f"[tokens, heads, head_dim]), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if not q.is_floating_point():
        raise TypeError(f"q must be a floating-point tensor, got {q.dtype}")
    check_same_dtype(q, k=k)
    if q.shape[-1] % 2 or q.shape[-1] == 0:
        raise ValueError(f"the head dim (last dim of q) must be even and > 0 for rotate-half rotary, got "
                         f"{q.shape[-1]}")
    for name, t in (("q", q), ("k", k)):
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            raise ValueError(f"{name} must have a unit last stride (a view of contiguous head dims), got strides "
                             f"{t.stride()}")
    if positions.dtype not in POSITION_DTYPES:
        raise TypeError(f"positions must be an int32 or int64 tensor, got {positions.dtype}")
    if positions.shape != q.shape[:-2]:
        raise ValueError(f"positions must have shape q.shape[:-2] = {tuple(q.shape[:-2])}, got "
                         f"{tuple(positions.shape)}")
    if k.device != q.device or positions.device != q.device:
        raise ValueError(f"q, k and positions must be on one device, got {q.device}, {k.device}, "
                         f"{positions.device}")
    # traced with dynamic shapes, theta may be symbolic: its value is checked in eager calls only
    symbolic = torch.compiler.is_compiling() or isinstance(theta, (torch.SymInt, torch.SymFloat))
    if isinstance(theta, bool) or not (symbolic or isinstance(theta, (int, float))) or (
            not symbolic and (not math.isfinite(theta) or theta <= 0)):
        raise ValueError(f"theta must be a finite number > 0, got {theta!r}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[..., H, D] -> [N, H, D], a view where the leading dims merge (else a copy); unit last stride."""
    x = x.reshape(-1, *x.shape[-2:])
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


def _launch(direction: str, q, k, positions, theta, backend):
    """The launch both paths share: outputs shaped like q, positions as the contiguous [N] the launchers take."""
    pos = positions.reshape(-1).contiguous()
    fn = getattr(backends.launchers(backend, "rotary"), f"rotary_{direction}")
    q_out, k_out = fn(_rows(q), _rows(k), pos, float(theta))
    return q_out.view(q.shape), k_out.view(q.shape), pos


class RotaryFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, positions, theta, backend):
        q_rot, k_rot, pos = _launch("fwd", q, k, positions, theta, backend)
        ctx.save_for_backward(pos)
        ctx.theta, ctx.backend = theta, backend
        return q_rot, k_rot

    @staticmethod
    def backward(ctx, dq_rot, dk_rot):
        (pos,) = ctx.saved_tensors
        dq, dk, _ = _launch("bwd", dq_rot, dk_rot, pos.view(dq_rot.shape[:-2]), ctx.theta, ctx.backend)
        return dq, dk, None, None, None


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float, *,
           backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_rot, k_rot): rotate-half rotary embedding of q and k [..., H, D] at integer `positions` (shape
    q.shape[:-2]) with base `theta` (e.g. 10000; ModernBERT's global layers 160000). Outputs contiguous, q's dtype."""
    _check(q, k, positions, theta)
    n = positions.numel()
    call = backends.Call("rotary", {"q": q, "k": k, "positions": positions}, length=n, head_dim=q.shape[-1],
                         hidden=q.shape[-2] * q.shape[-1])
    return dispatch.run_op(
        call, backend, lambda name: rotary(q, k, positions, theta, backend=name),
        ref=lambda: rotary_ref(q, k, positions, theta),
        launch=lambda name: _launch("fwd", q, k, positions, theta, name)[:2],
        apply=lambda name: RotaryFn.apply(q, k, positions, theta, name),
        grad_inputs=(q, k),
    )
