"""`fastenc precompile` on the CPU: it compiles a tiny model's kernels for sm_80 and sm_90a into the given Triton
cache, reports what it compiled, and a second run for the same target finds everything in the cache, also after the
cache was packed and moved as benchmarks/run_gpu.sh carries it.

Runs in a subprocess without TRITON_INTERPRET (the compiler, not the interpreter), one process for all calls.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from fastenc import precompile as P

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = {"_attention_fwd_kernel", "_embeddings_fwd_kernel", "_add_layer_norm_fwd_kernel"}
BWD_NAMES = {"_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel", "_embeddings_bwd_kernel"}


def test_precompile_both_targets_then_hits_the_cache(tmp_path):
    triton_backends = pytest.importorskip("triton.backends")
    if "nvidia" not in triton_backends.backends:
        pytest.skip("triton has no nvidia backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    common = ["--model", "bert-tiny", "--dtypes", "fp16", "--shapes", "2x16"]
    calls = [["precompile", "--target", "sm_80", "--modes", "infer", *common],
             ["precompile", "--target", "sm_90a", "--modes", "train", *common],
             ["precompile", "--target", "sm_90a", "--modes", "train", *common]]
    code = (
        "from fastenc.__main__ import main\n"
        f"for i, argv in enumerate({calls!r}):\n"
        f"    assert main(argv + ['--json', r'{tmp_path}/r%d.json' % i]) == 0\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    (infer80,), (train90,), (again90,) = (json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(3))
    assert infer80["target"] == "sm_80" and train90["target"] == "sm_90a"
    assert infer80["cache_dir"] == str(tmp_path / "cache")
    for r in (infer80, train90):
        names = {k["name"] for k in r["kernels"]}
        assert NAMES <= names, names
        assert r["compiled"] >= len(names) and r["cpu_s"] > 0
        assert all(k["regs"] > 0 for k in r["kernels"])  # every binary fits the target's shared memory
    assert BWD_NAMES <= {k["name"] for k in train90["kernels"]}
    assert not BWD_NAMES & {k["name"] for k in infer80["kernels"]}
    # the same target again: every kernel comes from the cache, none is compiled
    assert again90["compiled"] == 0 and len(again90["kernels"]) == len(train90["kernels"])
    assert "sm_80" in run.stdout and "kernels compiled" in run.stdout
    fp = train90["fingerprint"]
    assert set(fp) == {"triton", "triton_key", "python", "kernels"} and fp == P.cache_fingerprint()

    # the cache as run_gpu.sh carries it (binaries, metadata, groups only; moved to another folder) still hits
    from benchmarks import gpu_kit

    gpu_kit.pack_cache(tmp_path / "cache", tmp_path / "triton-cache.tar.gz", 2**30)
    gpu_kit.unpack_cache(tmp_path / "triton-cache.tar.gz", tmp_path / "carried")
    assert gpu_kit.cache_matches(tmp_path / "carried")[0]
    env["TRITON_CACHE_DIR"] = str(tmp_path / "carried")
    argv = [*calls[1], "--json", str(tmp_path / "carried.json")]
    run = subprocess.run([sys.executable, "-m", "fastenc", *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    (carried,) = json.loads((tmp_path / "carried.json").read_text())
    assert carried["compiled"] == 0 and len(carried["kernels"]) == len(train90["kernels"])


def test_precompile_refuses_bad_arguments_and_the_interpreter(capsys):
    with pytest.raises(ValueError, match="target"):
        P.precompile("sm_75")
    with pytest.raises(ValueError, match="mode"):
        P.precompile("sm_80", modes=["serve"])
    with pytest.raises(ValueError, match="dtype"):
        P.precompile("sm_80", dtypes=["fp8"])
    with pytest.raises(ValueError, match="shape"):
        P.precompile("sm_80", shapes=["32by128"])
    with pytest.raises(ValueError, match="layers"):
        P.precompile("sm_80", layers=0)
    with pytest.raises(ValueError, match="head_dim"):
        P.compile_attention("sm_80", "fp16", 256, False, False, 16)
    assert os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        P.precompile("sm_80", model="bert-tiny", shapes=["1x8"])
    assert P.main(["--target", "sm_75"]) == 2
    assert "unknown target 'sm_75'" in capsys.readouterr().err
