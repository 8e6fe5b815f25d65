"""gated_act: out = dropout(act(x) * y), the gated feed-forward activation (GLU family) of modern encoders.

Two input forms: `y=None` with x's last dim 2I split in halves (ModernBERT's `act(input) * gate` from one Wi
output), or x and y separate tensors of one shape (GTE / NomicBERT: `act(gate_proj(h)) * up_proj(h)`). The kernels
read the two halves of the one tensor through its strides, so the split costs no copy, and backward writes both
halves' gradients into one [N, 2I] tensor: the gradient of the Wi output, again without a concatenation. Backward
recomputes act(x) and act'(x) from the saved inputs, so only x and y are kept (eager PyTorch keeps act(x) too); the
dropout mask is never stored: backward regenerates it from the seed (the row-wise Philox scheme of
fastenc.kernels._common over element (row, c) of the [N, I] output).

Launcher contract (fastenc.kernels.gated_act and fastenc._cuda), on 2-D tensors with unit last stride (x and y may
have any row stride: views of a wider matmul output); activation is one of ACTIVATIONS:
    gated_act_fwd(x [N, Dx], y [N, I] | None, activation: str, dropout_p: float, seed [1] int64 | None)
        -> out [N, I] contiguous, in x's dtype; with y None Dx = 2I (act input x[:, :I], gate x[:, I:]), else Dx = I
    gated_act_bwd(dout [N, I] contiguous, x [N, Dx], y [N, I] | None, activation: str, dropout_p: float,
                  seed [1] int64 | None)
        -> (dx [N, Dx] contiguous (with y None: both halves' gradients), dy [N, I] contiguous (empty when y is None))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastenc import backends, dispatch
from fastenc.ops._common import check_dropout_p, check_same_dtype, dropout_seed

ACTIVATIONS = ("gelu", "gelu_tanh", "silu")
_ACT_FN = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def gated_act_ref(
    x: torch.Tensor, y: torch.Tensor | None = None, activation: str = "gelu", dropout_p: float = 0.0
) -> torch.Tensor:
    """Reference: dropout(act(x) * y) in plain PyTorch (torch's own dropout RNG); y None: x, y = x.chunk(2, -1)."""
    if y is None:
        x, y = x.chunk(2, dim=-1)
    out = _ACT_FN[activation](x) * y
    return F.dropout(out, dropout_p, training=True) if dropout_p > 0 else out


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, last dim] with unit last stride: a view when the leading dims allow it, else a copy."""
    t2 = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.numel() == 0 else t2.contiguous()


def _forward(x, y, activation, dropout_p, backend):
    """The launch both paths share: (out, x as rows, y as rows or None, seed)."""
    x2, y2 = _rows(x), None if y is None else _rows(y)
    seed = dropout_seed(x.device) if dropout_p > 0 else None
    out = backends.launchers(backend, "gated_act").gated_act_fwd(x2, y2, activation, dropout_p, seed)
    return out.view(*x.shape[:-1], out.shape[-1]), x2, y2, seed


class GatedActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, activation, dropout_p, backend):
        out, x2, y2, seed = _forward(x, y, activation, dropout_p, backend)
        ctx.save_for_backward(x2, y2, seed)
        ctx.activation, ctx.dropout_p, ctx.backend = activation, dropout_p, backend
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        x2, y2, seed = ctx.saved_tensors
        impl = backends.launchers(ctx.backend, "gated_act")
        dx, dy = impl.gated_act_bwd(dout.reshape(x2.shape[0], dout.shape[-1]).contiguous(), x2, y2, ctx.activation,
                                    ctx.dropout_p, seed)
        return dx.view(ctx.x_shape), None if y2 is None else dy.view(ctx.x_shape), None, None, None


def _check(x: torch.Tensor, y: torch.Tensor | None, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dim")
    if y is None:
        if x.shape[-1] % 2:
            raise ValueError(f"x must have an even last dim (2I: input and gate halves) when y is None, got "
                             f"shape {tuple(x.shape)}")
    elif y.shape != x.shape:
        raise ValueError(f"y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
    check_same_dtype(x, y=y)


def gated_act(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    activation: str = "gelu",
    dropout_p: float = 0.0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """dropout(act(x) * y) over the last dim (any leading shape); y None: x's last dim 2I is split into (x, y)
    halves. activation: "gelu" (erf), "gelu_tanh" or "silu". Pass dropout_p=0 in eval mode."""
    _check(x, y, activation)
    dropout_p = check_dropout_p(dropout_p)
    inter = x.shape[-1] // 2 if y is None else x.shape[-1]
    call = backends.Call("gated_act", {"x": x, "y": y}, length=math.prod(x.shape[:-1]), hidden=inter,
                         dropout=dropout_p > 0)

    return dispatch.run_op(
        call, backend, lambda name: gated_act(x, y, activation, dropout_p, backend=name),
        ref=lambda: gated_act_ref(x, y, activation, dropout_p),
        launch=lambda name: _forward(x, y, activation, dropout_p, name)[0],
        apply=lambda name: GatedActFn.apply(x, y, activation, dropout_p, name),
        grad_inputs=(x, y),
    )
