"""add_layer_norm: y = LayerNorm(dropout(x + x_bias) + residual), the post-LN step that closes every sub-layer.

The matmul runs without its bias and the bias is folded in here, so the block costs one read of x and residual and
one write of y. With gradients on, the LayerNorm input h is stored (one tensor of hidden size, in place of the
separate bias-add, dropout and add outputs eager PyTorch keeps) with fp32 mean / rstd per row; the dropout mask is
never stored: backward regenerates it from the seed. residual=None gives a plain (bias + dropout +) LayerNorm.
bias=None is a bias-free LayerNorm. Pre-LN blocks (ModernBERT) take return_sum=True: (y, h) with h the residual
stream that the next sub-layer adds to; h is the tensor the kernel stores anyway, and its incoming gradient is added
to dL/dh inside the backward kernel, so the pre-LN step costs no extra pass.

Launcher contract (fastenc.kernels.add_layer_norm and fastenc._cuda), on contiguous 2-D tensors; weight and bias
may be fp32 while x is fp16/bf16 (mixed precision); y and h have x's dtype:
    add_layer_norm_fwd(x [N, D], residual [N, D] | None, x_bias [D] | None, weight [D], bias [D] | None,
                       eps: float, dropout_p: float, seed [1] int64 | None, store_h: bool)
        -> (y [N, D], h [N, D] (empty unless store_h), mean [N] fp32, rstd [N] fp32)
    add_layer_norm_bwd(dy [N, D], h [N, D], weight [D], mean [N], rstd [N], dropout_p: float,
                       seed [1] int64 | None, has_x_bias: bool, has_bias: bool = True,
                       dh_extra [N, D] | None = None)
        -> (dx [N, D] (empty when dropout_p == 0: it is dh), dh [N, D], dx_bias [D] (empty without x_bias),
            dweight [D], dbias [D] (empty without has_bias))
   where dh = dL/dh = LayerNorm-backward(dy) + dh_extra (the gradient of a returned h) is the residual's gradient
   and dx = dropout-backward(dh).
Every launcher takes None for an absent input and returns an empty tensor for an absent output; parameters are
passed contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastenc import backends, dispatch
from fastenc.ops._common import check_dropout_p, check_last_dim, check_same_dtype, dropout_seed


def add_layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-12,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    return_sum: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference: LayerNorm(dropout(x + x_bias) + residual) in plain PyTorch (torch's own dropout RNG); with
    return_sum, (y, h) where h is the LayerNorm input."""
    h = x if x_bias is None else x + x_bias
    if dropout_p > 0:
        h = F.dropout(h, dropout_p, training=True)
    if residual is not None:
        h = h + residual
    y = F.layer_norm(h, (h.shape[-1],), weight, bias, eps)
    return (y, h) if return_sum else y


def _forward(x, residual, weight, bias, eps, x_bias, dropout_p, backend, store_h):
    """The launch both paths share: (y like x, h (like x when stored), mean, rstd, seed)."""
    d = x.shape[-1]
    x2 = x.reshape(-1, d).contiguous()
    r2 = None if residual is None else residual.reshape(-1, d).contiguous()
    seed = dropout_seed(x.device) if dropout_p > 0 else None
    x_bias = None if x_bias is None else x_bias.contiguous()
    bias = None if bias is None else bias.contiguous()
    y, h, mean, rstd = backends.launchers(backend, "add_layer_norm").add_layer_norm_fwd(
        x2, r2, x_bias, weight.contiguous(), bias, float(eps), dropout_p, seed, store_h)
    return y.view(*x.shape), h, mean, rstd, seed


class AddLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, x_bias, dropout_p, return_sum, backend):
        # forward runs with grad mode off; needs_input_grad says whether backward can be called
        store_h = return_sum or any(ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 5))
        y, h, mean, rstd, seed = _forward(x, residual, weight, bias, eps, x_bias, dropout_p, backend, store_h)
        ctx.save_for_backward(h, weight.contiguous(), mean, rstd, seed)
        ctx.dropout_p, ctx.backend, ctx.return_sum = dropout_p, backend, return_sum
        ctx.has_residual, ctx.has_x_bias, ctx.has_bias = residual is not None, x_bias is not None, bias is not None
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros read by the kernel
        return (y, h.view(*x.shape)) if return_sum else y

    @staticmethod
    def backward(ctx, dy, dh_out=None):
        h, weight, mean, rstd, seed = ctx.saved_tensors
        if dy is None and dh_out is None:
            return (None,) * 9
        shape = (dy if dy is not None else dh_out).shape
        dy = torch.zeros_like(h) if dy is None else dy.reshape(h.shape).contiguous()
        dh_extra = None if dh_out is None else dh_out.reshape(h.shape).contiguous()
        impl = backends.launchers(ctx.backend, "add_layer_norm")
        dx, dh, dx_bias, dweight, dbias = impl.add_layer_norm_bwd(
            dy, h, weight, mean, rstd, ctx.dropout_p, seed, ctx.has_x_bias, ctx.has_bias, dh_extra
        )
        dx = dx if ctx.dropout_p > 0 else dh
        dresidual = dh.view(shape) if ctx.has_residual else None
        return (dx.view(shape), dresidual, dweight, dbias if ctx.has_bias else None, None,
                dx_bias if ctx.has_x_bias else None, None, None, None)


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-12,
    *,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    return_sum: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm(dropout(x + x_bias) + residual) over the last dim; pass dropout_p=0 in eval mode. bias=None: a
    bias-free LayerNorm. return_sum=True returns (y, h), h = dropout(x + x_bias) + residual (the pre-LN residual
    stream), both differentiable."""
    d = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    check_last_dim(weight, d, "weight", "x")
    check_last_dim(bias, d, "bias", "x")
    check_last_dim(x_bias, d, "x_bias", "x")
    check_same_dtype(x, residual=residual, x_bias=x_bias)
    dropout_p = check_dropout_p(dropout_p)
    return_sum = bool(return_sum)

    call = backends.Call("add_layer_norm", {"x": x, "residual": residual, "weight": weight, "bias": bias,
                                            "x_bias": x_bias},
                         length=x.numel() // max(d, 1), hidden=d, dropout=dropout_p > 0)

    def run(name: str) -> torch.Tensor:  # the call for auto's tuner, which times one output (and its backward)
        out = add_layer_norm(x, residual, weight, bias, eps, x_bias=x_bias, dropout_p=dropout_p,
                             return_sum=return_sum, backend=name)
        return out[0] if return_sum else out

    def launch(name: str):
        y, h = _forward(x, residual, weight, bias, eps, x_bias, dropout_p, name, return_sum)[:2]
        return (y, h.view(*x.shape)) if return_sum else y

    return dispatch.run_op(
        call, backend, run,
        ref=lambda: add_layer_norm_ref(x, residual, weight, bias, eps, x_bias, dropout_p, return_sum),
        launch=launch,
        apply=lambda name: AddLayerNormFn.apply(x, residual, weight, bias, eps, x_bias, dropout_p, return_sum, name),
        grad_inputs=(x, residual, weight, bias, x_bias),
    )
