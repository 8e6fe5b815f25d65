#!/usr/bin/env bash
# The GPU run kit, for a machine with no network: build (or install the prebuilt) CUDA extension, the GPU tests in
# parallel, compute-sanitizer's memcheck on a tiny model, then `fastenc bench`. benchmarks/PLAYBOOK.md says how to
# spend a 30-minute device session with it.
#
#   benchmarks/run_gpu.sh [--dry-run] [all|build|test|test-rest|sanitize|bench] ...
#
# Stages run in the order above whatever the order named (all = build test sanitize bench; test-rest, the non-GPU
# tests, only when named). Each has its own time limit, cut to what is left before DEADLINE_S (default 560, under
# the device's 10 minutes a call), so that any one stage, or all of them, fits one call; a stage that runs out of
# time is stopped with SIGINT first, so pytest still prints its summary. Every stage that needs the extension
# installs it first when missing (a fresh machine), from build/prebuilt/ when that was built for this torch
# (benchmarks/prebuild_ext.sh, skipping nvcc), else by building it.
# Triton: TRITON_CACHE_DIR defaults to build/triton-cache, used when its fingerprint matches this triton build
# (benchmarks/gpu_kit.py); at the end the cache is packed into $OUT/triton-cache.tar.gz for the next session.
# Out ($OUT, default ./out): build.log tests.log sanitizer.log bench.log status.log results.md results.tar.gz
# triton-cache.tar.gz (8 files at most). --dry-run prints the plan and the artefact checks and runs nothing else.
# Environment: OUT, DEADLINE_S, FASTENC_CUDA_ARCHS (default 90a), FASTENC_BENCH_ARGS, PYTEST_WORKERS (default 4).
set -o pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
DEADLINE_S=${DEADLINE_S:-560}
PY=${PYTHON:-python3}
DRY=0
STAGES=()
for a in "$@"; do
    case $a in
        --dry-run) DRY=1 ;;
        all|build|test|test-rest|sanitize|bench) STAGES+=("$a") ;;
        *) echo "run_gpu.sh: unknown stage or option '$a'" >&2; exit 2 ;;
    esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/build/triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
declare -A STATUS
ORDER=()
PLANNED=0  # dry run: the seconds the stages planned so far would take at most

wants() {
    local s
    for s in "${STAGES[@]}"; do
        [ "$s" = "$1" ] && return 0
        [ "$s" = all ] && [ "$1" != test-rest ] && return 0
    done
    return 1
}

left() {  # seconds left before the deadline, minus a margin for packing the results (dry run: planned time only)
    local elapsed=$SECONDS
    [ $DRY = 1 ] && elapsed=0
    echo $(( DEADLINE_S - elapsed - PLANNED - 20 ))
}

run_stage() {  # run_stage NAME LIMIT_S LOG command...: runs with a time limit, records pass / fail / timeout
    local name=$1 limit=$2 log=$3
    shift 3
    ORDER+=("$name")
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    if [ "$limit" -le 5 ]; then
        STATUS[$name]="not run (deadline)"
        return
    fi
    if [ $DRY = 1 ]; then
        local cmd="$*"
        cmd=${cmd//$'\n'/ }
        echo "stage $name: limit ${limit}s, log $log: ${cmd:0:150}"
        STATUS[$name]="dry run (limit ${limit}s)"
        PLANNED=$(( PLANNED + limit ))
        return
    fi
    echo "=== $name (limit ${limit}s): $*" >>"$OUT/$log"
    timeout -s INT --kill-after=20 "$limit" "$@" >>"$OUT/$log" 2>&1
    local rc=$?
    case $rc in
        0) STATUS[$name]=pass ;;
        124|137) STATUS[$name]="timeout after ${limit}s" ;;
        *) STATUS[$name]="fail (exit $rc)" ;;
    esac
}

ensure_extension() {  # the extension in place: already there, prebuilt for this torch, or built now (limit $1)
    [ $DRY = 1 ] || [ -e fastenc/kernels ] || ln -s ../kernels fastenc/kernels  # as `pip install -e .` maps it
    if [ $DRY = 0 ] && $PY -c "import fastenc._C" 2>/dev/null; then
        return
    fi
    if $PY -m benchmarks.gpu_kit ext-matches build/prebuilt >>"$OUT/build.log" 2>&1; then
        [ $DRY = 1 ] && echo "extension: prebuilt (build/prebuilt), no build" && return
        cp build/prebuilt/_C*.so fastenc/ && STATUS[build]="pass (prebuilt)" && ORDER+=(build) && return
    fi
    [ $DRY = 1 ] && echo "extension: will be built (see build.log for why the prebuilt one is not used)"
    export FASTENC_CUDA_ARCHS=${FASTENC_CUDA_ARCHS:-90a}
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    run_stage build "$1" build.log env FASTENC_FORCE_CUDA=1 \
        $PY -m pip install -e . --no-build-isolation --no-index --no-deps
}

