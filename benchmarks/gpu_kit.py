"""Artefacts that travel to and from the GPU machine, for benchmarks/run_gpu.sh and benchmarks/PLAYBOOK.md.

- The CUDA extension prebuilt on the CPU machine (benchmarks/prebuild_ext.sh) sits in build/prebuilt/ with a
  manifest: the torch version and Python it was built against and a hash of csrc/. `ext-matches` says whether it
  fits this machine; run_gpu.sh then installs it instead of building (minutes of nvcc saved).
- A Triton cache travels as a tarball of what a kernel launch needs (binary, metadata, group files) and the
  autotuner's results, with the fingerprint of the Triton that filled it (fastenc.precompile.cache_fingerprint).
  Triton's group files hold absolute paths, so `use-cache` rewrites them for the folder the cache now lives in.

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
    """Point every group file of `cache` at the files as they lie now; returns the number of groups rewritten."""
    n = 0
    for grp in cache.glob("*/__grp__*.json"):
        data = json.loads(grp.read_text())
        names = [name for name in data.get("child_paths", {}) if (grp.parent / name).exists()]
        children = {name: str(grp.parent / name) for name in names}
        grp.write_text(json.dumps({"child_paths": children}))
        n += 1
    return n


def pack_cache(cache: Path, dest: Path, max_bytes: int) -> tuple[int, int]:
    """Tar what a launch needs from `cache` (binaries, metadata, groups, autotune results) with this machine's
    fingerprint into `dest` (gzip); kernels that would take it past `max_bytes` (uncompressed) are left out. Returns
    (files, bytes)."""
    from fastenc.precompile import cache_fingerprint

    groups: dict[Path, list[Path]] = {}
    for p in sorted(cache.glob("*/*")):
        if p.suffix in CACHE_SUFFIXES and p.is_file():
            groups.setdefault(p.parent, []).append(p)
    total = count = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        fp = dest.parent / f".{FINGERPRINT}"
        fp.write_text(json.dumps(cache_fingerprint()))
        tar.add(fp, FINGERPRINT)
        fp.unlink()
        for files in groups.values():  # a kernel's files all or none: a binary without its group is never found
            size = sum(p.stat().st_size for p in files)
            if total + size > max_bytes:
                continue
            for p in files:
                tar.add(p, f"{p.parent.name}/{p.name}")
            total, count = total + size, count + len(files)
    return count, total


def unpack_cache(tarball: Path, dest: Path) -> int:
    """Extract a packed cache into `dest` (merging with what is there) and relocate its groups."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and ".." not in Path(m.name).parts
                   and not Path(m.name).is_absolute()]
        tar.extractall(dest, members=members)
    relocate(dest)
    return len(members)


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
    pack.add_argument("--max-mb", type=float, default=15.0)
    unpack = sub.add_parser("unpack-cache", help="extract a packed Triton cache into DIR")
    unpack.add_argument("tarball", type=Path)
    unpack.add_argument("dir", type=Path)
    sub.add_parser("sources-hash", help="print the hash of csrc/ and setup.py")
    args = p.parse_args(argv)
    if args.cmd == "sources-hash":
        print(sources_hash())
        return 0
    if args.cmd == "ext-matches":
        ok, why = ext_matches(args.dir)
    elif args.cmd == "use-cache":
        ok, why = cache_matches(args.dir)
        if ok:
            why += f"; {relocate(args.dir)} kernel groups relocated to {args.dir}"
    elif args.cmd == "pack-cache":
        count, size = pack_cache(args.dir, args.dest, int(args.max_mb * 2**20))
        ok, why = True, f"packed {count} files ({size / 2**20:.1f} MiB before gzip) into {args.dest}"
    else:
        ok, why = True, f"unpacked {unpack_cache(args.tarball, args.dir)} files into {args.dir}"
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
