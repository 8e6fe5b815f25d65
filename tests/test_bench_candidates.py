"""The benchmark times every backend candidate of an op side by side (eager, sdpa / varlen_attn, the kernel
backends where they run) and turns the run into an auto table that fastenc.autotune reads."""

import json

from fastenc import autotune, backends
from fastenc.bench.cli import main as bench_main


def test_op_candidates_side_by_side_and_the_auto_table_of_the_run(tmp_path):
    out = tmp_path / "res"
    argv = ["--models", "none", "--ops", "attention,attention_packed,add_layer_norm", "--op-shapes", "var",
            "--var-batch", "3", "--op-modes", "fwd,fwd+bwd", "--rep-ms", "5", "--warmup-ms", "1", "--out", str(out),
            "--backends", "triton,sdpa,torch", "--no-progress"]
    assert bench_main(argv) == 0
    recs = json.loads((out / "results.json").read_text())["records"]
    seen = {(r["name"], r["mode"], r["variant"]): r for r in recs}
    for name in ("attention", "attention_packed"):
        for mode in ("fwd", "fwd+bwd"):
            for variant in ("eager", "sdpa"):
                r = seen[(name, mode, variant)]
                assert r["status"] == "ok" and r["ms"] > 0, r
            assert seen[(name, mode, "sdpa")]["speedup"]["eager"] > 0
    assert not any(r["name"] == "add_layer_norm" and r["variant"] == "sdpa" for r in recs)  # sdpa: attention only
    assert seen[("add_layer_norm", "fwd", "triton")]["status"] == "skipped"  # the interpreter is not timed
    table = out / "auto_table.json"
    entries = autotune.load_table(table)
    doc = json.loads(table.read_text())
    assert len(doc["runs"]) == 1 and all(e["source"] in doc["runs"] for e in entries)
    by_layout = {e["match"].get("layout"): e for e in entries if e["match"]["op"] == "attention"}
    assert set(by_layout) == {"padded", "packed"}
    for e in entries:
        assert e["mode"] == "fwd+bwd" and set(e["match"]) <= set(autotune.KEY_FIELDS)
        assert e["order"] == sorted(e["ms"], key=e["ms"].get) and set(e["order"]) <= set(backends.BACKENDS)
        assert e["match"]["device"] == "cpu" and e["match"]["dtype"] == "float32"
