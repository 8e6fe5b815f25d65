"""Artefacts that travel to and from the GPU machine, for benchmarks/gpu_session.sh and benchmarks/PLAYBOOK.md.

- The CUDA extension prebuilt on the CPU machine (benchmarks/make_gpu_artifacts.sh, setup.py in a replica of the
  GPU's Python and torch) sits in build/gpu-artifacts/ext/ with a manifest: the torch version and Python it was
  built against, its archs and a hash of csrc/. `ext-matches` says whether it fits this machine; gpu_session.sh
  then installs it instead of building.
- A Triton cache travels as a tarball of what a kernel launch needs (binary, metadata, group files) and the
  autotuner's results, with the fingerprint of the Triton that filled it (fastenc.precompile.cache_fingerprint).
  Triton's group files hold absolute paths, so `use-cache` rewrites them for the folder the cache now lives in.
  `fill-cache` fills one on the CPU for exactly what gpu_session.sh runs (fastenc.precompile's stand-in driver).
- `merge-results` adds a later `fastenc bench` run's records (the torch.compile baselines, run last) to the first.

Trade-off: matching is strict (exact torch version and Python for the extension, exact triton build for the cache):
a mismatch costs the build or the compiles that the artefact would have saved, never a wrong binary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_SUFFIXES = (".cubin", ".hsaco", ".json")  # .json: kernel metadata, __grp__ groups, *.autotune.json results
FINGERPRINT = "fingerprint.json"
MANIFEST = "manifest.json"


def sources_hash(root: Path = ROOT) -> str:
    """Hash of what the extension is built from: csrc/ and setup.py."""
    h = hashlib.sha256()
    for path in sorted((root / "csrc").glob("*")) + [root / "setup.py"]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cuda_home() -> str | None:
    """The CUDA toolkit holding include/cuda_runtime.h for the `nvcc` on PATH (which may be a wrapper script
    elsewhere, where torch's own guess, the folder above nvcc, has no headers): CUDA_HOME, CUDA_PATH, the folder above
    nvcc's real path, /usr/local/cuda-<nvcc's release>, /usr/local/cuda."""
    import os
    import re
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        if m := re.search(r"release (\d+\.\d+)", version):
            roots.append(f"/usr/local/cuda-{m[1]}")
    roots.append("/usr/local/cuda")
    return next((r for r in roots if r and (Path(r) / "include" / "cuda_runtime.h").exists()), None)


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def ext_matches(prebuilt: Path) -> tuple[bool, str]:
    """Whether the extension in `prebuilt` was built for this torch, this Python and the current csrc/."""
    manifest = prebuilt / MANIFEST
    if not manifest.exists():
        return False, f"no prebuilt extension ({manifest} missing)"
    want = json.loads(manifest.read_text())
    import torch

    have = {"torch": torch.__version__, "python": python_tag(), "sources": sources_hash()}
    diff = [f"{k}: built for {want.get(k)}, here {v}" for k, v in have.items() if want.get(k) != v]
    if diff:
        return False, "prebuilt extension does not match: " + "; ".join(diff)
    if not list(prebuilt.glob("_C*.so")):
        return False, f"no _C*.so in {prebuilt}"
    return True, f"prebuilt extension matches (torch {have['torch']}, Python {have['python']}, archs {want['archs']})"


def cache_matches(cache: Path) -> tuple[bool, str]:
    """Whether the Triton cache in `cache` was filled by this machine's triton build (else every lookup misses)."""
    from fastenc.precompile import cache_fingerprint

    path = cache / FINGERPRINT
    if not path.exists():
        return False, f"no carried Triton cache ({path} missing)"
    want, have = json.loads(path.read_text()), cache_fingerprint()
    if want.get("triton_key") != have["triton_key"]:
        return False, (f"carried Triton cache is from triton {want.get('triton')} / Python {want.get('python')}, here "
                       f"triton {have['triton']} / Python {have['python']}: not used")
    stale = "" if want.get("kernels") == have["kernels"] else " (kernel sources changed since: some kernels recompile)"
    return True, f"carried Triton cache matches triton {have['triton']}{stale}"


def relocate(cache: Path) -> int:
    """Point every group file of `cache` at the files as they lie now (absolute paths: Triton reads them from any
    working directory); returns the number of groups rewritten."""
    cache = cache.resolve()
    n = 0
    for grp in cache.glob("*/__grp__*.json"):
        data = json.loads(grp.read_text())
        names = [name for name in data.get("child_paths", {}) if (grp.parent / name).exists()]
        children = {name: str(grp.parent / name) for name in names}
        grp.write_text(json.dumps({"child_paths": children}))
        n += 1
    return n


def _kernel_groups(cache: Path) -> list[list[Path]]:
    groups: dict[Path, list[Path]] = {}
    for p in sorted(cache.glob("*/*")):
        if p.suffix in CACHE_SUFFIXES and p.is_file():
            groups.setdefault(p.parent, []).append(p)
    return list(groups.values())


def cache_count(cache: Path) -> int:
    """The compiled kernels in a Triton cache (one .cubin each)."""
    return sum(1 for _ in cache.glob("*/*.cubin")) if cache.exists() else 0


def _write_tar(groups: list[list[Path]], dest: Path, max_raw: int) -> tuple[int, int, int]:
    from fastenc.precompile import cache_fingerprint

    total = count = dropped = 0
    with tarfile.open(dest, "w:gz") as tar:
        fp = dest.parent / f".{FINGERPRINT}"
        fp.write_text(json.dumps(cache_fingerprint()))
        tar.add(fp, FINGERPRINT)
        fp.unlink()
        for files in groups:  # a kernel's files all or none: a binary without its group is never found
            size = sum(p.stat().st_size for p in files)
            if total + size > max_raw:
                dropped += 1
                continue
            for p in files:
                tar.add(p, f"{p.parent.name}/{p.name}")
            total, count = total + size, count + len(files)
    return count, total, dropped


def pack_cache(cache: Path, dest: Path, max_bytes: int) -> tuple[int, int, int]:
    """Tar what a launch needs from `cache` (binaries, metadata, groups, autotune results) with this machine's
    fingerprint into `dest` (gzip), at most `max_bytes` on disk (the limit is on the file that travels, so it is the
    compressed size); when everything does not fit, whole kernels are left out and counted. Returns (files, bytes
    before compression, kernel folders left out)."""
    groups = _kernel_groups(cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    max_raw = sum(sum(p.stat().st_size for p in files) for files in groups)
    while True:
        count, total, dropped = _write_tar(groups, dest, max_raw)
        size = dest.stat().st_size
        if size <= max_bytes or total == 0:
            return count, total, dropped
        max_raw = int(total * max_bytes / size * 0.95)  # shrink by the compression ratio just seen


def unpack_cache(tarball: Path, dest: Path) -> int:
    """Extract a packed cache into `dest` (merging with what is there) and relocate its groups."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and ".." not in Path(m.name).parts
                   and not Path(m.name).is_absolute()]
        tar.extractall(dest, members=members)
    relocate(dest)
    return len(members)


# ---------------------------------------------------------------------------------------------------------------
# Filling a Triton cache on the CPU for what gpu_session.sh runs


BENCH_INFER = ("1x16", "2x128", "var")  # 2x128 compiles what 32x128 does (fastenc.precompile), in far less CPU
BENCH_TRAIN = ("2x128",)
BENCH_OP_SHAPE = "32x128"


class _CompileOnly:
    """pytest plugin: the session's test selection runs through fastenc.precompile's stand-in driver on CPU tensors,
    so every kernel a test launches is specialised and compiled as on the GPU, and nothing is launched. Outputs are
    whatever memory held, so the value checks are turned off (a failing check would end its test before the backward
    kernels compile); the tests' pass / fail here means nothing."""

    def __init__(self, target_name: str):
        self.target_name = target_name
        self._ctx = None
        self._saved = None

    def pytest_configure(self, config) -> None:
        import torch

        import tests.helpers as helpers  # patched before the test modules import the name

        self._saved = (torch.testing.assert_close, helpers.assert_close_to_ref)
        torch.testing.assert_close = helpers.assert_close_to_ref = lambda *a, **k: None

    def pytest_sessionstart(self, session) -> None:
        from fastenc.precompile import target, target_driver

        self._ctx = target_driver(target(self.target_name))
        self._ctx.__enter__()

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        import torch

        import tests.helpers as helpers

        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
        torch.testing.assert_close, helpers.assert_close_to_ref = self._saved


def fill_cache(target_name: str = "sm_90a", tests: bool = True, log=print) -> int:
    """Compile into TRITON_CACHE_DIR, for `target_name`, what gpu_session.sh runs: the benchmark's BERT-base fp16
    cases (inference and the training step) and op cases, the sanitizer workload, and (tests=True) the GPU test
    selection (benchmarks.gpu_checks). Needs the Triton compiler (TRITON_INTERPRET unset), no GPU. Returns the
    number of kernels in the cache."""
    import os

    import pytest
    import torch

    from benchmarks import gpu_checks
    from fastenc import precompile as P
    from fastenc.bench import cases as C
    from fastenc.bench import runner

    for shapes, mode in ((BENCH_INFER, "infer"), (BENCH_TRAIN, "train")):
        log(P.precompile(target_name, "bert-base", ["fp16"], list(shapes), [mode]).summary())
    cpu = torch.device("cpu")
    with P.target_driver(P.target(target_name)):
        for op in C.OPS:
            case = C.op_case(op, C.parse_shape(BENCH_OP_SHAPE), **C.BASE_DIMS)
            for mode in ("fwd", "fwd+bwd"):
                args, kwargs = case.make(C.DTYPES["fp16"], cpu, mode != "fwd")
                runner._op_call(runner._op_fn(op, "triton"), args, kwargs, mode)()
        log("bench op cases: compiled")
        failed = gpu_checks.sanitize(["triton"], [torch.float16, torch.bfloat16], cpu, check=False, log=lambda _: None)
        log(f"sanitizer workload: compiled ({failed} cases raised)")
    if tests:
        os.environ["TRITON_INTERPRET"] = "0"  # tests/conftest.py would turn the interpreter on without a GPU
        args = ["-q", "--no-header", "--tb=no", "-p", "no:cacheprovider", "-p", "benchmarks.gpu_checks",
                "--continue-on-collection-errors",
                "-k", "not torch_compile", str(ROOT / "tests")]  # torch.compile tests: minutes of CPU inductor here
        code = pytest.main(args, plugins=[_CompileOnly(target_name)])
        log(f"GPU test selection run through the stand-in driver (exit {int(code)}; pass / fail means nothing here)")
    return cache_count(P._cache_dir())


def merge_results(first: Path, later: Path, out: Path) -> list[Path]:
    """The results of `first` plus the torch.compile records of `later` (a run made after it, on the same machine
    in the same session), speed-ups recomputed, written to `out` as `fastenc bench` writes them."""
    from fastenc.bench import report, runner

    doc, extra = json.loads(first.read_text()), json.loads(later.read_text())
    compiled = [r for r in extra["records"] if r["variant"] in ("compile", "hf-compile")]
    doc["records"] = [r for r in doc["records"] if r["variant"] not in ("compile", "hf-compile")] + compiled
    runner.add_speedups(doc["records"])
    doc["meta"]["compile_run"] = {k: extra["meta"].get(k) for k in ("elapsed_s", "date")}
    summary = doc.setdefault("summary", {})
    summary["compile_run"] = extra.get("summary", {})
    return report.write_all(doc, out, log=lambda _: None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_kit.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ext-matches", help="exit 0 if DIR holds an extension built for this torch").add_argument(
        "dir", type=Path)
    use = sub.add_parser("use-cache", help="exit 0 if DIR is a Triton cache of this triton build (and relocate it)")
    use.add_argument("dir", type=Path)
    pack = sub.add_parser("pack-cache", help="tar a Triton cache for the trip back")
    pack.add_argument("dir", type=Path)
    pack.add_argument("dest", type=Path)
    pack.add_argument("--max-mb", type=float, default=15.9, help="on-disk size limit (a returned file: < 16 MiB)")
    unpack = sub.add_parser("unpack-cache", help="extract a packed Triton cache into DIR")
    unpack.add_argument("tarball", type=Path)
    unpack.add_argument("dir", type=Path)
    sub.add_parser("sources-hash", help="print the hash of csrc/ and setup.py")
    sub.add_parser("cuda-home", help="print the CUDA toolkit folder of the nvcc on PATH")
    sub.add_parser("cache-count", help="print the number of compiled kernels in DIR").add_argument("dir", type=Path)
    fill = sub.add_parser("fill-cache", help="compile, without a GPU, what gpu_session.sh runs into TRITON_CACHE_DIR")
    fill.add_argument("--target", default="sm_90a")
    fill.add_argument("--no-tests", action="store_true", help="leave the test selection out")
    merge = sub.add_parser("merge-results", help="add a later run's torch.compile records to a results.json")
    merge.add_argument("first", type=Path)
    merge.add_argument("later", type=Path)
    merge.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "sources-hash":
        print(sources_hash())
        return 0
    if args.cmd == "cuda-home":
        home = cuda_home()
        print(home or "no CUDA toolkit with include/cuda_runtime.h found")
        return 0 if home else 1
    if args.cmd == "cache-count":
        print(cache_count(args.dir))
        return 0
    if args.cmd == "fill-cache":
        print(f"Triton cache now holds {fill_cache(args.target, tests=not args.no_tests)} kernels")
        return 0
    if args.cmd == "merge-results":
        print("wrote " + ", ".join(str(p) for p in merge_results(args.first, args.later, args.out)))
        return 0
    if args.cmd == "ext-matches":
        ok, why = ext_matches(args.dir)
    elif args.cmd == "use-cache":
        ok, why = cache_matches(args.dir)
        if ok:
            why += f"; {relocate(args.dir)} kernel groups relocated to {args.dir}"
    elif args.cmd == "pack-cache":
        count, size, dropped = pack_cache(args.dir, args.dest, int(args.max_mb * 2**20))
        ok = True
        why = (f"packed {count} files ({size / 2**20:.1f} MiB before gzip, {args.dest.stat().st_size / 2**20:.1f} "
               f"MiB packed) into {args.dest}" + (f"; LEFT OUT {dropped} kernels over {args.max_mb} MiB" if dropped
                                                  else ""))
    else:
        ok, why = True, f"unpacked {unpack_cache(args.tarball, args.dir)} files into {args.dir}"
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
