"""add_layer_norm kernels against add_layer_norm_ref in float64 (dropout off; dropout is in test_dropout.py):
output and every gradient, with and without residual / x_bias / bias, with the returned sum h (pre-LN) and its
gradient, fp32 and fp16, mixed-precision weights, awkward sizes, the launcher's custom-op registration,
torch.compile and errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import pytest
import torch

from fastenc import backends
from fastenc.ops import add_layer_norm, add_layer_norm_ref
from tests.helpers import assert_close_to_ref, backend_params, device_for

BACKENDS = backend_params()
ATOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
NAMES = ("x", "residual", "weight", "bias", "x_bias")


def _inputs(shape, dtype, device, residual=True, x_bias=True, wdtype=None, bias=True):
    d = shape[-1]
    wdtype = wdtype or dtype
    return [
        torch.randn(shape, dtype=dtype, device=device),
        torch.randn(shape, dtype=dtype, device=device) if residual else None,
        1 + 0.5 * torch.randn(d, dtype=wdtype, device=device),
        torch.randn(d, dtype=wdtype, device=device) if bias else None,
        torch.randn(d, dtype=dtype, device=device) if x_bias else None,
    ]


def _run(fn, tensors, dy):
    """fn's output and the gradients of every given tensor (None where the tensor is None); a tuple output (y, h)
    takes a tuple of incoming gradients."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, dy))
    return y, [None if t is None else next(grads) for t in leaves]


