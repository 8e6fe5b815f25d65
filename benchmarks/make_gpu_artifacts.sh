#!/usr/bin/env bash
# Make here, on the CPU machine, what benchmarks/gpu_session.sh needs on the GPU, and print the one device call.
#
#   benchmarks/make_gpu_artifacts.sh [--no-ext] [--no-tests]
#
# 1. A replica of the GPU machine's Python stack (Python 3.12, PyPI's torch 2.11.0 = 2.11.0+cu130, triton 3.6.0,
#    transformers 5.17.0; numpy 2.3.5, which triton 3.6's interpreter needs) in build/gpu-stack/venv, or the one
#    GPU_STACK_PY names (its python). PyPI's cp312 wheels are the GPU's: Triton's cache key hashes libtriton.so,
#    which differs between the cp311 and cp312 wheels, so a cache made under any other Python never hits there.
# 2. The extension fastenc._C, built by setup.py in the replica for sm_90a plus compute_90 PTX, with
#    FASTENC_CUDA_ARCHS given so fastenc._C.CUDA_ARCHS is set (about 70 s on 2 cores): build/gpu-artifacts/ext/ with
#    a manifest that gpu_session.sh checks (torch, Python, archs, csrc/ hash). --no-ext keeps the one there.
# 3. The Triton cache of exactly what gpu_session.sh runs (benchmarks/gpu_kit.py fill-cache: fastenc.precompile's
#    stand-in driver for sm_90a under the replica; --no-tests leaves the test selection out), from empty, packed to
#    build/gpu-artifacts/triton-cache.tar.gz.
# Everything lands in build/ (git-ignored); build/gpu-artifacts (under 40 MB) is what the device call carries.
# Needs: python3.12 (PATH or pyenv) and pip's network for step 1 (torch's CUDA wheels: several GB, once), nvcc 13.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STACK=$ROOT/build/gpu-stack
ART=$ROOT/build/gpu-artifacts
EXT=1 TESTS=1
for a in "$@"; do
    case $a in
        --no-ext) EXT=0 ;;
        --no-tests) TESTS=0 ;;
        *) echo "usage: benchmarks/make_gpu_artifacts.sh [--no-ext] [--no-tests]" >&2; exit 2 ;;
    esac
done
TORCH=2.11.0 TRITON=3.6.0 TRANSFORMERS=5.17.0 NUMPY=2.3.5 LIMIT_MB=40
mkdir -p "$STACK" "$ART"
SECONDS=0

# 1. the replica
PY=${GPU_STACK_PY:-$STACK/venv/bin/python}
if [ ! -x "$PY" ]; then
    BASE=$(command -v python3.12 || ls "$HOME"/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | tail -n 1 || true)
    [ -n "$BASE" ] || { echo "make_gpu_artifacts.sh: no python3.12 found (PATH, pyenv): set GPU_STACK_PY" >&2; exit 1; }
    "$BASE" -m venv "$STACK/venv"
    "$PY" -m pip install -q "torch==$TORCH" "triton==$TRITON" "transformers==$TRANSFORMERS" "numpy==$NUMPY" \
        safetensors ninja pytest pytest-xdist pytest-timeout
fi
"$PY" - "$TORCH" "$TRITON" <<'EOF'
import sys, torch, triton
want_torch, want_triton = sys.argv[1:]
py = f"{sys.version_info.major}.{sys.version_info.minor}"
ok = torch.__version__ == f"{want_torch}+cu130" and triton.__version__ == want_triton and py == "3.12"
print(f"replica: Python {py}, torch {torch.__version__}, triton {triton.__version__}" + ("" if ok else ": NOT the GPU's"))
sys.exit(0 if ok else 1)
EOF

# The checkout as Python sees it on the GPU: from the repo root, fastenc.kernels linked as `pip install -e .` maps it
# (the link is gone again at exit: linters would read kernels/ twice)
if [ ! -e fastenc/kernels ]; then
    ln -s ../kernels fastenc/kernels
    trap 'rm -f "$ROOT/fastenc/kernels"' EXIT
