"""bias_gelu kernels against bias_gelu_ref in float64: output and gradients, erf and tanh forms, with and without
bias, fp32 and fp16, awkward sizes, the launchers' custom-op registration, torch.compile and errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import pytest
import torch

from fastenc import backends
from fastenc.ops import bias_gelu, bias_gelu_ref
from tests.helpers import assert_close_to_ref, backend_params, device_for

BACKENDS = backend_params()
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _run(fn, tensors, dy):
    """fn's output and the gradients of every given tensor (None where the tensor is None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy))
    return y, [None if t is None else next(grads) for t in leaves]


def _check(backend, shape, dtype, approximate, has_bias=True):
    device = device_for(backend)
    # spread over the range where erf and tanh GELU differ most, and into both tails
    x = 3 * torch.randn(shape, dtype=dtype, device=device)
    bias = torch.randn(shape[-1], dtype=dtype, device=device) if has_bias else None
    dy = torch.randn(shape, dtype=dtype, device=device)
    y, (dx, db) = _run(lambda x, b: bias_gelu(x, b, approximate, backend=backend), [x, bias], dy)
    ref = lambda x, b: bias_gelu_ref(x, b, approximate)  # noqa: E731
    y64, (dx64, db64) = _run(ref, [x.double(), None if bias is None else bias.double()], dy.double())
    y_t, (dx_t, db_t) = _run(ref, [x, bias], dy)
    assert y.dtype == dtype and y.shape == tuple(shape)
    assert_close_to_ref(y, y64, y_t, atol=ATOL[dtype], name="y")
    assert_close_to_ref(dx, dx64, dx_t, atol=ATOL[dtype], name="dx")
    if has_bias:
        assert db.dtype == dtype
        assert_close_to_ref(db, db64, db_t, atol=ATOL[dtype] * 4, name="dbias")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1000), (70, 1023), (2, 3, 64)], ids=str)
def test_matches_ref(backend, approximate, dtype, shape):
    _check(backend, shape, dtype, approximate)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_without_bias(backend, approximate):
    _check(backend, (5, 300), torch.float32, approximate, has_bias=False)


def test_tanh_form_is_not_erf_form():
    """The two forms differ by about 1e-3 near |x| = 2: a kernel ignoring `approximate` fails test_matches_ref."""
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    assert (bias_gelu_ref(x, None, "tanh") - bias_gelu_ref(x, None, "none")).abs().max() > 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_ref_gpu(backend, approximate, dtype):
    _check(backend, (4096, 3072), dtype, approximate)
    _check(backend, (333, 1000), dtype, approximate)


def test_custom_ops_registered():
    from fastenc.kernels import bias_gelu as k

    x, b = torch.randn(5, 70), torch.randn(70)
    for tanh_approx in (False, True):
        torch.library.opcheck(k.bias_gelu_fwd.op, (x, b, tanh_approx))
        torch.library.opcheck(k.bias_gelu_bwd.op, (torch.randn_like(x), x, b, tanh_approx))
    torch.library.opcheck(k.bias_gelu_bwd.op, (torch.randn_like(x), x, None, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_for(backend)
    x, dy = torch.randn(2, 3, 40, device=device), torch.randn(2, 3, 40, device=device)
    b = torch.randn(40, device=device)

    def f(x, b):
        return bias_gelu(x, b, "tanh", backend=backend)

    y, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), [x, b], dy)
    y_e, grads_e = _run(f, [x, b], dy)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    device = device_for(backend)
    x, b = torch.randn(3, 40, device=device), torch.randn(40, device=device)
    with pytest.raises(ValueError, match="approximate"):
        bias_gelu(x, b, "sigmoid", backend=backend)
    with pytest.raises(ValueError, match="bias"):
        bias_gelu(x, b[:-1], backend=backend)
    with pytest.raises(TypeError, match="bias"):
        bias_gelu(x, b.half(), backend=backend)
    impl = backends.launchers(backend, "bias_gelu")
    with pytest.raises(ValueError, match="x"):
        impl.bias_gelu_fwd(x.t(), None, False)
