"""The host path (issue 13): host reads per forward, the launch-stubbed host benchmark, and the CPU attention path.

Host reads are counted the way `fastenc bench --host` counts them (ops whose result the host must wait for on a
GPU). The CPU-only id-range check of the embeddings is told apart by where it comes from: on GPU tensors it is an
on-device assert, not a read.
"""

from __future__ import annotations

import json

import pytest
import torch

import fastenc
from fastenc.bench import host


def _reads(fn) -> list[str]:
    counts = host.Counts()
    with host._counting(counts):
        fn()
    return [op for op in counts.sync_ops if "ops/embeddings.py" not in op]  # CPU-only id check, see module doc


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = fastenc.BertModel(host.tiny_bert_config(2)).eval()
    x = host._inputs(2, 8, [8, 5], model.config.vocab_size)
    return model, x


@pytest.mark.parametrize("train", [False, True], ids=["forward", "forward+backward"])
def test_padded_path_reads_nothing_and_packed_path_reads_once(tiny, train):
    model, x = tiny
    model.train(train)
    try:
        with fastenc.use_backend("triton"):
            padded = _reads(host._step(model, x, train, False))
            packed = _reads(host._step(model, x, train, None))
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert padded == []
    assert len(packed) == 1 and "models/packing.py" in packed[0], packed


def test_labels_check_rides_on_the_one_read():
    """A token-classification loss with labels: its padded-position check is part of the layout read."""
    torch.manual_seed(0)
    config = host.tiny_bert_config(1)
    config.num_labels = 3
    model = fastenc.BertForTokenClassification(config).eval()
    x = host._inputs(2, 8, [8, 5], config.vocab_size)
    labels = torch.randint(0, 3, (2, 8)).masked_fill(x["attention_mask"] == 0, -100)
    with fastenc.use_backend("triton"), torch.no_grad():
        reads = _reads(lambda: model(**x, labels=labels))
    assert len(reads) == 1 and "models/packing.py" in reads[0], reads


def test_host_benchmark_counts_stubbed_launches(tmp_path):
    doc = host.host_overhead(reps=1, warmup=1, layers=2)
    records = {(r["layout"], r["mode"]): r for r in doc["records"]}
    assert set(records) == {(lay, mode) for lay in ("padded", "packed") for mode in ("forward", "forward+backward")}
    # forward: embeddings + per layer attention, bias_gelu and two add_layer_norm
    assert records["padded", "forward"]["counts"]["launches"] == 1 + 4 * 2
    assert records["packed", "forward"]["counts"]["launches"] == 1 + 4 * 2
    # backward adds embeddings 1, attention 3 (preprocess, dK/dV, dQ), bias_gelu 1, add_layer_norm 2 per layer
    assert records["padded", "forward+backward"]["counts"]["launches"] == (1 + 4 * 2) + (1 + 6 * 2)
    for r in records.values():
        assert r["host_ms"] > 0 and r["per_layer_ms"] == pytest.approx(r["host_ms"] / 2, rel=0.01)
        assert r["counts"]["torch_kernels"] > 0 and r["torch_kernel_ms"] > 0
        assert r["other_per_layer_ms"] == pytest.approx((r["host_ms"] - r["torch_kernel_ms"]) / 2, abs=1e-3)
    assert set(doc["transformers_other_per_layer_ms"]) == {"forward", "forward+backward"}
    assert all(v > 0 for v in doc["transformers_sdpa_ms"].values())
    text = host.render({"host": doc})
    assert "| padded | forward |" in text and "| packed | forward+backward |" in text
    (tmp_path / "h.json").write_text(json.dumps(doc))  # serialisable as `fastenc bench --host` writes it


def test_bench_cli_host_mode(tmp_path, monkeypatch):
    from fastenc.bench.cli import main

    full = host.host_overhead
    monkeypatch.setattr(host, "host_overhead", lambda reps: full(reps=1, warmup=0, layers=1))
    assert main(["--host", "--no-cpu-path", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "host.json").read_text())
    assert doc["host"]["layers"] == 1 and "cpu" not in doc
    assert "Host time" in (tmp_path / "host.md").read_text()


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_sdpa_packed_cpu_runs_each_sequence_alone(dropout_p):
    """The CPU packed layout of backend sdpa: one SDPA per sequence equals the reference (and, with dropout, keeps
    each sequence apart: gradients of one sequence never reach another's tokens)."""
    g = torch.Generator().manual_seed(0)
    lens = [5, 1, 7, 3]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), 2, 8, generator=g, requires_grad=True) for _ in range(3))
    out = fastenc.ops.attention(q, k, v, cu_seqlens=cu, max_seqlen=7, dropout_p=dropout_p, backend="sdpa")
    if dropout_p == 0:
        ref = fastenc.ops.attention(q, k, v, cu_seqlens=cu, max_seqlen=7, backend="torch")
        torch.testing.assert_close(out, ref)
    out[:5].sum().backward()  # the first sequence only
    assert q.grad[5:].abs().max() == 0 and k.grad[5:].abs().max() == 0 and v.grad[5:].abs().max() == 0
    assert q.grad[:5].abs().max() > 0


def test_cpu_path_comparison_runs_on_a_tiny_model():
    config = host.tiny_bert_config(2)
    doc = host.cpu_path(reps=1, warmup=0, config=config, shape=(3, 16), min_len=4)
    cases = {c["case"]: c for c in doc["cases"]}
    assert set(cases) == {"fixed", "padded"} and cases["fixed"]["lengths"] == [16] * 3
    for c in cases.values():
        assert c["transformers_sdpa_ms"] > 0 and c["fastenc_ms"] > 0 and c["fastenc_torch_kernels"] > 0


def test_replay_runs_the_recorded_kernels_alone():
    """The torch-kernel share of the host figure is the recorded kernels replayed: the same ops, same count."""
    torch.manual_seed(0)
    model = fastenc.BertModel(host.tiny_bert_config(1)).train()
    x = host._inputs(2, 8, [8, 5], model.config.vocab_size)
    counts, calls = host.Counts(), []
    with fastenc.use_backend("triton"), host._counting(counts, calls):
        host._step(model, x, True, None)()
    assert len(calls) == counts.torch_kernels > 10
    replayed = host.Counts()
    with host._counting(replayed):
        host._replay(calls)
    assert replayed.torch_kernels == counts.torch_kernels
    assert {c[0] for c in calls} >= {torch.ops.aten.mm.default}  # the matmuls and their backward are in
