"""gated_act kernels against gated_act_ref in float64: output and gradients for the three activations, both input
forms (one [.., 2I] tensor split in halves, or x and y), fp32 and fp16, strided views, dropout (the documented
Philox mask replayed in numpy, its keep rate, backward using the forward's mask), the launchers' custom-op
registration, torch.compile and errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastenc import backends
from fastenc.ops import gated_act, gated_act_ref
from fastenc.ops.gated_act import ACTIVATIONS
from tests.helpers import assert_close_to_ref, backend_params, compiler_env, device_for

BACKENDS = backend_params()
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _run(fn, tensors, dout):
    """fn's output and the gradients of every given tensor (None where the tensor is None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, dout))
    return out, [None if t is None else next(grads) for t in leaves]


def _inputs(shape, dtype, device, split, *, wide=1):
    """(x, y) of output shape `shape`: split gives x [..., 2I] and y None. wide > 1 makes x and y column slices of
    a wider tensor (row stride wide times the row), so the kernels read through strides."""
    inter = shape[-1]
    cols = (2 if split else 1) * inter
    # spread over the range where the activations curve, and into both tails
    big = 3 * torch.randn(*shape[:-1], wide * cols + (0 if split else inter), dtype=dtype, device=device)
    if split:
        return big[..., :cols], None
    return big[..., :inter], big[..., -inter:]


def _check(backend, x, y, activation, dtype):
    inter = x.shape[-1] // 2 if y is None else x.shape[-1]
    dout = torch.randn(*x.shape[:-1], inter, dtype=dtype, device=x.device)
    fn = lambda x, y: gated_act(x, y, activation, backend=backend)  # noqa: E731
    ref = lambda x, y: gated_act_ref(x, y, activation)  # noqa: E731
    out, (dx, dy) = _run(fn, [x, y], dout)
    out64, (dx64, dy64) = _run(ref, [x.double(), None if y is None else y.double()], dout.double())
    out_t, (dx_t, dy_t) = _run(ref, [x, y], dout)
    assert out.dtype == dtype and out.shape == (*x.shape[:-1], inter)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close_to_ref(out, out64, out_t, atol=ATOL[dtype], name="out")
    assert_close_to_ref(dx, dx64, dx_t, atol=ATOL[dtype], name="dx")
    if y is not None:
        assert dy.shape == y.shape and dy.dtype == dtype
        assert_close_to_ref(dy, dy64, dy_t, atol=ATOL[dtype], name="dy")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [True, False], ids=["split", "xy"])
@pytest.mark.parametrize("shape", [(3, 40), (2, 3, 70)], ids=str)
def test_matches_ref(backend, activation, dtype, split, shape):
    x, y = _inputs(shape, dtype, device_for(backend), split)
    _check(backend, x.contiguous(), None if y is None else y.contiguous(), activation, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [True, False], ids=["split", "xy"])
