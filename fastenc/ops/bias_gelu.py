"""bias_gelu: y = gelu(x + bias), the feed-forward activation, in the exact erf form or the tanh form.

"tanh" covers transformers' gelu_new, gelu_pytorch_tanh and gelu_fast (one formula, written three ways).
Backward recomputes gelu'(x + bias) from the saved pre-activation instead of storing it: one tensor saved, the
same as PyTorch's own Linear + GELU.

Launcher contract (fastenc.kernels.bias_gelu and fastenc._cuda), on contiguous 2-D tensors:
    bias_gelu_fwd(x [N, D], bias [D] | None, tanh_approx: bool) -> y [N, D]
    bias_gelu_bwd(dy [N, D], x [N, D], bias [D] | None, tanh_approx: bool) -> (dx [N, D], dbias [D] (empty without
                  bias))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastenc import backends, dispatch
from fastenc.ops._common import check_last_dim, check_same_dtype

APPROXIMATIONS = ("none", "tanh")


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none") -> torch.Tensor:
    """Reference: gelu(x + bias) in plain PyTorch."""
    return F.gelu(x if bias is None else x + bias, approximate=approximate)


def _forward(x, bias, approximate, backend):
    """The launch both paths share: (y like x, x as rows, bias contiguous)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    bias = None if bias is None else bias.contiguous()
    y = backends.launchers(backend, "bias_gelu").bias_gelu_fwd(x2, bias, approximate == "tanh")
    return y.view(*x.shape), x2, bias


class BiasGeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate, backend):
        y, x2, bias = _forward(x, bias, approximate, backend)
        ctx.save_for_backward(x2, bias)
        ctx.tanh, ctx.backend = approximate == "tanh", backend
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        impl = backends.launchers(ctx.backend, "bias_gelu")
        dx, dbias = impl.bias_gelu_bwd(dy.reshape(x2.shape).contiguous(), x2, bias, ctx.tanh)
        return dx.view(*dy.shape), dbias if bias is not None else None, None, None


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none", *, backend: str | None = None
) -> torch.Tensor:
    """gelu(x + bias) over the last dim of x (any leading shape). approximate: "none" (erf) or "tanh"."""
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    check_last_dim(bias, x.shape[-1], "bias", "x")
    check_same_dtype(x, bias=bias)

    d = x.shape[-1]
    call = backends.Call("bias_gelu", {"x": x, "bias": bias}, length=x.numel() // max(d, 1), hidden=d)
    return dispatch.run_op(
        call, backend, lambda name: bias_gelu(x, bias, approximate, backend=name),
        ref=lambda: bias_gelu_ref(x, bias, approximate),
        launch=lambda name: _forward(x, bias, approximate, name)[0],
        apply=lambda name: BiasGeluFn.apply(x, bias, approximate, name),
        grad_inputs=(x, bias),
    )