def _check(backend, shape, dtype, residual=True, x_bias=True, wdtype=None, eps=1e-5, bias=True, return_sum=False):
    device = device_for(backend)
    tensors = _inputs(shape, dtype, device, residual, x_bias, wdtype, bias)

    def call(x, r, w, b, xb):
        return add_layer_norm(x, r, w, b, eps, x_bias=xb, return_sum=return_sum, backend=backend)

    def ref(x, r, w, b, xb):
        return add_layer_norm_ref(x, r, w, b, eps, xb, return_sum=return_sum)

    dy = torch.randn(shape, dtype=dtype, device=device)
    if return_sum:  # gradients of both outputs: the LayerNorm output and the sum that the next sub-layer reads
        dy = (dy, torch.randn(shape, dtype=dtype, device=device))
        y, grads = _run(call, tensors, dy)
        y64, grads64 = _run(ref, [None if t is None else t.double() for t in tensors], tuple(g.double() for g in dy))
        y_t, grads_t = _run(ref, tensors, dy)
        (y, h), (y64, h64), (y_t, h_t) = y, y64, y_t
        assert h.dtype == dtype and h.shape == tuple(shape)
        assert_close_to_ref(h, h64, h_t, atol=ATOL[dtype], name="h")
    else:
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1000), (5, 1023), (2, 3, 64)], ids=str)
def test_matches_ref(backend, dtype, shape):
    _check(backend, shape, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("residual,x_bias", [(False, False), (True, False), (False, True)])
def test_optional_inputs(backend, residual, x_bias):
    _check(backend, (4, 48), torch.float32, residual=residual, x_bias=x_bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_weights_with_fp16_input(backend):
    _check(backend, (3, 96), torch.float16, wdtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("residual,x_bias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("bias,return_sum", [(False, False), (True, True), (False, True)])
def test_bias_free_and_returned_sum(backend, residual, x_bias, bias, return_sum):
    """Bias-free LayerNorm (no dbias) and the pre-LN step: h returned, its gradient added to the residual's."""
    _check(backend, (5, 40), torch.float32, residual=residual, x_bias=x_bias, bias=bias, return_sum=return_sum)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_free_returned_sum_fp16(backend):
    _check(backend, (2, 3, 64), torch.float16, bias=False, return_sum=True)
    _check(backend, (3, 96), torch.float16, wdtype=torch.float32, bias=False, return_sum=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 768), (333, 1024), (8, 4096)], ids=str)
def test_bias_free_returned_sum_gpu(backend, dtype, shape):
    _check(backend, shape, dtype, eps=1e-5, bias=False, return_sum=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_returned_sum_with_dropout(backend, residual, dtype):
    """Pre-LN step with dropout and no bias: h = dropout(x + x_bias) + residual, the mask read back from h, and
    every gradient (y's and h's flowing in) against a float64 reference that applies that mask."""
    device = device_for(backend)
    p, eps, shape = 0.3, 1e-5, (6, 40)
    tensors = _inputs(shape, dtype, device, residual=residual, bias=False)
    douts = (torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device))
    (y, h), grads = _run(lambda x, r, w, b, xb: add_layer_norm(x, r, w, b, eps, x_bias=xb, dropout_p=p,
                                                               return_sum=True, backend=backend), tensors, douts)
    r0 = tensors[1] if residual else torch.zeros_like(h)
    keep = h != r0  # dropped elements leave exactly the residual
    assert 0.5 < keep.float().mean().item() < 0.9

    def masked_ref(x, r, w, b, xb):
        return add_layer_norm_ref((x + xb) * keep / (1 - p), r, w, b, eps, return_sum=True)

    (y64, h64), grads64 = _run(masked_ref, [None if t is None else t.double() for t in tensors],
                               tuple(g.double() for g in douts))
    (y_t, h_t), grads_t = _run(masked_ref, tensors, douts)
    atol = ATOL[dtype] * 2
    assert_close_to_ref(h, h64, h_t, atol=atol, name="h")
    assert_close_to_ref(y, y64, y_t, atol=atol, name="y")
    for name, g, g64, g_t, t in zip(NAMES, grads, grads64, grads_t, tensors, strict=True):
        if t is not None:
            assert_close_to_ref(g, g64, g_t, atol=atol * 4, name=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("used", ["y", "h"])
def test_returned_sum_one_output_used(backend, used):
    """Only one of (y, h) reaches the loss: the other's gradient is None, not zeros, and the rest still matches."""
    device = device_for(backend)
    tensors = _inputs((4, 48), torch.float32, device, bias=False)
    g = torch.randn(4, 48, device=device)

    def grads(fn, ts):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in ts]
        y, h = fn(*leaves)
        out = y if used == "y" else h
        present = [t for t in leaves if t is not None]
        return torch.autograd.grad((out * g.to(out.dtype)).sum(), present, allow_unused=True)

    got = grads(lambda x, r, w, b, xb: add_layer_norm(x, r, w, b, 1e-5, x_bias=xb, return_sum=True, backend=backend),
                tensors)
    ref = lambda x, r, w, b, xb: add_layer_norm_ref(x, r, w, b, 1e-5, xb, return_sum=True)  # noqa: E731
    want = grads(ref, [None if t is None else t.double() for t in tensors])
    want_t = grads(ref, tensors)
    for name, a, b, c in zip(("x", "residual", "weight", "x_bias"), got, want, want_t, strict=True):
        if b is None:  # h does not depend on the LayerNorm weight
            assert a is None or (a == 0).all(), name
        else:
            assert_close_to_ref(a, b, c, atol=1e-4, name=f"d{name}")


def test_returned_sum_under_auto_tuning(monkeypatch, tmp_path):
    """auto's tuner times a return_sum call (forward and backward) on every candidate, none failing on the tuple."""
    from fastenc import autotune

    monkeypatch.setenv("FASTENC_TUNE_CACHE", str(tmp_path / "tune.json"))
    # auto leaves the Triton kernels out for CPU tensors; here they run in the interpreter
    monkeypatch.setattr(backends, "auto_candidates", lambda call: ("triton", "torch"))
    autotune.forget_tuning()
    x, r, w, xb = (t.requires_grad_() for t in _inputs((3, 40), torch.float32, torch.device("cpu"), bias=False)
                   if t is not None)
    timed = []

    def timer(name, fn, device):
        out = fn()
        assert torch.isfinite(out).all()
        timed.append(name)
        return 1.0

    try:
        with autotune.tuning(timer):
            y, h = add_layer_norm(x, r, w, None, 1e-5, x_bias=xb, return_sum=True)
    finally:
        autotune.forget_tuning()
    assert sorted(timed) == ["torch", "triton"]
    y_ref, h_ref = add_layer_norm_ref(x, r, w, None, 1e-5, xb, return_sum=True)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
def test_returned_sum_without_grad(backend):
    """Inference: (y, h) from the launcher directly, no autograd; h is the sum the next sub-layer adds to."""
    device = device_for(backend) if backend != "torch" else torch.device("cpu")
    x, r, w, _, xb = _inputs((3, 40), torch.float32, device)
    with torch.no_grad():
        y, h = add_layer_norm(x, r, w, None, 1e-5, x_bias=xb, return_sum=True, backend=backend)
    h64 = x.double() + xb.double() + r.double()
    assert_close_to_ref(h, h64, atol=1e-5, name="h")
    assert_close_to_ref(y, add_layer_norm_ref(h64, None, w.double(), None, 1e-5), atol=1e-5, name="y")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 768), (333, 1024), (8, 4096)], ids=str)