{
    date -u
    nvidia-smi
    $PY -c "import torch, triton, transformers; print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    nvcc --version | tail -n 2
    git log -1 --oneline
    $PY -m benchmarks.gpu_kit use-cache "$TRITON_CACHE_DIR"
} >"$OUT/build.log" 2>&1
[ $DRY = 1 ] && echo "plan for ${STAGES[*]} within ${DEADLINE_S}s; Triton cache $TRITON_CACHE_DIR: $(tail -n 1 "$OUT/build.log")"

if wants build || wants test || wants test-rest || wants sanitize || wants bench; then
    ensure_extension 240
    [ $DRY = 0 ] && $PY -c "import fastenc.backends as b; print('cuda backend:', b.unavailable_reason('cuda') or 'available')" \
        >>"$OUT/build.log" 2>&1
fi

PYTEST=($PY -m pytest -q -rfEs --durations=15 -p no:cacheprovider)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=150)
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n "${PYTEST_WORKERS:-4}")

if wants test; then  # what only this machine can check: the GPU-marked tests, several workers on the one GPU
    run_stage tests-gpu 300 tests.log "${PYTEST[@]}" "${XDIST[@]}" tests -m gpu
fi
if wants test-rest; then
    run_stage tests-rest 500 tests.log "${PYTEST[@]}" "${XDIST[@]}" tests -m "not gpu"
fi

if wants sanitize; then
    # A tiny model, padded batch, forward + backward on each kernel backend, run once plainly (Triton compiles and
    # tunes outside the sanitizer) and once under memcheck. The caching allocator is off so that memcheck sees each
    # tensor as its own allocation (an overrun inside a cached block is invisible otherwise).
    SAN_PY='
import torch, fastenc, transformers
from fastenc.backends import unavailable_reason
cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                              vocab_size=500, max_position_embeddings=64)
torch.manual_seed(0)
twin = fastenc.from_hf(transformers.BertForMaskedLM(cfg).cuda())
ids = torch.randint(5, 500, (3, 37), device="cuda")
mask = torch.ones_like(ids)
mask[1, 20:] = 0
mask[2, 5:] = 0
for backend in ("triton", "cuda"):
    why = unavailable_reason(backend)
    if why:
        print(backend, "skipped:", why)
        continue
    for dtype in (torch.float16, torch.bfloat16):
        with fastenc.use_backend(backend), torch.autocast("cuda", dtype=dtype):
            loss = twin(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.cuda.synchronize()
        print(backend, dtype, "loss", loss.item(), "ok")
'
    run_stage sanitize-warm 60 sanitizer.log $PY -c "$SAN_PY"
    run_stage sanitize 150 sanitizer.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 $PY -c "$SAN_PY"
fi

if wants bench; then
    # default: BERT-base fp16 against eager/sdpa/torch.compile, then the op table
    DEFAULT_BENCH="--models bert-base --dtypes fp16 --shapes 1x16,32x128,32x512,var,8x128,128x128 \
        --train-shapes 32x128,16x512 --op-shapes 32x128"
    # the budget stops new cases; the stage's limit (SIGINT, then the results so far are written) catches a long one
    # shellcheck disable=SC2086
    run_stage bench 600 bench.log $PY -m fastenc bench ${FASTENC_BENCH_ARGS:-$DEFAULT_BENCH} \
        --out "$OUT/results" --no-progress --budget-s $(( $(left) * 3 / 4 ))
    if [ $DRY = 0 ] && [ -d "$OUT/results" ]; then
        cp "$OUT/results/results.md" "$OUT/results.md" 2>/dev/null
        tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf "$OUT/results"
    fi
fi

if [ $DRY = 0 ]; then
    $PY -m benchmarks.gpu_kit pack-cache "$TRITON_CACHE_DIR" "$OUT/triton-cache.tar.gz" --max-mb 15 >>"$OUT/build.log" 2>&1
fi

echo "=== run_gpu.sh: ${SECONDS}s"
for k in "${ORDER[@]}"; do echo "  $k: ${STATUS[$k]}"; done | tee "$OUT/status.log"
[ $DRY = 1 ] && exit 0
grep -h -E "^(FAILED|ERROR)|passed|failed|interrupted" "$OUT"/tests.log 2>/dev/null | tail -n 30
[ -f "$OUT/results.md" ] && head -n 60 "$OUT/results.md"
for k in "${ORDER[@]}"; do [[ "${STATUS[$k]}" == pass* ]] || exit 1; done
exit 0
