#!/usr/bin/env bash
# The one command of a GPU session (the device lends 15 minutes in all, at most 10 a command): every kernel checked,
# sanitized and timed, ending on its own within SESSION_S (520 s), with what it needs made beforehand on the CPU
# machine by benchmarks/make_gpu_artifacts.sh (prebuilt extension, Triton cache for the GPU's Python and triton).
#
#   benchmarks/gpu_session.sh [--dry-run]
#
# Phases, each with a time cap cut to what is left (a phase past its cap gets SIGINT, so pytest and `fastenc bench`
# still write what they have, then SIGKILL 10 s later):
#   facts     versions, GPU facts, the carried Triton cache unpacked and checked against this triton
#   extension the prebuilt fastenc._C when its manifest matches this torch, Python and csrc/, else a capped build
#   checks    the GPU tests (benchmarks/gpu_checks.py: tests/ops for both backends + the gpu-marked tests; xdist,
#             per-test thread timeouts) side by side with compute-sanitizer: memcheck on the sanitizer workload,
#             then racecheck on the CUDA attention when the phase has time left
#   bench     `fastenc bench` alone on the GPU: BERT-base fp16 1x16, 32x128, var (16..512), training step 32x128, the
#             op cases, against transformers eager and sdpa, every fastenc backend and auto
#   compile   the torch.compile baselines of the same cases, last, within what is left
#   pack      results (merged), table, the Triton cache as filled here, a summary on stdout
# Without a GPU every GPU phase says it was skipped and why (tests/test_gpu_session.py runs it so on the CPU).
# $OUT (default ./out) gets at most 8 files: session.log tests.log sanitizer.log bench.log results.json results.md
# results-extra.tar.gz (plots, auto table, both raw runs) triton-cache.tar.gz.
# Environment: OUT, SESSION_S (520), GPU_ARTIFACTS (build/gpu-artifacts), PYTHON (python3), PYTEST_WORKERS (8),
# GPU_SESSION_WORK (scratch, build/gpu-session), TRITON_CACHE_DIR (build/triton-cache).
set -u -o pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out}
SESSION_S=${SESSION_S:-520}
ART=${GPU_ARTIFACTS:-$ROOT/build/gpu-artifacts}
PY=${PYTHON:-python3}
WORKERS=${PYTEST_WORKERS:-8}
WORK=${GPU_SESSION_WORK:-$ROOT/build/gpu-session}  # scratch (ignored): raw bench runs, background job status
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: benchmarks/gpu_session.sh [--dry-run]" >&2; exit 2 ;;
esac

# caps in seconds; the sum of what the dry run plans is at most SESSION_S
FACTS_S=30 EXT_PREBUILT_S=20 EXT_BUILD_S=150 CHECKS_S=210 BENCH_MIN_S=120 BENCH_MAX_S=200 COMPILE_PLAN_S=90
COMPILE_MIN_S=40 PACK_S=25 TEST_TIMEOUT_S=120
BENCH_CASES=(--models bert-base --dtypes fp16 --shapes 1x16,32x128,var --train-shapes 32x128 --op-shapes 32x128
             --no-progress)

mkdir -p "$WORK"
if [ ! -e fastenc/kernels ]; then  # fastenc.kernels, as `pip install -e .` maps it; gone again at exit (linters)
    ln -s ../kernels fastenc/kernels
    trap 'rm -f "$ROOT/fastenc/kernels"' EXIT
fi
export PYTHONUNBUFFERED=1  # Python runs from the repo root (python -m): this checkout's fastenc, benchmarks, tests
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$ROOT/build/triton-cache}
unset TRITON_INTERPRET TRITON_PTXAS_PATH  # the compiler, with triton's own ptxas (its cache key hashes the ptxas)

PLANNED=0
declare -a SUMMARY=()
LOG=$OUT/session.log

left() {  # seconds left for the phases before pack (dry run: as if every phase so far ran to its cap)
    local used=$SECONDS
    [ $DRY = 1 ] && used=$PLANNED
    echo $(( SESSION_S - PACK_S - used ))
}

say() { echo "$*" | tee -a "$LOG"; }

note() {  # note PHASE STATUS: one status line per phase, in session.log and the final summary
    SUMMARY+=("$1: $2")
    say "=== phase $1: $2 (at ${SECONDS}s)"
}

plan() {  # plan PHASE CAP WHAT: the dry run's line
    PLANNED=$(( PLANNED + $2 ))
    echo "phase $1: cap $2 s: $3"
}

