"""Every op's custom ops under torch.compile with dynamic shapes: their fake implementations propagate symbolic sizes,
so one graph (forward and AOT backward) serves every row count and sequence length, with the results of eager calls
of the same backend. Triton runs in the interpreter on CPU: shapes are tiny.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from fastenc import ops
from tests.helpers import backend_params, device_for

BACKENDS = backend_params()
SIZES = (5, 7, 11)  # batch x length (or rows) changes at every call; sizes 0 and 1 are specialised by torch


def _embeddings(n: int, dev: torch.device, g: torch.Generator, backend: str) -> tuple:
    word, pos, tt = (torch.randn(rows, 16, generator=g).to(dev) for rows in (13, 12, 2))
    w, b = torch.randn(16, generator=g).to(dev), torch.randn(16, generator=g).to(dev)
    ids = torch.randint(0, 13, (2, n), generator=g).to(dev)
    tt_ids = torch.randint(0, 2, (2, n), generator=g).to(dev)
    return (lambda word, pos, tt, w, b, ids, tt_ids: ops.embeddings(
        ids, word, torch.arange(ids.shape[1], device=ids.device), pos, tt_ids, tt, w, b, 1e-5, backend=backend),
        (word, pos, tt, w, b), (ids, tt_ids))


def _rows(op: str):
    def make(n: int, dev: torch.device, g: torch.Generator, backend: str) -> tuple:
        x, r = (torch.randn(2, n, 16, generator=g).to(dev) for _ in range(2))
        w, b, xb = (torch.randn(16, generator=g).to(dev) for _ in range(3))
        if op == "bias_gelu":
            return (lambda x, r, xb: ops.bias_gelu(x, xb, "tanh", backend=backend) + r), (x, r, xb), ()
        if op == "gated_act":  # the one-tensor form, and x, y with the gate a view of a wider tensor
            return (lambda x, r: ops.gated_act(x, backend=backend) + ops.gated_act(x[..., :8], r[..., 8:], "silu",
                                                                                   backend=backend)), (x, r), ()
        if op == "gelu_layer_norm":
            return (lambda x, w, b, xb: ops.gelu_layer_norm(x, w, b, 1e-5, x_bias=xb, backend=backend)), \
                (x, w, b, xb), ()
        return (lambda x, r, w, b, xb: ops.add_layer_norm(x, r, w, b, 1e-5, x_bias=xb, backend=backend)), \
            (x, r, w, b, xb), ()
    return make


def _attention(layout: str):
    def make(n: int, dev: torch.device, g: torch.Generator, backend: str) -> tuple:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        if layout == "padded":
            qkv = torch.randn(2, n, 3, 2, 32, generator=g).to(dev, dtype)
            mask = torch.ones(2, n, dtype=torch.bool)
            mask[1, n // 2:] = False
            return (lambda qkv, mask: ops.attention(*qkv.unbind(2), key_padding_mask=mask, backend=backend),
                    (qkv,), (mask.to(dev),))
        lens = torch.tensor([n, n // 2 + 1, 3])
        qkv = torch.randn(int(lens.sum()), 3, 2, 32, generator=g).to(dev, dtype)
        cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(dev, torch.int32)

        def fn(qkv, cu, max_seqlen):
            return ops.attention(*qkv.unbind(1), cu_seqlens=cu, max_seqlen=max_seqlen, backend=backend)
        return fn, (qkv,), (cu, n)
    return make


ROW_OPS = ("add_layer_norm", "bias_gelu", "gelu_layer_norm", "gated_act")
CASES = {"embeddings": _embeddings, **{op: _rows(op) for op in ROW_OPS},
         "attention_padded": _attention("padded"), "attention_packed": _attention("packed")}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_graph_for_every_size_forward_and_backward(case, backend):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    compiled = None
    for n in SIZES:
        fn, params, rest = CASES[case](n, dev, g, backend)
        compiled = compiled or torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
        results = []
        for f in (compiled, fn):
            leaves = [p.detach().requires_grad_() for p in params]
            out = f(*leaves, *rest)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(n)).to(out)
            grads = torch.autograd.grad((out * weights).sum(), leaves)
            results.append((out, grads))
        (out, grads), (ref, ref_grads) = results
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    graphs = counters["stats"]["unique_graphs"]  # a trace dynamo restarts (to specialise a float) is not a graph
    assert graphs == 1, f"{case}: {graphs} graphs for {len(SIZES)} sizes"
