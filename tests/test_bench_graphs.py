"""`fastenc bench`'s CUDA-graph variants: "fastenc-<backend>+graphs" at the inference shapes of graph_shapes (the
twin replayed through fastenc.cuda_graphs), skipped with the reason off a GPU, timed and checked against
transformers on one."""

from __future__ import annotations

import json

import pytest
import torch

from fastenc.bench import runner
from fastenc.bench.cli import main as bench_main


def test_graph_variants_only_at_the_graph_shapes_for_inference():
    s = runner.Settings(device=torch.device("cuda"), backends=["triton", "cuda"], graph_shapes=["1x16"])
    base = ["hf-eager", "hf-sdpa", "hf-compile", "fastenc-triton", "fastenc-cuda"]
    assert runner.model_variants(s, "1x16") == [*base, "fastenc-triton+graphs", "fastenc-cuda+graphs"]
    assert runner.model_variants(s, "32x128") == base == runner.model_variants(s)
    assert runner.model_variants(s, "1x16", train=True) == base
    assert runner.Settings.cpu_demo_settings(torch.device("cpu")).graph_shapes == []
    assert runner._backend_of("fastenc-cuda+graphs") == runner._backend_of("fastenc-cuda") == "cuda"


def test_graph_variant_off_a_gpu_is_skipped_with_its_reason():
    settings = runner.Settings.cpu_demo_settings(torch.device("cpu"))
    ms = runner.ModelSet(hf=torch.nn.Linear(2, 2), twins={"torch": torch.nn.Linear(2, 2)})
    shape = settings.shape("1x16")
    rec = runner.run_model_case(ms, "bert-tiny", shape, "fp32", False, "fastenc-torch+graphs", settings, {})
    assert rec["status"] == "skipped" and rec["reason"] == "CUDA graphs need a CUDA device"
    assert rec["variant"] == "fastenc-torch+graphs" and not ms.graphs


@pytest.mark.gpu
def test_cli_times_graph_variants_on_gpu(tmp_path):
    out = tmp_path / "res"
    assert bench_main(["--models", "bert-tiny", "--shapes", "1x16,2x64", "--graph-shapes", "1x16", "--no-train",
                       "--dtypes", "fp16", "--backends", "triton", "--ops", "none", "--no-compile", "--rep-ms", "10",
                       "--out", str(out), "--no-progress"]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    graphs = [r for r in records if r["variant"].endswith("+graphs")]
    assert [(r["shape"], r["variant"]) for r in graphs] == [("1x16", "fastenc-triton+graphs")]
    assert graphs[0]["status"] == "ok", graphs[0]
    assert graphs[0]["ms"] > 0 and graphs[0]["max_abs_diff"] < 0.05 and "hf-eager" in graphs[0]["speedup"]