capped() {  # capped CAP LOGFILE cmd...: SIGINT at CAP-10 s, SIGKILL 10 s later; prints pass / fail / timeout
    local cap=$1 log=$2
    shift 2
    echo "--- $(date -u +%H:%M:%S) cap ${cap}s: $*" >>"$log"
    timeout -s INT -k 10 $(( cap > 15 ? cap - 10 : 5 )) "$@" >>"$log" 2>&1
    local rc=$?
    case $rc in
        0) echo pass ;;
        124|137) echo "timeout (cap ${cap}s)" ;;
        *) echo "fail (exit $rc)" ;;
    esac
}

if [ $DRY = 1 ]; then
    LOG=/dev/null  # the dry run writes nothing to $OUT
else
    mkdir -p "$OUT"
    : >"$LOG"
fi

# --------------------------------------------------------------------------------------------------------------
# facts
GPU_REASON=""
if [ $DRY = 1 ]; then
    plan facts $FACTS_S "versions, nvidia-smi, GPU properties; unpack $ART/triton-cache.tar.gz into $TRITON_CACHE_DIR"
else
    {
        echo "gpu_session.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) CPUs, session cap ${SESSION_S}s"
        [ -f "$ART/manifest.json" ] && echo "artifacts: $(cat "$ART/manifest.json")"
        if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not on PATH"; fi
        command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -n 1
        command -v nvcc >/dev/null && nvcc --version | tail -n 1
    } >>"$LOG" 2>&1
    timeout 60 "$PY" - >>"$LOG" 2>&1 <<'EOF'
