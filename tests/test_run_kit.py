"""The GPU session kit on the CPU: benchmarks/gpu_session.sh end to end without a GPU (every GPU phase skipped with
its reason, the $OUT contract) and its dry run (every phase within 520 s), the GPU test selection and the sanitizer
workload of benchmarks/gpu_checks.py, and the artefact checks of benchmarks/gpu_kit.py (prebuilt extension manifest,
Triton cache packing, fingerprint and relocation, merged results)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_checks
from benchmarks import gpu_kit as K
from fastenc.precompile import cache_fingerprint

SCRIPT = K.ROOT / "benchmarks" / "gpu_session.sh"
OUT_LIMITS = dict(files=8, bytes=16 * 2**20, depth=3)  # the device returns $OUT/a/b/file at most


def _session(tmp_path, *args: str, session_s: int = 520, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(tmp_path / "out"), TRITON_CACHE_DIR=str(tmp_path / "cache"), SESSION_S=str(session_s),
               PYTHON=sys.executable, GPU_ARTIFACTS=str(tmp_path / "artifacts"), CUDA_VISIBLE_DEVICES="",
               GPU_SESSION_WORK=str(tmp_path / "work"))
    env.update(extra_env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def _check_out_contract(out) -> list:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= OUT_LIMITS["files"], files
    for p in files:
        rel = p.relative_to(out)
        assert p.stat().st_size < OUT_LIMITS["bytes"] and len(rel.parts) <= OUT_LIMITS["depth"], rel
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name), rel
    return files


def test_dry_run_plans_every_phase_within_the_session():
    for session_s in (520, 400):
        run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "SESSION_S": str(session_s), "PYTHON": sys.executable,
                                  "GPU_ARTIFACTS": "/nonexistent"})
        assert run.returncode == 0, run.stderr[-3000:]
        phases = re.findall(r"^phase (\S+): cap (\d+) s: ", run.stdout, re.M)
        names = [p for p, _ in phases]
        assert names[:3] == ["facts", "extension", "checks"] and names[-1] == "pack", run.stdout
        assert "bench" in names and "no prebuilt extension" in run.stdout  # no artifacts: the plan builds
        total = int(re.search(r"^total planned: (\d+) s$", run.stdout.splitlines()[-1]).group(1))
        assert total == sum(int(c) for _, c in phases) and total <= session_s
        assert "--timeout-method=thread" in run.stdout and "memcheck" in run.stdout and "racecheck" in run.stdout
        if session_s == 520:  # even with a build, the checks keep most of their time; the compile baseline goes
            assert int(dict(phases)["checks"]) >= 180 and "compile" not in names


def test_session_without_a_gpu_skips_every_gpu_phase_and_keeps_the_out_contract(tmp_path):
    link = K.ROOT / "fastenc" / "kernels"
    linked = os.path.lexists(link)
    run = _session(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert os.path.lexists(link) == linked  # the fastenc.kernels link it may make does not outlive it
    out = tmp_path / "out"
    _check_out_contract(out)
    log = (out / "session.log").read_text()
    assert re.search(r"^python 3\.\d+\S* torch ", log, re.M)  # the versions were recorded
    for phase in ("extension", "tests", "sanitizer", "bench", "compile"):
        assert re.search(rf"^=== phase {phase}: skipped: no CUDA device: none \(torch.cuda.is_available", log, re.M), \
            (phase, log)
    assert "=== phase pack: done" in log and "no benchmark results" in (out / "results.md").read_text()
    assert re.search(r"gpu_session.sh: \d+s of 520s", run.stdout)


STAND_IN_PYTHON = r"""#!/usr/bin/env bash
# A stand-in for the GPU machine's python: the GPU work answers at once, the kit's own tools (gpu_kit) really run.
echo "$*" >>"$CALLS"
case "$1 $2" in
    "-m pytest") echo "3 passed, 1 skipped in 0.5s"; exit 0 ;;
    "-m benchmarks.gpu_checks") echo "sanitizer workload: 0 failed"; exit 0 ;;
    "-m fastenc")
        out=$(echo "$*" | sed -n 's/.*--out \([^ ]*\).*/\1/p')
        variant=$([[ "$*" == *" --compile "* ]] && echo compile || echo triton)
        exec "$REAL" "$STAND_IN_DIR/results.py" "$out" "$variant" ;;
esac
case "$1" in
    -) cat >/dev/null; echo "python 3.12.3 torch 2.11.0+cu130 (stand-in)"; echo "GPU Stand-in H100: capability 9.0" ;;
    -c) echo "stand-in: $2" ;;
    setup.py) echo "stand-in build" ;;
    *) exec "$REAL" "$@" ;;