fi
run_py() { env -u TRITON_INTERPRET "$PY" "$@"; }

# 2. the extension
if [ $EXT = 1 ]; then
    rm -rf "$ART/ext" "$STACK/ext-lib"
    mkdir -p "$ART/ext"
    CUDA_HOME=${CUDA_HOME:-$(run_py -m benchmarks.gpu_kit cuda-home)} || { echo "$CUDA_HOME" >&2; exit 1; }
    export CUDA_HOME
    FASTENC_FORCE_CUDA=1 FASTENC_CUDA_ARCHS=90a MAX_JOBS=$(nproc) "$PY" setup.py -q build_ext \
        --build-lib "$STACK/ext-lib" --build-temp "$STACK/ext-tmp" >"$STACK/ext-build.log" 2>&1 ||
        { tail -n 30 "$STACK/ext-build.log"; exit 1; }
    cp "$STACK"/ext-lib/fastenc/_C*.so "$ART/ext/"
    run_py - "$ART/ext" <<'EOF'
import json, subprocess, sys, torch
from datetime import datetime, timezone
from pathlib import Path
from benchmarks import gpu_kit
dest = Path(sys.argv[1])
so = next(dest.glob("_C*.so")).read_bytes()
archs = "sm_90a+compute_90"
assert archs.encode() in so, f"CUDA_ARCHS {archs} not compiled into {dest}"  # FASTENC_CUDA_ARCHS reached the build
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
(dest / gpu_kit.MANIFEST).write_text(json.dumps({
    "torch": torch.__version__, "python": gpu_kit.python_tag(), "archs": archs, "cuda": torch.version.cuda,
    "sources": gpu_kit.sources_hash(), "commit": commit,
    "built": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=1))
EOF
    echo "extension: $(ls "$ART"/ext/_C*.so) ($(( SECONDS ))s)"
elif ! run_py -m benchmarks.gpu_kit ext-matches "$ART/ext"; then
    echo "extension: not rebuilt (--no-ext); gpu_session.sh will build it on the GPU (about 150 s of the session)"
fi

# 3. the Triton cache, from empty: exactly what gpu_session.sh runs
rm -rf "$STACK/triton-cache"
FILL=(-m benchmarks.gpu_kit fill-cache)
[ $TESTS = 0 ] && FILL+=(--no-tests)
TRITON_CACHE_DIR=$STACK/triton-cache run_py "${FILL[@]}" >"$STACK/fill.log" 2>&1 ||
    { tail -n 30 "$STACK/fill.log"; exit 1; }
grep -E "^fastenc precompile|^  spills|compiled|holds" "$STACK/fill.log"
run_py -m benchmarks.gpu_kit pack-cache "$STACK/triton-cache" "$ART/triton-cache.tar.gz" --max-mb 15.9

# what travels, and the call
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf '{"commit": "%s", "made": "%s", "replica": "%s"}\n' "$COMMIT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$("$PY" -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)')" \
    >"$ART/manifest.json"
du -b "$ART"/ext/* "$ART"/triton-cache.tar.gz "$ART"/manifest.json 2>/dev/null
total=$(du -sb "$ART" | cut -f1)
echo "build/gpu-artifacts: $(( total / 1000000 )) MB (limit $LIMIT_MB MB), made in ${SECONDS}s"
[ "$total" -le $(( LIMIT_MB * 1000000 )) ] || { echo "make_gpu_artifacts.sh: over $LIMIT_MB MB" >&2; exit 1; }
echo "device call: run(command=\"benchmarks/gpu_session.sh\", carry=[\"build/gpu-artifacts\"], timeout_s=570)"
echo "dry run first: benchmarks/gpu_session.sh --dry-run (PYTHON=$PY for the replica's view)"