import sys, torch, triton, transformers, numpy
print(f"python {sys.version.split()[0]} torch {torch.__version__} (CUDA {torch.version.cuda}) triton {triton.__version__}"
      f" transformers {transformers.__version__} numpy {numpy.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}: capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
else:
    print("GPU: none (torch.cuda.is_available() is False)")
EOF
    GPU_REASON=$(grep -m1 "^GPU: none" "$LOG" || true)
    grep -q "^python " "$LOG" || GPU_REASON="GPU: unknown (the versions check failed: see session.log)"
    if [ -f "$ART/triton-cache.tar.gz" ]; then
        timeout 60 "$PY" -m benchmarks.gpu_kit unpack-cache "$ART/triton-cache.tar.gz" "$TRITON_CACHE_DIR" >>"$LOG" 2>&1
    fi
    timeout 60 "$PY" -m benchmarks.gpu_kit use-cache "$TRITON_CACHE_DIR" >>"$LOG" 2>&1
    KERNELS_BEFORE=$("$PY" -m benchmarks.gpu_kit cache-count "$TRITON_CACHE_DIR" 2>/dev/null || echo 0)
    say "Triton cache $TRITON_CACHE_DIR: $KERNELS_BEFORE kernels at start"
    note facts "done${GPU_REASON:+; $GPU_REASON}"
fi
SKIP=""
[ -n "$GPU_REASON" ] && SKIP="skipped: no CUDA device: ${GPU_REASON#GPU: }"

# --------------------------------------------------------------------------------------------------------------
# extension
EXT=build
EXT_WHY=$("$PY" -m benchmarks.gpu_kit ext-matches "$ART/ext" 2>&1) && EXT=prebuilt
EXT_WHY=$(echo "$EXT_WHY" | tail -n 1)
if [ $DRY = 1 ]; then
    if [ $EXT = prebuilt ]; then
        plan extension $EXT_PREBUILT_S "install the prebuilt fastenc._C ($EXT_WHY)"
    else
        plan extension $EXT_BUILD_S "build fastenc._C with nvcc, sm_90a + compute_90 PTX ($EXT_WHY)"
    fi
elif [ -n "$SKIP" ]; then
    note extension "$SKIP"
elif [ $EXT = prebuilt ]; then
    say "$EXT_WHY"
    cp "$ART"/ext/_C*.so fastenc/ && note extension "prebuilt: $(capped $EXT_PREBUILT_S "$LOG" "$PY" -c \
        "import fastenc._cuda as c; print('fastenc._C loaded, CUDA_ARCHS', c.CUDA_ARCHS)")"
else
    say "$EXT_WHY: building"
    cap=$(( $(left) < EXT_BUILD_S ? $(left) : EXT_BUILD_S ))
    CUDA_HOME=${CUDA_HOME:-$("$PY" -m benchmarks.gpu_kit cuda-home)} && export CUDA_HOME
    note extension "build: $(capped "$cap" "$LOG" env FASTENC_FORCE_CUDA=1 FASTENC_CUDA_ARCHS=90a MAX_JOBS="$(nproc)" \
        "$PY" setup.py build_ext --inplace)"
fi
[ $DRY = 0 ] && [ -z "$SKIP" ] && "$PY" -c "import fastenc.backends as b; print('backend cuda:', \
    b.unavailable_reason('cuda') or 'available')" >>"$LOG" 2>&1

# --------------------------------------------------------------------------------------------------------------
# checks: the GPU tests and the sanitizer, side by side on the one GPU
PYTEST=("$PY" -m pytest -q -rfEs --durations=20 -p no:cacheprovider -p benchmarks.gpu_checks -n "$WORKERS"
        --timeout="$TEST_TIMEOUT_S" --timeout-method=thread --continue-on-collection-errors tests)
SANITIZE=("$PY" -m benchmarks.gpu_checks sanitize)
CS=(compute-sanitizer --error-exitcode 1 --print-limit 50 --report-api-errors no --target-processes all)

sanitizer_job() {  # sanitizer_job CAP: warm-up run (compiles and tunes outside), memcheck, racecheck if time is left
    local cap=$1 start=$SECONDS s log=$OUT/sanitizer.log
    s=$(capped $(( cap / 4 )) "$log" "${SANITIZE[@]}")
    echo "warm-up: $s" >"$WORK/sanitizer.status"
    s=$(capped $(( cap - (SECONDS - start) - 5 )) "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "${CS[@]}" --tool memcheck "${SANITIZE[@]}")
    echo "memcheck: $s" >>"$WORK/sanitizer.status"
    local rest=$(( cap - (SECONDS - start) - 5 ))
    if [ $rest -ge 40 ]; then
        s=$(capped $rest "$log" "${CS[@]}" --tool racecheck "${SANITIZE[@]}" --backends cuda --dtypes fp16 --no-model)
        echo "racecheck (cuda attention): $s" >>"$WORK/sanitizer.status"
    else
        echo "racecheck: skipped (${rest}s left in the phase)" >>"$WORK/sanitizer.status"
    fi
}

cap=$(( $(left) - BENCH_MIN_S ))
[ $cap -gt $CHECKS_S ] && cap=$CHECKS_S
if [ $DRY = 1 ]; then
    plan checks $cap "${PYTEST[*]} | side by side: ${SANITIZE[*]} (plain, then memcheck, then racecheck on cuda)"
elif [ -n "$SKIP" ]; then
    note tests "$SKIP"
    note sanitizer "$SKIP"
elif [ $cap -lt 30 ]; then
    note tests "not run (${cap}s left)"
else
    if command -v compute-sanitizer >/dev/null; then
        sanitizer_job "$cap" &
        SAN_PID=$!
    else
        echo "not run (compute-sanitizer is not on PATH)" >"$WORK/sanitizer.status"
        SAN_PID=""
    fi
    note tests "$(capped "$cap" "$OUT/tests.log" "${PYTEST[@]}"); $(grep -E "(passed|failed|errors?|no tests ran).* in \
[0-9.]+s" "$OUT/tests.log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')"
    [ -n "$SAN_PID" ] && wait "$SAN_PID"
    errors=$(grep -c "ERROR SUMMARY: [1-9]" "$OUT/sanitizer.log" 2>/dev/null)
    note sanitizer "$(paste -sd ';' "$WORK/sanitizer.status"); ${errors:-0} runs with errors"
fi

# --------------------------------------------------------------------------------------------------------------
# bench, then the torch.compile baselines within what is left
rm -rf "$WORK/bench" "$WORK/compile" "$WORK/results"
cap=$(( $(left) - COMPILE_PLAN_S ))
[ $cap -lt $BENCH_MIN_S ] && cap=$(( $(left) < BENCH_MIN_S ? $(left) : BENCH_MIN_S ))
[ $cap -gt $BENCH_MAX_S ] && cap=$BENCH_MAX_S
BENCH=("$PY" -m fastenc bench "${BENCH_CASES[@]}" --backends triton,cuda,sdpa,auto --no-compile
       --out "$WORK/bench" --budget-s $(( cap * 3 / 4 )))
if [ $DRY = 1 ]; then
    plan bench $cap "${BENCH[*]}"
elif [ -n "$SKIP" ]; then
    note bench "$SKIP"
elif [ $cap -lt 30 ]; then
    note bench "not run (${cap}s left)"
else
    note bench "$(capped "$cap" "$OUT/bench.log" "${BENCH[@]}")"
fi

cap=$(left)
# inductor's own Triton kernels go to a cache of their own: the one packed for the next session holds fastenc's
COMPILE=(env TRITON_CACHE_DIR="$WORK/triton-inductor" "$PY" -m fastenc bench "${BENCH_CASES[@]}" --backends none
         --compile --out "$WORK/compile" --budget-s $(( cap * 2 / 3 )))
if [ $DRY = 1 ]; then
    [ $cap -ge $COMPILE_MIN_S ] && plan compile $cap "${COMPILE[*]}" || echo "phase compile: skipped (${cap}s left)"
elif [ -n "$SKIP" ]; then
    note compile "$SKIP"
elif [ $cap -lt $COMPILE_MIN_S ]; then
    note compile "skipped (${cap}s left)"
else
    note compile "$(capped "$cap" "$OUT/bench.log" "${COMPILE[@]}")"
fi

# --------------------------------------------------------------------------------------------------------------
# pack: results, table, the Triton cache; the $OUT contract checked last
if [ $DRY = 1 ]; then
    plan pack $PACK_S "results.json + results.md (+ compile records merged), results-extra.tar.gz, triton-cache.tar.gz"
    echo "total planned: $PLANNED s"
    exit 0
fi
if [ -f "$WORK/bench/results.json" ]; then
    if [ -f "$WORK/compile/results.json" ]; then
        timeout 20 "$PY" -m benchmarks.gpu_kit merge-results "$WORK/bench/results.json" "$WORK/compile/results.json" \
            --out "$WORK/results" >>"$LOG" 2>&1 || cp -r "$WORK/bench" "$WORK/results"
    else
        cp -r "$WORK/bench" "$WORK/results"
    fi
    cp "$WORK/results/results.json" "$WORK/results/results.md" "$OUT/" 2>/dev/null
    cp "$WORK/bench/results.json" "$WORK/results/bench-run.json"
    [ -f "$WORK/compile/results.json" ] && cp "$WORK/compile/results.json" "$WORK/results/compile-run.json"
    [ -f "$WORK/bench/auto_table.json" ] && cp "$WORK/bench/auto_table.json" "$WORK/results/"
    tar -czf "$OUT/results-extra.tar.gz" -C "$WORK/results" --exclude results.json --exclude results.md . 2>>"$LOG"
else
    printf '%s\n' "no benchmark results:" "${SUMMARY[@]}" | grep -E "^(no |bench|compile)" >"$OUT/results.md"
fi
if [ -d "$TRITON_CACHE_DIR" ]; then
    after=$("$PY" -m benchmarks.gpu_kit cache-count "$TRITON_CACHE_DIR" 2>/dev/null || echo "?")
    say "Triton cache: ${after} kernels at the end, ${KERNELS_BEFORE:-0} at start (the difference compiled here)"
    timeout 20 "$PY" -m benchmarks.gpu_kit pack-cache "$TRITON_CACHE_DIR" "$OUT/triton-cache.tar.gz" --max-mb 15.9 \
        2>&1 | tee -a "$LOG"
fi
note pack done

echo "=== gpu_session.sh: ${SECONDS}s of ${SESSION_S}s" | tee -a "$LOG"
for line in "${SUMMARY[@]}"; do echo "  $line"; done | tee -a "$LOG"
grep -h -E "^(FAILED|ERROR) " "$OUT/tests.log" 2>/dev/null | head -n 25
grep -h -E "FAILED:|ERROR SUMMARY" "$OUT/sanitizer.log" 2>/dev/null | head -n 10
[ -f "$OUT/results.md" ] && head -n 40 "$OUT/results.md"
ls -l "$OUT"
n=$(find "$OUT" -type f | wc -l)
big=$(find "$OUT" -type f -size +16383k | wc -l)
[ "$n" -le 8 ] && [ "$big" -eq 0 ] || { echo "gpu_session.sh: \$OUT holds $n files, $big over 16 MiB" >&2; exit 1; }
for line in "${SUMMARY[@]}"; do  # exit 1 when any phase failed, timed out, was not run or found sanitizer errors
    case $line in
        *fail*|*timeout*|*"not run"*) exit 1 ;;
        *"runs with errors"*) [[ $line == *"; 0 runs with errors" ]] || exit 1 ;;
    esac
done
exit 0
