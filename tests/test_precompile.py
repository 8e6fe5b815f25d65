"""`fastenc precompile` on the CPU: it compiles a tiny model's kernels for sm_80 and sm_90a into the given Triton
cache, reports what it compiled, and a second run for the same target finds everything in the cache, also after the
cache was packed and moved as benchmarks/gpu_session.sh carries it.

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
from tests.helpers import compiler_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = {"_attention_fwd_kernel", "_embeddings_fwd_kernel", "_add_layer_norm_fwd_kernel"}
BWD_NAMES = {"_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel", "_embeddings_bwd_kernel"}


def test_precompile_both_targets_then_hits_the_cache(tmp_path):
    env = compiler_env(tmp_path)
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

    # the cache as gpu_session.sh carries it (binaries, metadata, groups only; moved to another folder) still hits
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


def test_report_writes_the_table_and_fails_on_what_issue_33_rules_out(tmp_path, monkeypatch, capsys):
    row = dict(kernel="_attention_fwd_kernel", layout="padded", dropout=False, dtype="fp16", d=64,
               config="128/64 w4 s3", regs=200, spill_bytes=0, shared=65536, target="sm_90a", seqlen=512,
               instructions=2000, hgmma=32, hmma=0, utmaldg=4, c7515=False, loop_instructions=560, loop_norm=280.0)
    rows = [row]
    monkeypatch.setattr(P, "attention_report", lambda target, dtypes, head_dims, seqlen: [dict(r) for r in rows])
    out = tmp_path / "r.md"
    assert P.main(["--target", "sm_90a", "--report", str(out)]) == 0
    text = out.read_text()
    assert "| fwd | padded | no | fp16 | 64 | 128/64 w4 s3 | 200 | 0 | 65536 | 2000 | 32 | 0 | 4 | no | 560 | 280.0 |" \
        in text
    assert "triton" in text.splitlines()[0]
    assert json.loads((tmp_path / "r.md.json").read_text()) == rows
    rows = [dict(row, c7515=True), dict(row, hmma=64, hgmma=0), dict(row, spill_bytes=16)]
    assert P.main(["--target", "sm_90a", "--report", str(out)]) == 1
    err = capsys.readouterr().err
    assert "C7515" in err and "HMMA" in err and "spills 16 B" in err
    assert P.report_problems([dict(row, target="sm_80", hmma=64)]) == []  # mma.sync is sm_80's tensor-core path


def test_sass_stats_finds_the_first_innermost_tensor_core_loop(monkeypatch):
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   NOP ;
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0030*/              @!P0 BRA 0x20 ;
        /*0040*/                   HGMMA.64x64x16.F32 R24, gdesc[UR4], RZ ;
        /*0050*/                   FFMA R3, R3, R4, R5 ;
        /*0060*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8], R24 ;
        /*0070*/               @P1 BRA 0x40 ;
        /*0080*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0090*/               @P1 BRA 0x80 ;
        /*0098*/                   UTMALDG.2D [UR4], [UR6] ;
        /*00a0*/                   EXIT ;
    """

    def fake_run(cmd, **kw):
        out = sass if "-sass" in cmd else ""
        err = "ptxas warning : (C7515) wgmma serialized" if "-v" in cmd else ""
        return subprocess.CompletedProcess(cmd, 0, out, err)

    monkeypatch.setattr(P.binaries, "_ptxas", lambda arch: "ptxas")
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(P.binaries, "_tool", lambda name: name)
    st = P.sass_stats(b"cubin", "ptx", 90, 4, 128 * 64)
    assert (st.instructions, st.hgmma, st.hmma, st.utmaldg, st.c7515) == (11, 2, 1, 1, True)
    assert st.loop_instructions == 4 and st.loop_norm == 4 * 4 * 1024 / (128 * 64)
