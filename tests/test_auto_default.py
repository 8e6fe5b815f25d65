"""Backend "auto"'s default ranking on GPUs, before any GPU run is recorded: attention goes to torch's own fused
attention first (fastenc's CUDA attention is estimated slower than FlashAttention-2), the row ops to the kernels.
No GPU here: the calls are CPU tensors that auto is told sit on an sm_90 device."""

from __future__ import annotations

import pytest
import torch

import fastenc
from fastenc import autotune
from fastenc.ops import add_layer_norm, attention


@pytest.fixture(autouse=True)
def _fresh_auto(monkeypatch):
    autotune.set_table(None)
    autotune.forget_tuning()
    monkeypatch.setenv("FASTENC_TUNE", "0")
    yield
    autotune.set_table(None)
    autotune.forget_tuning()


def _key(op: str, layout: str) -> tuple:
    return (op, "sm_90", "float16", 64 if op == "attention" else None, None if op == "attention" else 768, layout,
            False, 128)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_default_ranks_sdpa_first_for_attention_on_gpus_and_says_why(layout):
    order, source, ms = autotune._ranking(None, _key("attention", layout), None, [])
    assert order[0] == "sdpa" and set(order) == {"sdpa", "cuda", "triton", "torch"} and ms == {}
    assert source.startswith("default preference (no run") and "varlen_attn" in source and "0.5-0.7x" in source
    order, source, _ = autotune._ranking(None, _key("add_layer_norm", "rows"), None, [])
    assert order == autotune.DEFAULT_ORDER["cuda"] and source == "default preference (no run)"
    order, _, _ = autotune._ranking(None, ("attention", "cpu", "float16", 64, None, layout, False, 128), None, [])
    assert order[0] == "sdpa"  # the CPU keeps its recorded table


def test_a_recorded_gpu_run_overrides_the_default():
    autotune.set_table([{"match": {"op": "attention", "device": "sm_90"}, "order": ["cuda", "sdpa", "torch"],
                         "source": "h100-test"}])
    order, source, _ = autotune._ranking(None, _key("attention", "padded"), None, [])
    assert order[0] == "cuda" and source == "table (run h100-test)"


def test_explain_names_the_reason_for_an_auto_call_on_a_gpu(monkeypatch):
    monkeypatch.setattr(autotune, "_device_name", lambda device: "sm_90")  # as if these CPU tensors were on an H100
    monkeypatch.setattr(autotune, "_table", [])  # no recorded run: the default decides
    q = torch.randn(2, 8, 2, 16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, backend="sdpa"), rtol=0, atol=0)
    x, w = torch.randn(3, 16), torch.randn(16)
    add_layer_norm(x, x, w, w)
    text = fastenc.explain()
    assert "op=attention|device=sm_90" in text and "-> sdpa (default preference (no run; sdpa first until a GPU run" \
        in text  # (the order shown is the candidates': no kernel backend takes these CPU tensors)
    assert "op=add_layer_norm|device=sm_90" in text and "(default preference (no run); order torch)" in text
