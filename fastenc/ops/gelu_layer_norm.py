"""gelu_layer_norm: y = LayerNorm(gelu(x + x_bias)), the MLM / ELECTRA-generator head transform, in one pass.

Statistics in fp32 whatever the input dtype. Backward recomputes gelu(x + x_bias) from the saved matmul output x
and the saved per-row mean / rstd, so nothing of hidden size is stored beyond x itself.

Launcher contract (fastenc.kernels.gelu_layer_norm and fastenc._cuda), on contiguous 2-D tensors:
    gelu_layer_norm_fwd(x [N, D], x_bias [D] | None, weight [D], bias [D], eps: float, tanh_approx: bool)
        -> (y [N, D], mean [N] fp32, rstd [N] fp32)
    gelu_layer_norm_bwd(dy [N, D], x [N, D], x_bias [D] | None, weight [D], mean [N], rstd [N], tanh_approx: bool)
        -> (dx [N, D], dx_bias [D] (empty without x_bias), dweight [D], dbias [D])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastenc import backends, dispatch
from fastenc.ops._common import check_last_dim, check_same_dtype
from fastenc.ops.bias_gelu import APPROXIMATIONS


def gelu_layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-12,
    x_bias: torch.Tensor | None = None,
    approximate: str = "none",
) -> torch.Tensor:
    """Reference: LayerNorm(gelu(x + x_bias)) in plain PyTorch."""
    h = F.gelu(x if x_bias is None else x + x_bias, approximate=approximate)
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps)


def _forward(x, weight, bias, eps, x_bias, approximate, backend):
    """The launch both paths share: (y like x, x as rows, x_bias, weight, mean, rstd)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    x_bias = None if x_bias is None else x_bias.contiguous()
    weight, bias = weight.contiguous(), bias.contiguous()
    y, mean, rstd = backends.launchers(backend, "gelu_layer_norm").gelu_layer_norm_fwd(
        x2, x_bias, weight, bias, float(eps), approximate == "tanh")
    return y.view(*x.shape), x2, x_bias, weight, mean, rstd


class GeluLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, x_bias, approximate, backend):
        y, *saved = _forward(x, weight, bias, eps, x_bias, approximate, backend)
        ctx.save_for_backward(*saved)
        ctx.tanh, ctx.backend = approximate == "tanh", backend
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, x_bias, weight, mean, rstd = ctx.saved_tensors
        impl = backends.launchers(ctx.backend, "gelu_layer_norm")
        dx, dx_bias, dweight, dbias = impl.gelu_layer_norm_bwd(
            dy.reshape(x2.shape).contiguous(), x2, x_bias, weight, mean, rstd, ctx.tanh
        )
        return dx.view(*dy.shape), dweight, dbias, None, dx_bias if x_bias is not None else None, None, None


def gelu_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-12,
    *,
    x_bias: torch.Tensor | None = None,
    approximate: str = "none",
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm(gelu(x + x_bias)) over the last dim of x; weight/bias are the LayerNorm's affine parameters."""
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    d = x.shape[-1]
    check_last_dim(weight, d, "weight", "x")
    check_last_dim(bias, d, "bias", "x")
    check_last_dim(x_bias, d, "x_bias", "x")
    check_same_dtype(x, x_bias=x_bias)

    call = backends.Call("gelu_layer_norm", {"x": x, "weight": weight, "bias": bias, "x_bias": x_bias},
                         length=x.numel() // max(d, 1), hidden=d)

    return dispatch.run_op(
        call, backend,
        lambda name: gelu_layer_norm(x, weight, bias, eps, x_bias=x_bias, approximate=approximate, backend=name),
        ref=lambda: gelu_layer_norm_ref(x, weight, bias, eps, x_bias, approximate),
        launch=lambda name: _forward(x, weight, bias, eps, x_bias, approximate, name)[0],
        apply=lambda name: GeluLayerNormFn.apply(x, weight, bias, eps, x_bias, approximate, name),
        grad_inputs=(x, weight, bias, x_bias),
    )