def test_strided_views(backend, split):
    """Column slices of a wider matmul output (row stride > row), and leading dims that do not flatten to rows."""
    device = device_for(backend)
    x, y = _inputs((2, 5, 36), torch.float32, device, split, wide=3)
    assert x.stride(-1) == 1 and x.stride(-2) > x.shape[-1]
    _check(backend, x, y, "gelu_tanh", torch.float32)
    xt, yt = x.transpose(0, 1), None if y is None else y.transpose(0, 1)
    _check(backend, xt, yt, "silu", torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_sizes(backend):
    """No rows; one column (I = 1, where a size-1 dim may carry any stride); a single row."""
    device = device_for(backend)
    big = 3 * torch.randn(3, 4, device=device)
    _check(backend, big[:, :2], None, "gelu", torch.float32)
    _check(backend, big[:, :1], big[:, 3:], "silu", torch.float32)
    _check(backend, big[:1, :], None, "gelu_tanh", torch.float32)
    out = gated_act(torch.randn(0, 5, 8, device=device), backend=backend)
    assert out.shape == (0, 5, 4)


def test_activations_are_distinct():
    """The three activations differ by more than the tolerance: a kernel ignoring `activation` fails the tests."""
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    outs = [gated_act_ref(x, torch.ones_like(x), a) for a in ACTIVATIONS]
    for i in range(len(outs)):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, (ACTIVATIONS[i], ACTIVATIONS[j])


def test_ref_forms():
    """The split form is ModernBERT's `act(input) * gate` of `input, gate = x.chunk(2, -1)`; the two-tensor form
    is GTE's `act(gate_proj(h)) * up_proj(h)`; the torch backend is the reference itself."""
    x = torch.randn(4, 3, 16, dtype=torch.float64)
    inp, gate = x.chunk(2, dim=-1)
    torch.testing.assert_close(gated_act_ref(x, None, "gelu"), F.gelu(inp) * gate)
    torch.testing.assert_close(gated_act_ref(inp, gate, "silu"), F.silu(inp) * gate)
    torch.testing.assert_close(gated_act_ref(inp, gate, "gelu_tanh"), F.gelu(inp, approximate="tanh") * gate)
    torch.testing.assert_close(gated_act(x, activation="silu", backend="torch"), gated_act_ref(x, None, "silu"))


def test_torch_backend_dropout():
    x = torch.rand(64, 128, dtype=torch.float64) + 0.5
    torch.manual_seed(0)
    out = gated_act(x, dropout_p=0.25, backend="torch")
    keep = out != 0
    assert _within_sigmas(keep.double().mean().item(), 0.75, keep.numel())
    torch.testing.assert_close(out[keep], (gated_act_ref(x) / 0.75)[keep])


# ---------------------------------------------------------------------------------------------------------------
# Dropout


def _within_sigmas(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


def _replayed_keep(seed: int, p: float, rows: int, cols: int) -> torch.Tensor:
    """The row-wise Philox scheme (fastenc.kernels._common) in numpy: keep(row, c) = word c % 4 of
    Philox(seed; c // 4, row lo, row hi, 0x7e1) >= floor(p * 2**32 + 0.5), p as fp32."""
    from tests.ops.test_attention import _philox4x32_10

    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    ctr = np.stack(np.broadcast_arrays(col // 4, row & 0xFFFFFFFF, row >> 32, 0x7E1), -1).astype(np.uint32)
    word = np.take_along_axis(_philox4x32_10(seed, ctr), (col % 4)[..., None], -1)[..., 0]
    return torch.from_numpy(word >= math.floor(float(np.float32(p)) * 2**32 + 0.5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [True, False], ids=["split", "xy"])
def test_launcher_mask_is_the_documented_philox_scheme(backend, split):
    """Forward and backward launchers apply the replayed mask, scaled by 1 / (1 - p); for a 64-bit seed."""
    device = device_for(backend)
    seed_value, p, (n, inter) = 2**40 + 4321, 0.3 + 2**-30, (5, 70)
    x, y = _inputs((n, inter), torch.float32, device, split)
    seed = torch.tensor([seed_value], dtype=torch.int64, device=device)
    impl = backends.launchers(backend, "gated_act")
    keep = _replayed_keep(seed_value, p, n, inter).to(device)
    scale = 1 / (1 - np.float32(p))
    out = impl.gated_act_fwd(x, y, "gelu", p, seed)
    torch.testing.assert_close(out, gated_act_ref(x, y, "gelu") * keep * scale, atol=1e-5, rtol=1e-5)
    dout = torch.randn(n, inter, device=device)
    dx, dy = impl.gated_act_bwd(dout, x, y, "gelu", p, seed)
    leaves = [x.detach().double().requires_grad_(), None if y is None else y.detach().double().requires_grad_()]
    grads = torch.autograd.grad(gated_act_ref(*leaves, "gelu"), [t for t in leaves if t is not None],
                                dout.double() * keep * scale)
    torch.testing.assert_close(dx.double(), grads[0], atol=1e-5, rtol=1e-5)
    if y is not None:
        torch.testing.assert_close(dy.double(), grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_independence(backend, p):
    device = device_for(backend)
    x = torch.rand(48, 2 * 256, device=device) + 0.5  # gelu(x) * y never zero
    impl = backends.launchers(backend, "gated_act")
    seeds = [torch.tensor([s], dtype=torch.int64, device=device) for s in (1234, 1234, 1235)]
    a, a2, b = ((impl.gated_act_fwd(x, None, "gelu", p, s) != 0).cpu() for s in seeds)
    assert _within_sigmas(a.double().mean().item(), 1 - p, a.numel())
    assert torch.equal(a, a2), "one seed, one mask"
    assert len({tuple(r.tolist()) for r in a}) == a.shape[0], "every row draws its own mask"
    agree = (a == b).double().mean().item()
    assert _within_sigmas(agree, p * p + (1 - p) * (1 - p), a.numel()), f"seeds 1234 and 1235 agree on {agree}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [True, False], ids=["split", "xy"])
def test_backward_uses_forward_mask(backend, dtype, split):
    """Through the public op: the mask read off the output is the one backward applies (float64 reference with
    that mask applied explicitly), the same torch seed draws the same mask, and two calls draw two masks."""
    device = device_for(backend)
    p = 0.3
    x, y = _inputs((3, 4, 40), dtype, device, split)
    x = x.abs() + 0.5  # act(x) * y is zero only where dropped
    if y is not None:
        y = y.abs() + 0.5
    dout = torch.randn(3, 4, 40, dtype=dtype, device=device)
    fn = lambda x, y: gated_act(x, y, "silu", p, backend=backend)  # noqa: E731
    torch.manual_seed(7)
    out, (dx, dy) = _run(fn, [x, y], dout)
    torch.manual_seed(7)
    assert torch.equal(fn(x, y), out), "same torch seed, same mask"
    assert not torch.equal(fn(x, y), out), "a new call draws a new mask"
    keep = out != 0
    assert _within_sigmas(keep.double().mean().item(), 1 - p, keep.numel())

    def masked_ref(x, y):
        return gated_act_ref(x, y, "silu") * keep / (1 - p)

    out64, (dx64, dy64) = _run(masked_ref, [x.double(), None if y is None else y.double()], dout.double())
    out_t, (dx_t, dy_t) = _run(masked_ref, [x, y], dout)
    assert_close_to_ref(out, out64, out_t, atol=ATOL[dtype], name="out")
    assert_close_to_ref(dx, dx64, dx_t, atol=ATOL[dtype], name="dx")
    if y is not None:
        assert_close_to_ref(dy, dy64, dy_t, atol=ATOL[dtype], name="dy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_recomputes_the_same_mask(backend):
    """torch.utils.checkpoint restores the RNG state, so recomputation draws the same seed and mask."""
    from torch.utils.checkpoint import checkpoint

    device = device_for(backend)
    x = 3 * torch.randn(2, 5, 48, device=device)
    dout = torch.randn(2, 5, 24, device=device)

    def block(x):
        return gated_act(x * 2, None, "gelu", 0.3, backend=backend)

    torch.manual_seed(11)
    out, (dx,) = _run(block, [x], dout)
    torch.manual_seed(11)
    out_ckpt, (dx_ckpt,) = _run(lambda t: checkpoint(block, t, use_reentrant=False), [x], dout)
    assert torch.equal(out, out_ckpt)
    torch.testing.assert_close(dx, dx_ckpt)


# ---------------------------------------------------------------------------------------------------------------
# GPU sizes, registration, tracing, errors


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_ref_gpu(backend, activation, dtype):
    for split, shape in ((True, (4096, 1152)), (False, (333, 3072)), (True, (7, 1001))):
        x, y = _inputs(shape, dtype, torch.device("cuda"), split)
        _check(backend, x, y, activation, dtype)


def test_custom_ops_registered():
    from fastenc.kernels import gated_act as k

    assert k.ACTIVATIONS == ACTIVATIONS  # the kernels' ACT codes (and csrc's GatedAct) index the op's names
    x, seed = torch.randn(5, 72), torch.tensor([3], dtype=torch.int64)
    for y, dout in ((None, torch.randn(5, 36)), (torch.randn(5, 72), torch.randn(5, 72))):
        for act in ACTIVATIONS:
            torch.library.opcheck(k.gated_act_fwd.op, (x, y, act, 0.0, None))
        torch.library.opcheck(k.gated_act_fwd.op, (x, y, "gelu", 0.2, seed))
        torch.library.opcheck(k.gated_act_bwd.op, (dout, x, y, "silu", 0.2, seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [True, False], ids=["split", "xy"])
def test_torch_compile_fullgraph(backend, split):
    device = device_for(backend)
    x, y = _inputs((2, 3, 40), torch.float32, device, split)
    dout = torch.randn(2, 3, 40, device=device)

    def f(x, y):
        return gated_act(x, y, "gelu_tanh", backend=backend)

    out, grads = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), [x, y], dout)
    out_e, grads_e = _run(f, [x, y], dout)
    torch.testing.assert_close(out, out_e)
    for g, g_e in zip(grads, grads_e, strict=True):
        torch.testing.assert_close(g, g_e)


_COMPILE_SCRIPT = """
import dataclasses, json, sys
import torch
from fastenc import backends, precompile as P

out = []
for target, dtype in (("sm_80", torch.bfloat16), ("sm_90a", torch.float16)):
    with P.target_driver(P.target(target)) as driver:
        k = backends.launchers("triton", "gated_act")
        x, y, seed = torch.randn(37, 144).to(dtype), torch.randn(37, 72).to(dtype), torch.tensor([5])
        for act in ("gelu", "gelu_tanh", "silu"):
            k.gated_act_fwd(x, None, act, 0.1, seed)
            k.gated_act_bwd(y, x, None, act, 0.1, seed)
            k.gated_act_fwd(x[:, :72], y, act, 0.0, None)
            k.gated_act_bwd(y, x[:, :72], y, act, 0.0, None)
        out += [dict(dataclasses.asdict(u), target=target) for u in driver.kernels.values()]
json.dump(out, open(sys.argv[1], "w"))
"""


def test_kernels_compile_for_ampere_and_hopper(tmp_path):
    """The interpreter does not run Triton's compiler: every kernel variant (three activations, both input forms,
    with and without dropout) compiles for sm_80 and sm_90a through precompile's stand-in driver, without spills."""
    env = compiler_env(tmp_path)
    root = pathlib.Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, str(tmp_path / "uses.json")], env=env, cwd=root,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    uses = json.loads((tmp_path / "uses.json").read_text())
    for target in ("sm_80", "sm_90a"):
        names = [u["name"] for u in uses if u["target"] == target]
        assert names.count("_gated_act_fwd_kernel") == 6 and names.count("_gated_act_bwd_kernel") == 6, names
    assert all(u["regs"] > 0 and u["spill_bytes"] == 0 for u in uses), uses


@pytest.mark.parametrize("backend", [*BACKENDS, "torch"])
def test_errors(backend):
    device = device_for(backend)
    x, y = torch.randn(3, 40, device=device), torch.randn(3, 40, device=device)
    with pytest.raises(ValueError, match="activation"):
        gated_act(x, y, "relu", backend=backend)
    with pytest.raises(ValueError, match="x must have an even last dim"):
        gated_act(x[:, :39], backend=backend)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        gated_act(x, y[:, :20], backend=backend)
    with pytest.raises(TypeError, match="y has dtype"):
        gated_act(x, y.half(), backend=backend)
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout_p"):
            gated_act(x, y, dropout_p=p, backend=backend)
    if backend == "torch":
        return
    impl = backends.launchers(backend, "gated_act")
    with pytest.raises(ValueError, match="x"):
        impl.gated_act_fwd(x.t(), None, "gelu", 0.0, None)
    with pytest.raises(ValueError, match="seed"):
        impl.gated_act_fwd(x, y, "gelu", 0.5, None)
