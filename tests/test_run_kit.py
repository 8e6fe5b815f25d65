"""The GPU run kit on the CPU: benchmarks/run_gpu.sh's dry run (stage order and time limits), and the artefact checks
of benchmarks/gpu_kit.py (prebuilt extension manifest, Triton cache packing, fingerprint and relocation)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_kit as K
from fastenc.precompile import cache_fingerprint

SCRIPT = K.ROOT / "benchmarks" / "run_gpu.sh"


def _dry_run(tmp_path, *args: str, deadline: int = 560) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(tmp_path / "out"), TRITON_CACHE_DIR=str(tmp_path / "cache"), DEADLINE_S=str(deadline),
               PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_dry_run_plans_every_stage_in_order_within_the_deadline(tmp_path):
    run = _dry_run(tmp_path, "bench", "all")
    assert run.returncode == 0, run.stderr[-3000:]
    stages = re.findall(r"^stage (\S+): limit (\d+)s", run.stdout, re.M)
    limits = [int(t) for _, t in stages]
    assert all(0 < t <= 600 for t in limits) and sum(limits) <= 560 - 20
    status = [line.split(":")[0].strip() for line in (tmp_path / "out" / "status.log").read_text().splitlines()]
    expected = ["tests-gpu", "sanitize-warm", "sanitize", "bench"]
    if "build" in status:  # no prebuilt extension for this machine's torch: the plan builds it first
        expected.insert(0, "build")
        assert "extension: will be built" in run.stdout
    assert status == expected, run.stdout
    assert [s for s, _ in stages] == status[:len(stages)]  # what does not fit is the end of the list, not run
    assert stages[0][0] in ("build", "tests-gpu") and len(stages) >= 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["build.log", "status.log"]  # nothing ran
    assert "no carried Triton cache" in run.stdout


def test_dry_run_of_one_stage_and_bad_arguments(tmp_path):
    run = _dry_run(tmp_path, "--dry-run", "nope")
    assert run.returncode == 2 and "unknown stage or option 'nope'" in run.stderr
    run = _dry_run(tmp_path, "bench", deadline=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stages = dict(re.findall(r"^stage (\S+): limit (\d+)s", run.stdout, re.M))
    assert set(stages) <= {"build", "bench"} and "bench" in stages and sum(map(int, stages.values())) <= 280


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
    for key, value in (("torch", "2.11.0+cu130"), ("python", "2.7"), ("sources", "0" * 16)):
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


def _fake_cache(root, key="ABC", name="_k"):
    d = root / key
    d.mkdir(parents=True)
    files = {}
    for ext in (".cubin", ".json", ".llir", ".ptx"):
        (d / f"{name}{ext}").write_bytes(os.urandom(64))
        files[f"{name}{ext}"] = str(d / f"{name}{ext}")
    (d / f"__grp__{name}.json").write_text(json.dumps({"child_paths": files}))
    (root / "TUNE").mkdir()
    (root / "TUNE" / f"{name}.autotune.json").write_text(json.dumps({"key": [1], "configs_timings": []}))
    return d


def test_triton_cache_packs_relocates_and_checks_its_fingerprint(tmp_path):
    src = _fake_cache(tmp_path / "gpu-cache")
    count, size = K.pack_cache(tmp_path / "gpu-cache", tmp_path / "out" / "triton-cache.tar.gz", 2**20)
    assert count == 4 and size == 64 + 64 + len((src / "__grp___k.json").read_bytes()) + len(
        (tmp_path / "gpu-cache" / "TUNE" / "_k.autotune.json").read_bytes())
    dest = tmp_path / "carried"
    assert K.unpack_cache(tmp_path / "out" / "triton-cache.tar.gz", dest) == 5  # with the fingerprint
    group = json.loads((dest / "ABC" / "__grp___k.json").read_text())["child_paths"]
    assert group == {"_k.cubin": str(dest / "ABC" / "_k.cubin"), "_k.json": str(dest / "ABC" / "_k.json")}
    assert (dest / "ABC" / "_k.cubin").read_bytes() == (src / "_k.cubin").read_bytes()
    assert (dest / "TUNE" / "_k.autotune.json").exists() and not (dest / "ABC" / "_k.llir").exists()
    assert json.loads((dest / K.FINGERPRINT).read_text()) == cache_fingerprint()
    ok, why = K.cache_matches(dest)
    assert ok, why
    other = {**cache_fingerprint(), "triton": "3.6.0", "triton_key": "0" * 16, "python": "3.12"}
    (dest / K.FINGERPRINT).write_text(json.dumps(other))
    ok, why = K.cache_matches(dest)
    assert not ok and "triton 3.6.0" in why
    # a size cap leaves whole kernels out (a binary without its group is useless) rather than failing
    count, size = K.pack_cache(tmp_path / "gpu-cache", tmp_path / "small.tar.gz", 100)
    assert count == 1 and size <= 100
    assert K.unpack_cache(tmp_path / "small.tar.gz", tmp_path / "small") == 2
    assert not (tmp_path / "small" / "ABC").exists()


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
