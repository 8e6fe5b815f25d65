"""The benchmark harness: FLOP counts against hand counts, timing helpers, shapes, and `fastenc bench` end to end on
the CPU (tiny BERT) writing well-formed JSON and Markdown."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time

import pytest
import torch

import fastenc
from fastenc.bench import cases, flops, timing
from fastenc.bench.cli import main as bench_main

transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------------------------------
# FLOP counts: the harness builds a list of matmuls; the tests use the closed forms per layer.


def test_bert_base_flops_match_hand_count():
    cfg = transformers.BertConfig()  # h 768, 12 layers, 12 heads, intermediate 3072, vocab 30522
    b, s, h, layers, vocab = 8, 128, 768, 12, 30522
    per_layer = 24 * b * s * h**2 + 4 * b * s**2 * h  # 4 h x h projections + 2 h x 4h FFN, then QK^T and PV
    pooler = 2 * b * h * h
    assert flops.encoder_flops(cfg, [s] * b) == layers * per_layer + pooler
    assert flops.encoder_flops(cfg, [s] * b) == pytest.approx(179e9, rel=0.01)  # ~22.4 GFLOP per 128-token sequence
    mlm = 2 * b * s * h * h + 2 * b * s * h * vocab
    assert flops.encoder_flops(cfg, [s] * b, pooler=False, mlm_head=True) == layers * per_layer + mlm
    assert flops.encoder_flops(cfg, [s] * b, pooler=False, mlm_head=True, training=True) == 3 * (
        layers * per_layer + mlm)


def test_flops_use_each_sequence_length():
    cfg = transformers.BertConfig()
    h, lens = 768, [5, 9, 130]
    per_layer = 24 * sum(lens) * h**2 + 4 * sum(n * n for n in lens) * h
    assert flops.encoder_flops(cfg, lens, pooler=False) == 12 * per_layer


def test_albert_flops_count_the_embedding_projection():
    cfg = cases.model_config("albert-base")
    t, h, e = 2 * 64, 768, 128
    per_layer = 24 * t * h**2 + 4 * 2 * 64**2 * h
    assert flops.encoder_flops(cfg, [64, 64]) == 2 * t * e * h + 12 * per_layer + 2 * 2 * h * h
    head = 2 * t * h * e + 2 * t * e * cfg.vocab_size  # dense to the embedding size, then the decoder
    assert flops.encoder_flops(cfg, [64, 64], pooler=False, mlm_head=True) == 2 * t * e * h + 12 * per_layer + head


def test_gated_mlp_flops_count_both_input_projections():
    cfg = cases.model_config("nomic-embed")
    h, lens = 768, [5, 9, 130]
    per_layer = (24 + 8) * sum(lens) * h**2 + 4 * sum(n * n for n in lens) * h  # gate_proj and up_proj: 4h wide each
    assert flops.encoder_flops(cfg, lens, pooler=cases.has_pooler(cfg, False)) == 12 * per_layer
def test_modernbert_flops_count_the_gate_and_only_pairs_inside_local_windows():
    cfg = cases.model_config("modernbert-base")
    assert cfg.sliding_window == 64 and cfg.layer_types.count("sliding_attention") == 14
    h, inter, s = 768, 1152, 200
    dense = 2 * s * (4 * h * h + 3 * inter * h)  # q, k, v, out; Wi (input and gate) and Wo
    pairs = sum(min(i + 64, s - 1) - max(i - 64, 0) + 1 for i in range(s))
    assert pairs == s * 129 - 2 * sum(range(1, 65))  # rows near the ends see fewer keys
    full, local = 4 * s * s * h, 4 * pairs * h
    assert not cases.has_pooler(cfg, mlm_head=False)
    assert flops.encoder_flops(cfg, [s], pooler=False) == 22 * dense + 8 * full + 14 * local


def test_attention_flops():
    assert flops.attention_flops([128, 64], heads=12, head_dim=64) == 4 * 12 * 64 * (128**2 + 64**2)
    assert flops.attention_flops([128], 12, 64, backward=True) == 3.5 * 4 * 12 * 64 * 128**2


def test_flops_reject_bad_lengths():
    with pytest.raises(ValueError, match="seq_lens"):
        flops.encoder_flops(transformers.BertConfig(), [])
    with pytest.raises(ValueError, match="seq_lens"):
        flops.encoder_flops(transformers.BertConfig(), [4, 0])


# ---------------------------------------------------------------------------------------------------------------
# Timing helpers


def test_time_cpu_measures_a_known_delay():
    t = timing.time_cpu([lambda: time.sleep(0.002)] * 2, warmup_ms=1, rep_ms=30, min_runs=5)
    assert t.runs >= 5
    assert 1.9 <= t.median_ms < 50
    assert t.p20_ms <= t.median_ms <= t.p80_ms


def test_time_cpu_cycles_through_copies():
    seen = []
    timing.time_cpu([lambda: seen.append(0), lambda: seen.append(1), lambda: seen.append(2)], warmup_ms=0,
                    rep_ms=1, min_runs=6, max_runs=6)
    assert seen[-6:] == [0, 1, 2, 0, 1, 2]


def test_timing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="calls"):
        timing.time_cpu([])
    with pytest.raises(ValueError, match="rep_ms"):
        timing.time_cpu([lambda: None], rep_ms=0)
    with pytest.raises(ValueError, match="bytes_per_copy"):
        timing.copies_for(0, torch.device("cpu"))
    assert timing.copies_for(1000, torch.device("cpu")) == 1


@pytest.mark.gpu
def test_time_cuda_and_roofs():
    dev = torch.device("cuda")
    a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
    small = timing.time_cuda([lambda: a @ a], rep_ms=20)
    a2 = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    big = timing.time_cuda([lambda: a2 @ a2], rep_ms=20)
    assert 0 < small.median_ms < big.median_ms  # 8x the work takes longer
    assert timing.copies_for(2**20, dev) > 1  # 1 MiB inputs fit in L2: rotate
    peak, bw = timing.matmul_peak_tflops(dev, n=4096), timing.copy_bandwidth_gbps(dev, nbytes=2**28)
    assert 1 < peak < 5000 and 50 < bw < 20000


# ---------------------------------------------------------------------------------------------------------------
# Shapes and inputs


def test_shapes():
    s = cases.parse_shape("32x128")
    assert (s.batch, s.seq, s.tokens, s.padded) == (32, 128, 4096, False)
    var = cases.parse_shape("var")
    assert var == cases.parse_shape("var") and var.batch == 32 and len(var.lengths) == 32
    assert all(16 <= n <= 512 for n in var.lengths) and var.seq == max(var.lengths) and var.padded
    assert len(set(var.lengths)) > 10
    for bad in ("32", "0x4", "ax4", "4x4x4"):
        with pytest.raises(ValueError, match="shape"):
            cases.parse_shape(bad)


def test_model_inputs_mask_and_labels():
    cfg = cases.model_config("bert-tiny")
    shape = cases.parse_shape("var", var_batch=4, var_range=(3, 20))
    x = cases.model_inputs(cfg, shape, torch.device("cpu"), mlm_labels=True)
    assert x["attention_mask"].sum(1).tolist() == list(shape.lengths)
    assert ((x["labels"] != -100) <= (x["attention_mask"] == 1)).all()
    assert (x["labels"] != -100).any(1).all()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        cases.model_inputs(cfg, cases.parse_shape("1x512"), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------------
# The CLI end to end on the CPU


def _check_records(doc: dict) -> None:
    meta = doc["meta"]
    for key in ("device", "torch", "triton", "transformers", "fastenc", "git_commit", "date"):
        assert key in meta
    assert meta["torch"] == torch.__version__ and meta["fastenc"] == fastenc.__version__
    assert math.isfinite(doc["roofs"]["matmul_tflops"]) and doc["roofs"]["matmul_tflops"] > 0
    assert math.isfinite(doc["roofs"]["copy_gbps"]) and doc["roofs"]["copy_gbps"] > 0
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    assert ok
    for r in ok:
        for key in ("ms", "ms_p20", "ms_p80", "tokens_per_s", "first_call_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["ms_p20"] <= r["ms"] <= r["ms_p80"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["ms"] * 1e3)
        if r["kind"] == "model":
            assert r["tflops"] > 0 and 0 < r["mfu"] and math.isfinite(r["mfu"])
        for s in r.get("speedup", {}).values():
            assert math.isfinite(s) and s > 0
    for r in doc["records"]:
        if r["status"] != "ok":
            assert r["reason"]


def test_cli_cpu_demo_writes_results(tmp_path, capsys):
    out = tmp_path / "res"
    assert bench_main(["--quick", "--ops", "add_layer_norm,attention", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "speed needs a GPU" in printed
    doc = json.loads((out / "results.json").read_text())
    _check_records(doc)
    recs = doc["records"]
    infer = {(r["shape"], r["variant"]) for r in recs if r["kind"] == "model" and r["mode"] == "infer"}
    assert {("1x16", "hf-eager"), ("1x16", "hf-sdpa"), ("var", "hf-eager"), ("var", "hf-sdpa")} <= infer
    assert any(r["mode"] == "train" and r["status"] == "ok" for r in recs)
    assert {r["name"] for r in recs if r["kind"] == "op" and r["status"] == "ok"} == {"add_layer_norm", "attention"}
    ref = [r for r in recs if r["variant"] == "fastenc-torch"]
    assert ref
    if hasattr(fastenc, "from_hf"):
        assert all(r["status"] == "ok" and "hf-sdpa" in r["speedup"] for r in ref), ref
        assert all(r["max_abs_diff"] < 1e-4 for r in ref if r["mode"] == "infer")  # fp32: the same numbers
    else:
        assert all(r["status"] == "skipped" and "from_hf" in r["reason"] for r in ref)
    md = (out / "results.md").read_text()
    assert "## Models" in md and "## Ops" in md and doc["meta"]["device"] in md
    table_rows = [line for line in md.splitlines() if line.startswith("| bert-tiny |")]
    assert len(table_rows) == sum(r["kind"] == "model" and r["status"] == "ok" for r in recs)
    assert "| bert-tiny | fp32 | var | infer | hf-sdpa |" in md


def test_cli_speedups_and_plots_with_a_stand_in_twin(tmp_path, monkeypatch):
    """The reporting side of fastenc's rows, independent of fastenc.models: a deep copy of the transformers model
    stands in for the twin, so its speedups must be finite and near 1 and the plot must be written."""
    monkeypatch.setattr(fastenc, "from_hf", copy.deepcopy, raising=False)
    out = tmp_path / "res"
    assert bench_main(["--models", "bert-tiny", "--shapes", "8x32", "--no-train", "--ops", "none", "--out", str(out),
                       "--no-progress", "--rep-ms", "40"]) == 0
    doc = json.loads((out / "results.json").read_text())
    _check_records(doc)
    twin = [r for r in doc["records"] if r["variant"] == "fastenc-torch"]
    assert len(twin) == 1 and twin[0]["status"] == "ok"
    assert set(twin[0]["speedup"]) == {"hf-eager", "hf-sdpa"}
    assert 0.1 < twin[0]["speedup"]["hf-sdpa"] < 10
    pytest.importorskip("matplotlib")
    png = out / "speedup_bert-tiny.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_fails_when_a_fastenc_variant_fails_everywhere(tmp_path, monkeypatch, capsys):
    """A fastenc variant that errors in every case makes `fastenc bench` exit non-zero and say so before the table;
    the results are still written."""

    def broken(model):
        raise TypeError("_Embeddings.forward() got an unexpected keyword argument 'cache_length'")

    monkeypatch.setattr(fastenc, "from_hf", broken, raising=False)
    out = tmp_path / "res"
    assert bench_main(["--models", "bert-tiny", "--shapes", "8x32,1x16", "--no-train", "--ops", "none",
                       "--out", str(out), "--no-progress", "--rep-ms", "10"]) == 1
    text = capsys.readouterr().out
    first = text.index("FAILED: model variant 'fastenc-torch' failed in all 2 cases")
    assert "cache_length" in text[first:].splitlines()[0]
    assert first < text.index("hf-sdpa ms") and "exit status 1" in text
    assert (out / "results.json").exists()


@pytest.mark.gpu
def test_cli_on_gpu_tiny_model(tmp_path):
    """The GPU path end to end on a tiny model: CUDA-event timing, roofs, every available backend, compile baseline,
    peak memory, and fastenc's output agreeing with transformers."""
    out = tmp_path / "res"
    assert bench_main(["--models", "bert-tiny", "--shapes", "2x64", "--train-shapes", "2x64", "--dtypes", "fp16",
                       "--ops", "add_layer_norm,attention", "--op-shapes", "2x64", "--rep-ms", "10",
                       "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    _check_records(doc)
    assert doc["meta"]["device_type"] == "cuda" and doc["roofs"]["copy_gbps"] > 50
    for r in doc["records"]:
        if r["status"] == "ok":
            assert r["peak_mem_mib"] > 0
        if r["variant"].startswith("fastenc-") and r["status"] == "ok" and r["mode"] == "infer":
            assert r["max_abs_diff"] < 0.05, r
    measured = {r["variant"] for r in doc["records"] if r["status"] == "ok"}
    for b in ("triton", "cuda"):
        if fastenc.backends.unavailable_reason(b) is None:
            assert f"fastenc-{b}" in measured and b in measured


def test_cli_rejects_bad_options(tmp_path):
    for argv, word in ((["--models", "bert-huge"], "bert-huge"), (["--dtypes", "fp8"], "fp8"),
                       (["--shapes", "12"], "shape"), (["--ops", "softmax"], "softmax")):
        with pytest.raises(SystemExit, match=word):
            bench_main([*argv, "--out", str(tmp_path)])


def test_fastenc_main_dispatches(tmp_path, capsys):
    from fastenc.__main__ import main

    assert main(["bench", "--models", "bert-tiny", "--shapes", "1x16", "--no-train", "--ops", "none", "--device", "cpu",
                 "--rep-ms", "10", "--out", str(tmp_path)]) == 0
    assert "bert-tiny" in capsys.readouterr().out and (tmp_path / "results.json").exists()
    assert main(["frobnicate"]) == 2 and main([]) == 2 and main(["--help"]) == 0


def test_python_m_fastenc_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fastenc", "bench", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--models" in proc.stdout and "--no-train" in proc.stdout
