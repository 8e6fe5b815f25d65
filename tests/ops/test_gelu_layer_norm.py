"""gelu_layer_norm kernels against gelu_layer_norm_ref in float64: output and every gradient, erf and tanh forms,
with and without x_bias, fp32 and fp16, mixed-precision weights, awkward sizes, the launchers' custom-op
registration, torch.compile and errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import pytest
import torch

from fastenc import backends
from fastenc.ops import gelu_layer_norm, gelu_layer_norm_ref
from tests.helpers import assert_close_to_ref, backend_params, device_for

BACKENDS = backend_params()
ATOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
NAMES = ("x", "weight", "bias", "x_bias")


def _run(fn, tensors, dy):
    """fn's output and the gradients of every given tensor (None where the tensor is None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy))
    return y, [None if t is None else next(grads) for t in leaves]


def _check(backend, shape, dtype, approximate, has_x_bias=True, wdtype=None, eps=1e-5):
    device = device_for(backend)
    d = shape[-1]
    wdtype = wdtype or dtype
    tensors = [
        2 * torch.randn(shape, dtype=dtype, device=device),
        1 + 0.5 * torch.randn(d, dtype=wdtype, device=device),
        torch.randn(d, dtype=wdtype, device=device),
        torch.randn(d, dtype=dtype, device=device) if has_x_bias else None,
    ]
    dy = torch.randn(shape, dtype=dtype, device=device)

    def call(x, w, b, xb):
        return gelu_layer_norm(x, w, b, eps, x_bias=xb, approximate=approximate, backend=backend)

    def ref(x, w, b, xb):
        return gelu_layer_norm_ref(x, w, b, eps, xb, approximate)

    y, grads = _run(call, tensors, dy)
    y64, grads64 = _run(ref, [None if t is None else t.double() for t in tensors], dy.double())
    y_t, grads_t = _run(ref, tensors, dy)
    assert y.dtype == dtype and y.shape == tuple(shape)
    assert_close_to_ref(y, y64, y_t, atol=ATOL[dtype], name="y")
    for name, g, g64, g_t, t in zip(NAMES, grads, grads64, grads_t, tensors, strict=True):
        if t is None:
            continue
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close_to_ref(g, g64, g_t, atol=ATOL[dtype] * 4, name=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1000), (5, 1023), (2, 3, 64)], ids=str)
def test_matches_ref(backend, approximate, dtype, shape):
    _check(backend, shape, dtype, approximate)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_x_bias(backend):
    _check(backend, (4, 48), torch.float32, "none", has_x_bias=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_weights_with_fp16_input(backend):
    _check(backend, (3, 96), torch.float16, "tanh", wdtype=torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 768), (333, 1024), (8, 4096)], ids=str)
def test_matches_ref_gpu(backend, approximate, dtype, shape):
    _check(backend, shape, dtype, approximate, eps=1e-12)


def test_custom_ops_registered():
    from fastenc.kernels import gelu_layer_norm as k

    x, w, b, xb = torch.randn(3, 40), torch.randn(40), torch.randn(40), torch.randn(40)
    torch.library.opcheck(k.gelu_layer_norm_fwd.op, (x, xb, w, b, 1e-5, True))
    y, mean, rstd = k.gelu_layer_norm_fwd.op(x, xb, w, b, 1e-5, True)
    torch.library.opcheck(k.gelu_layer_norm_bwd.op, (torch.randn_like(y), x, xb, w, mean, rstd, True))
    torch.library.opcheck(k.gelu_layer_norm_bwd.op, (torch.randn_like(y), x, None, w, mean, rstd, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_for(backend)
    tensors = [torch.randn(2, 3, 32, device=device)] + [torch.randn(32, device=device) for _ in range(3)]
    dy = torch.randn(2, 3, 32, device=device)

    def f(x, w, b, xb):
        return gelu_layer_norm(x, w, b, 1e-5, x_bias=xb, backend=backend)

    y, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), tensors, dy)
    y_e, grads_e = _run(f, tensors, dy)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    device = device_for(backend)
    x, w, b = torch.randn(3, 40, device=device), torch.randn(40, device=device), torch.randn(40, device=device)
    with pytest.raises(ValueError, match="approximate"):
        gelu_layer_norm(x, w, b, approximate="fast", backend=backend)
    with pytest.raises(ValueError, match="weight"):
        gelu_layer_norm(x, w[:-1], b, backend=backend)
    with pytest.raises(ValueError, match="x_bias"):
        gelu_layer_norm(x, w, b, x_bias=b[:-1], backend=backend)
    impl = backends.launchers(backend, "gelu_layer_norm")
    with pytest.raises(ValueError, match="x"):
        impl.gelu_layer_norm_fwd(x.t(), None, torch.ones(3), torch.zeros(3), 1e-5, False)
    with pytest.raises(ValueError, match="hidden size"):
        impl.gelu_layer_norm_fwd(torch.randn(1, 20000, device=device), None, torch.ones(20000, device=device),
                                 torch.zeros(20000, device=device), 1e-5, False)