esac
"""
STAND_IN_RESULTS = """import json, sys
from pathlib import Path
from fastenc.bench import cases as C, report, runner
out, variant = Path(sys.argv[1]), sys.argv[2]
out.mkdir(parents=True)
meta = {"device": "stand-in", "device_type": "cuda", "cuda": "13.0", "torch": "t", "triton": "t", "transformers": "t",
        "fastenc": "t", "python": "3", "git_commit": None, "date": "2026-12-06", "elapsed_s": 1.0}
recs = [{**runner.new_record("op", "bias_gelu", "fp16", C.parse_shape("4x8"), "fwd", v), "ms": ms}
        for v, ms in (("eager", 2.0), (variant, 1.0))]
runner.add_speedups(recs)
report.write_json({"meta": meta, "roofs": {"matmul_tflops": 1.0, "matmul_dtype": "fp16", "copy_gbps": 1.0},
                  "settings": {"op_dims": {"hidden": 8, "heads": 2, "inter": 16}}, "records": recs,
                  "summary": {"interrupted": False, "over_budget": []}}, out / "results.json")
"""


STAND_IN_SANITIZER = """#!/usr/bin/env bash
echo "$*" >>"$CALLS"
[[ "$*" == *racecheck* ]] && { echo '========= ERROR SUMMARY: 1 error'; exit 1; }
echo '========= ERROR SUMMARY: 0 errors'
"""


def test_session_phases_in_order_with_a_stand_in_gpu(tmp_path):
    """Every GPU phase's orchestration on the CPU: a stand-in python answers the GPU work (tests, sanitizer, bench)
    and a stand-in compute-sanitizer finds a race; the carried cache, the merge and the packing really run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python", STAND_IN_PYTHON), ("results.py", STAND_IN_RESULTS),
                       ("compute-sanitizer", STAND_IN_SANITIZER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    _fake_cache(tmp_path / "carried-cache")  # what make_gpu_artifacts.sh packs, carried in build/gpu-artifacts
    (tmp_path / "artifacts").mkdir()
    assert K.pack_cache(tmp_path / "carried-cache", tmp_path / "artifacts" / "triton-cache.tar.gz", 2**20)[0] == 4
    calls = tmp_path / "calls.log"
    run = _session(tmp_path, extra_env={"PYTHON": str(bin_dir / "python"), "REAL": sys.executable,
                                        "STAND_IN_DIR": str(bin_dir), "CALLS": str(calls),
                                        "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # the race fails the session, at the end
    out = tmp_path / "out"
    files = {p.name for p in _check_out_contract(out)}
    assert files == {"session.log", "tests.log", "sanitizer.log", "bench.log", "results.json", "results.md",
                     "results-extra.tar.gz", "triton-cache.tar.gz"}
    log = (out / "session.log").read_text()
    statuses = re.findall(r"^=== phase (\S+): (.*) \(at \d+s\)$", log, re.M)
    assert [p for p, _ in statuses] == ["facts", "extension", "tests", "sanitizer", "bench", "compile", "pack"], log
    st = dict(statuses)
    assert st["extension"] == "build: pass" and st["tests"] == "pass; 3 passed, 1 skipped in 0.5s"
    assert st["sanitizer"] == ("warm-up: pass;memcheck: pass;racecheck (cuda attention): fail (exit 1); 1 runs with "
                               "errors")
    assert st["bench"] == st["compile"] == "pass" and "Triton cache" in log and "1 kernels at start" in log
    merged = {r["variant"] for r in json.loads((out / "results.json").read_text())["records"]}
    assert merged == {"eager", "triton", "compile"}  # the compile run's records merged into the first
    made = calls.read_text()
    assert "--timeout-method=thread" in made and "-p benchmarks.gpu_checks" in made and "--no-compile" in made
    assert re.search(r"--tool memcheck .*sanitize", made) and re.search(r"--tool racecheck .*--backends cuda", made)
    assert K.unpack_cache(out / "triton-cache.tar.gz", tmp_path / "back") == 5  # the carried kernel comes back


def test_gpu_test_selection_takes_the_ops_tests_and_the_gpu_marked_ones():
    sel = gpu_checks.gpu_selected
    assert sel("tests/ops/test_bias_gelu.py::test_matches_ref[triton-fp16]", False)  # the triton backend: unmarked
    assert sel("tests/test_cuda_graphs.py::test_graphs_replay_and_shape_changes[fastenc.optimize]", True)
    assert not sel("tests/test_backends.py::test_unknown_backend_name_is_rejected", False)
    assert not sel("tests/ops/test_attention_emulation.py::test_x[1]", False)
    assert not sel("tests/ops/test_attention.py::test_kernels_compile_for_ampere_and_hopper", False)
    assert sel("tests/ops/test_attention.py::test_kernels_compile_for_ampere_and_hopper_x", False)  # a prefix only
    for path in gpu_checks.CPU_ONLY:  # each exclusion still names something that exists
        file, _, name = path.partition("::")
        assert (K.ROOT / file).exists() and (not name or f"def {name}(" in (K.ROOT / file).read_text()), path


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_sanitizer_workload_runs_and_checks_against_the_reference(layout):
    cpu = torch.device("cpu")
    line = gpu_checks.run_attention("torch", torch.float32, 32, layout, 0.0, cpu)
    assert line.startswith(f"attention torch float32 d=32 {layout} p=0.0: ok (max error")
    assert gpu_checks.run_attention("sdpa", torch.float32, 64, layout, 0.1, cpu).endswith("ok (max error nan)")
    cases = gpu_checks._attention_cases([torch.float16, torch.bfloat16])
    assert {(c[0], c[2], c[3] > 0) for c in cases} == {(d, lay, p) for d in (torch.float16, torch.bfloat16)
                                                      for lay in ("padded", "packed") for p in (False, True)}
    assert {c[1] for c in cases} == {32, 64, 128}


def test_sanitizer_model_step_runs():
    line = gpu_checks.run_model("torch", torch.bfloat16, torch.device("cpu"))
    assert line.startswith("model bert-1-layer torch bfloat16: ok (loss ")


def test_sanitize_counts_failures_and_skips_unavailable_backends(monkeypatch):
    lines = []
    monkeypatch.setattr(gpu_checks, "run_attention", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    monkeypatch.setattr(gpu_checks, "run_model", lambda *a, **k: "model ok")
    n = gpu_checks.sanitize(["torch", "cuda"], [torch.float16], torch.device("cpu"), log=lines.append)
    assert n == len(gpu_checks._attention_cases([torch.float16])) and lines.count("model ok") == 1
    assert any(line.startswith("cuda: skipped:") for line in lines) or torch.cuda.is_available()


def _prebuilt(tmp_path, **overrides):
    d = tmp_path / "prebuilt"
    d.mkdir()
    manifest = {"torch": torch.__version__, "python": K.python_tag(), "sources": K.sources_hash(), "archs": "90a"}
    (d / K.MANIFEST).write_text(json.dumps({**manifest, **overrides}))
    (d / "_C.cpython-312-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    return d


def test_prebuilt_extension_matches_only_its_torch_python_and_sources(tmp_path):
    ok, why = K.ext_matches(tmp_path / "missing")
    assert not ok and "manifest.json missing" in why
    ok, why = K.ext_matches(_prebuilt(tmp_path))
    assert ok, why
    for key, value in (("torch", f"{torch.__version__}.not-this-one"), ("python", "2.7"), ("sources", "0" * 16)):
        (tmp_path / "prebuilt" / K.MANIFEST).unlink()
        (tmp_path / "prebuilt" / "_C.cpython-312-x86_64-linux-gnu.so").unlink()
        (tmp_path / "prebuilt").rmdir()
        ok, why = K.ext_matches(_prebuilt(tmp_path, **{key: value}))
        assert not ok and f"{key}: built for {value}" in why


def test_sources_hash_follows_csrc(tmp_path):
    for name in ("csrc", "setup.py"):
        src = K.ROOT / name
        if src.is_dir():
            (tmp_path / name).mkdir()
            for f in src.glob("*"):
                (tmp_path / name / f.name).write_bytes(f.read_bytes())
        else:
            (tmp_path / name).write_bytes(src.read_bytes())
    assert K.sources_hash(tmp_path) == K.sources_hash()
    (tmp_path / "csrc" / "attention.cu").write_text("// changed\n")
    assert K.sources_hash(tmp_path) != K.sources_hash()


def _fake_cache(root, key="ABC", name="_k", tune=True):
    d = root / key
    d.mkdir(parents=True)
    files = {}
    for ext in (".cubin", ".json", ".llir", ".ptx"):
        (d / f"{name}{ext}").write_bytes(os.urandom(64))
        files[f"{name}{ext}"] = str(d / f"{name}{ext}")
    (d / f"__grp__{name}.json").write_text(json.dumps({"child_paths": files}))
    if not tune:
        return d
    (root / "TUNE").mkdir()
    (root / "TUNE" / f"{name}.autotune.json").write_text(json.dumps({"key": [1], "configs_timings": []}))
    return d


def test_triton_cache_packs_relocates_and_checks_its_fingerprint(tmp_path, monkeypatch):
    src = _fake_cache(tmp_path / "gpu-cache")
    tarball = tmp_path / "out" / "triton-cache.tar.gz"
    count, size, dropped = K.pack_cache(tmp_path / "gpu-cache", tarball, 2**20)
    assert count == 4 and dropped == 0 and size == 64 + 64 + len((src / "__grp___k.json").read_bytes()) + len(
        (tmp_path / "gpu-cache" / "TUNE" / "_k.autotune.json").read_bytes())
    assert K.cache_count(tmp_path / "gpu-cache") == 1
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "carried"
    assert K.unpack_cache(tarball, dest.relative_to(tmp_path)) == 5  # with the fingerprint; a relative folder
    group = json.loads((dest / "ABC" / "__grp___k.json").read_text())["child_paths"]
    assert group == {"_k.cubin": str(dest / "ABC" / "_k.cubin"), "_k.json": str(dest / "ABC" / "_k.json")}  # absolute
    assert (dest / "ABC" / "_k.cubin").read_bytes() == (src / "_k.cubin").read_bytes()
    assert (dest / "TUNE" / "_k.autotune.json").exists() and not (dest / "ABC" / "_k.llir").exists()
    assert json.loads((dest / K.FINGERPRINT).read_text()) == cache_fingerprint()
    ok, why = K.cache_matches(dest)
    assert ok, why
    other = {**cache_fingerprint(), "triton": "0.0.1", "triton_key": "0" * 16, "python": "3.12"}
    (dest / K.FINGERPRINT).write_text(json.dumps(other))
    ok, why = K.cache_matches(dest)
    assert not ok and "triton 0.0.1" in why
    # the limit is the packed file's size (what the device returns); whole kernels are left out, and counted
    _fake_cache(tmp_path / "gpu-cache", key="DEF", name="_big", tune=False)
    (tmp_path / "gpu-cache" / "DEF" / "_big.cubin").write_bytes(os.urandom(20000))  # incompressible
    full = tmp_path / "full.tar.gz"
    assert K.pack_cache(tmp_path / "gpu-cache", full, 2**20)[2] == 0
    limit = full.stat().st_size - 5000
    count, size, dropped = K.pack_cache(tmp_path / "gpu-cache", tmp_path / "small.tar.gz", limit)
    assert dropped == 1 and count == 4 and size < 20000 and (tmp_path / "small.tar.gz").stat().st_size <= limit
    assert K.unpack_cache(tmp_path / "small.tar.gz", tmp_path / "small") == 5
    assert (tmp_path / "small" / "ABC" / "_k.cubin").exists() and not (tmp_path / "small" / "DEF").exists()


def test_merge_results_adds_the_compile_run_and_recomputes_speedups(tmp_path):
    from fastenc.bench import cases as C
    from fastenc.bench import runner

    def doc(variants: dict[str, float], elapsed: float) -> dict:
        meta = {"device": "test", "device_type": "cuda", "cuda": "13.0", "torch": "t", "triton": "t",
                "transformers": "t", "fastenc": "t", "python": "3", "git_commit": None, "date": "2026-12-06",
                "elapsed_s": elapsed}
        records = [{**runner.new_record("op", "bias_gelu", "fp16", C.parse_shape("4x8"), "fwd", v), "status": "ok",
                    "ms": ms} for v, ms in variants.items()]
        return {"meta": meta, "roofs": {"matmul_tflops": 1.0, "matmul_dtype": "fp16", "copy_gbps": 1.0},
                "settings": {"op_dims": {"hidden": 8, "heads": 2, "inter": 16}}, "records": records,
                "summary": {"interrupted": False, "over_budget": []}}

    (tmp_path / "a.json").write_text(json.dumps(doc({"eager": 2.0, "triton": 1.0}, 10.0)))
    (tmp_path / "b.json").write_text(json.dumps(doc({"eager": 2.2, "compile": 0.5}, 20.0)))
    K.merge_results(tmp_path / "a.json", tmp_path / "b.json", tmp_path / "res")
    merged = json.loads((tmp_path / "res" / "results.json").read_text())
    by = {r["variant"]: r for r in merged["records"]}
    assert set(by) == {"eager", "triton", "compile"} and by["eager"]["ms"] == 2.0  # eager of the first run kept
    assert by["compile"]["speedup"] == {"eager": 4.0} and by["triton"]["speedup"] == {"eager": 2.0, "compile": 0.5}
    assert merged["meta"]["compile_run"]["elapsed_s"] == 20.0 and (tmp_path / "res" / "results.md").exists()


@pytest.mark.parametrize("bad", ["../evil", "/abs"])
def test_unpack_skips_paths_outside_the_cache(tmp_path, bad):
    import io
    import tarfile

    tarball = tmp_path / "t.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo(f"{bad}/x.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    assert K.unpack_cache(tarball, tmp_path / "dest") == 0
    assert not (tmp_path / "evil").exists()
