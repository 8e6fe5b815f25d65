"""Dropout inside the kernels (add_layer_norm: on x + x_bias before the residual; embeddings: on the LayerNorm output):
the documented Philox scheme bit for bit (fastenc.kernels._common), keep rate, scaling, determinism for a fixed seed,
independence across seeds, rows and calls, backward using the forward's mask (checked against a float64 reference that
applies the recovered mask explicitly), and gradient checkpointing recomputing the same mask.

On CPU the Triton kernels run in the interpreter: shapes are tiny.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fastenc import backends
from fastenc.ops import add_layer_norm, embeddings, embeddings_ref
from tests.helpers import assert_close_to_ref, backend_params, device_for

BACKENDS = backend_params()


def _keep_mask(backend, p, seed, shape=(64, 256)):
    """The add_layer_norm launcher's keep-mask for `seed`, read from h = dropout(x) (x is never zero)."""
    device = device_for(backend)
    x = torch.rand(shape, device=device) + 0.5
    d = shape[1]
    impl = backends.launchers(backend, "add_layer_norm")
    seed_t = torch.tensor([seed], dtype=torch.int64, device=device)
    _, h, _, _ = impl.add_layer_norm_fwd(x, None, None, torch.ones(d, device=device),
                                         torch.zeros(d, device=device), 1e-5, p, seed_t, True)
    keep = h != 0
    torch.testing.assert_close(h[keep], x[keep] / (1 - p), msg="kept elements are scaled by 1 / (1 - p)")
    return keep


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_is_the_documented_philox_scheme(backend):
    """keep(row, c) = word c % 4 of Philox(seed; c // 4, row lo, row hi, 0x7e1) >= floor(p * 2**32 + 0.5), the same
    mask in every backend; rows past 2**32 use the counter's high word."""
    from tests.ops.test_attention import _philox4x32_10

    seed, p, shape = 2**40 + 12345, 0.3 + 2**-30, (5, 70)
    keep = _keep_mask(backend, p, seed, shape).cpu().numpy()
    row, col = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    words = _philox4x32_10(seed, np.stack(np.broadcast_arrays(col // 4, row, 0, 0x7E1), -1).astype(np.uint32))
    word = np.take_along_axis(words, (col % 4)[..., None], -1)[..., 0]
    assert np.array_equal(keep, word >= math.floor(float(np.float32(p)) * 2**32 + 0.5))


def _within_sigmas(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate(backend, p):
    keep = _keep_mask(backend, p, seed=1234)
    assert _within_sigmas(keep.float().mean().item(), 1 - p, keep.numel())
    # every row and every column is drawn afresh: no two rows share a mask
    assert len({tuple(r.tolist()) for r in keep}) == keep.shape[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_seed_is_deterministic_and_seeds_independent(backend):
    p = 0.3
    a, a2, b = _keep_mask(backend, p, 7), _keep_mask(backend, p, 7), _keep_mask(backend, p, 8)
    assert torch.equal(a, a2)
    agree = (a == b).float().mean().item()
    assert _within_sigmas(agree, p * p + (1 - p) * (1 - p), a.numel()), f"masks of seeds 7 and 8 agree on {agree}"


def _aln_inputs(device, shape=(6, 40)):
    d = shape[-1]
    return [torch.randn(shape, device=device), torch.randn(shape, device=device),
            1 + 0.5 * torch.randn(d, device=device), torch.randn(d, device=device), torch.randn(d, device=device)]


def _grads(fn, tensors, dy):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    return y, list(torch.autograd.grad(y, leaves, dy))


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_layer_norm_calls_seeds_and_determinism(backend):
    device = device_for(backend)
    x, r, w, b, xb = _aln_inputs(device)
    f = lambda: add_layer_norm(x, r, w, b, 1e-5, x_bias=xb, dropout_p=0.4, backend=backend)  # noqa: E731
    torch.manual_seed(5)
    y1, y2 = f(), f()
    torch.manual_seed(5)
    y3 = f()
    assert torch.equal(y1, y3), "same torch seed, same output"
    assert not torch.equal(y1, y2), "two calls draw two masks"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_layer_norm_backward_uses_forward_mask(backend, dtype):
    device = device_for(backend)
    p, eps = 0.3, 1e-5
    tensors = [t.to(dtype) for t in _aln_inputs(device)]
    dy = torch.randn_like(tensors[0])
    y, (dx, dr, dw, db, dxb) = _grads(
        lambda x, r, w, b, xb: add_layer_norm(x, r, w, b, eps, x_bias=xb, dropout_p=p, backend=backend), tensors, dy
    )
    # dx = mask / (1 - p) * (gradient of the residual path); dr is that gradient, nonzero almost surely
    keep = dx != 0
    assert _within_sigmas(keep.float().mean().item(), 1 - p, keep.numel())
    atol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(dx.double(), (dr.double() * keep / (1 - p)), atol=atol, rtol=1e-3)

    def masked_ref(x, r, w, b, xb):
        return F.layer_norm((x + xb) * keep / (1 - p) + r, (x.shape[-1],), w, b, eps)

    y64, grads64 = _grads(masked_ref, [t.double() for t in tensors], dy.double())
    y_t, grads_t = _grads(masked_ref, tensors, dy)
    assert_close_to_ref(y, y64, y_t, atol=5 * atol, name="y")
    for name, g, g64, g_t in zip(("dx", "dresidual", "dweight", "dbias", "dx_bias"), (dx, dr, dw, db, dxb), grads64,
                                 grads_t, strict=True):
        assert_close_to_ref(g, g64, g_t, atol=20 * atol, name=name)


def _emb_inputs(device, e=48):
    tables = [torch.randn(9, e, device=device), torch.randn(6, e, device=device), torch.randn(2, e, device=device),
              1 + 0.5 * torch.randn(e, device=device), torch.randn(e, device=device)]
    ids = torch.randint(0, 9, (3, 6), device=device)
    return tables, ids, torch.arange(6, device=device), torch.randint(0, 2, (3, 6), device=device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embeddings_dropout_matches_masked_ref(backend):
    device = device_for(backend)
    p, eps = 0.25, 1e-5
    tables, ids, pos_ids, tt_ids = _emb_inputs(device)
    dy = torch.randn(3, 6, tables[0].shape[1], device=device)

    def call(word, pos, tt, w, b):
        return embeddings(ids, word, pos_ids, pos, tt_ids, tt, w, b, eps, dropout_p=p, backend=backend)

    def ref(word, pos, tt, w, b):
        return embeddings_ref(ids, word, pos_ids.expand(ids.shape), pos, tt_ids, tt, w, b, eps)

    torch.manual_seed(3)
    y, grads = _grads(call, tables, dy)
    torch.manual_seed(3)
    assert torch.equal(call(*tables), y), "same torch seed, same mask"
    assert not torch.equal(call(*tables), y), "a new call draws a new mask"
    keep = y != 0
    assert _within_sigmas(keep.float().mean().item(), 1 - p, keep.numel())
    # the mask applies to the LayerNorm output: backward sees dy * mask / (1 - p)
    y64, grads64 = _grads(ref, [t.double() for t in tables], dy.double() * keep / (1 - p))
    assert_close_to_ref(y, y64 * keep / (1 - p), atol=2e-5, name="y")
    for name, g, g64 in zip(("dword", "dposition", "dtoken_type", "dweight", "dbias"), grads, grads64, strict=True):
        assert_close_to_ref(g, g64, atol=1e-4, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_recomputes_the_same_masks(backend):
    """torch.utils.checkpoint restores the RNG state, so recomputation draws the same seeds and masks."""
    device = device_for(backend)
    (word, pos, tt, w, b), ids, pos_ids, tt_ids = _emb_inputs(device, e=32)
    lw, lb, xb = 1 + torch.randn(32, device=device), torch.randn(32, device=device), torch.randn(32, device=device)

    def block(word):
        h = embeddings(ids, word, pos_ids, pos, tt_ids, tt, w, b, dropout_p=0.2, backend=backend)
        return add_layer_norm(h * 2, h, lw, lb, x_bias=xb, dropout_p=0.3, backend=backend)

    dy = torch.randn(3, 6, 32, device=device)
    torch.manual_seed(11)
    y, (g,) = _grads(block, [word], dy)
    torch.manual_seed(11)
    y_ckpt, (g_ckpt,) = _grads(lambda wd: checkpoint(block, wd, use_reentrant=False), [word], dy)
    assert torch.equal(y, y_ckpt)
    torch.testing.assert_close(g, g_ckpt)