def test_matches_ref_gpu(backend, dtype, shape):
    _check(backend, shape, dtype, eps=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_stores_nothing(backend):
    device = device_for(backend)
    x, r, w, b, xb = _inputs((3, 40), torch.float32, device)
    impl = backends.launchers(backend, "add_layer_norm")
    y, h, mean, rstd = impl.add_layer_norm_fwd(x, r, xb, w, b, 1e-5, 0.0, None, False)
    assert h.numel() == 0  # absent: an empty tensor
    y64 = add_layer_norm_ref(x.double(), r.double(), w.double(), b.double(), 1e-5, xb.double())
    assert_close_to_ref(y, y64, atol=1e-5)
    h64 = x.double() + xb.double() + r.double()
    assert_close_to_ref(mean, h64.mean(-1), atol=1e-5, name="mean")
    assert_close_to_ref(rstd, (h64.var(-1, unbiased=False) + 1e-5).rsqrt(), atol=1e-4, rtol=1e-5, name="rstd")


def test_custom_ops_registered():
    """The launchers are torch.library custom ops whose fake implementations agree with the real ones."""
    from fastenc.kernels import add_layer_norm as k

    x, r, w, b, xb = _inputs((3, 40), torch.float32, torch.device("cpu"))
    seed = torch.tensor([7], dtype=torch.int64)
    torch.library.opcheck(k.add_layer_norm_fwd.op, (x, r, xb, w, b, 1e-5, 0.1, seed, True))
    y, h, mean, rstd = k.add_layer_norm_fwd.op(x, r, xb, w, b, 1e-5, 0.1, seed, True)
    torch.library.opcheck(k.add_layer_norm_bwd.op, (torch.randn_like(y), h, w, mean, rstd, 0.1, seed, True))
    torch.library.opcheck(k.add_layer_norm_bwd.op, (torch.randn_like(y), h, w, mean, rstd, 0.0, None, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_for(backend)
    tensors = _inputs((2, 3, 32), torch.float32, device)

    def f(x, r, w, b, xb):
        return add_layer_norm(x, r, w, b, 1e-5, x_bias=xb, backend=backend)

    dy = torch.randn(2, 3, 32, device=device)
    y, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), tensors, dy)
    y_e, grads_e = _run(f, tensors, dy)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_bias_free_returned_sum(backend):
    device = device_for(backend)
    x, r, w, _, xb = _inputs((2, 3, 32), torch.float32, device)

    def f(x, r, w, xb):
        y, h = add_layer_norm(x, r, w, None, 1e-5, x_bias=xb, return_sum=True, backend=backend)
        return y * h  # both outputs reach the loss

    dy = torch.randn(2, 3, 32, device=device)
    y, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), [x, r, w, xb], dy)
    y_e, grads_e = _run(f, [x, r, w, xb], dy)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    device = device_for(backend)
    x, r, w, b, xb = _inputs((3, 40), torch.float32, device)
    with pytest.raises(ValueError, match="weight"):
        add_layer_norm(x, r, w[:-1], b, backend=backend)
    with pytest.raises(ValueError, match="residual"):
        add_layer_norm(x, r[:, :-1], w, b, backend=backend)
    with pytest.raises(TypeError, match="x_bias"):
        add_layer_norm(x, r, w, b, x_bias=xb.double(), backend=backend)
    with pytest.raises(ValueError, match="dropout_p"):
        add_layer_norm(x, r, w, b, dropout_p=1.0, backend=backend)
    impl = backends.launchers(backend, "add_layer_norm")
    with pytest.raises(ValueError, match="x"):
        impl.add_layer_norm_fwd(x.t(), None, None, torch.ones(3), torch.zeros(3), 1e-5, 0.0, None, False)
    with pytest.raises(ValueError, match="seed"):
        impl.add_layer_norm_fwd(x, None, None, w, b, 1e-5, 0.5, None, False)
