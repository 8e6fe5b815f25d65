#!/usr/bin/env bash
# One command for a GPU machine with no network: build the CUDA extension, run the GPU tests and the rest of the test
# suite, run compute-sanitizer's memcheck over a small model's forward + backward per backend, then `fastenc bench`.
# Logs go to $OUT/*.log and the results to $OUT/results (also packed as $OUT/results.tar.gz): at most 8 files.
#
#   benchmarks/run_gpu.sh [all|build|test|sanitize|bench] ...    (default: all; several stages may be named)
#
# Each stage has its own time limit so that `all` ends within DEADLINE_S seconds (default 560, under the device's
# 10 minutes a command); the benchmark gets what is left (its --budget-s) and stops starting new cases when spent.
# Environment: OUT (default ./out), DEADLINE_S, FASTENC_CUDA_ARCHS (default 90a: H100/H200 only, half the build),
# FASTENC_BENCH_ARGS (the bench's options; default: BERT-base fp16, the issue's inference shapes, training, ops).
# Never installs from the network: pip runs with --no-index --no-deps against what the machine already has.
set -x
set -o pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
DEADLINE_S=${DEADLINE_S:-560}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
declare -A STATUS

wants() {
    local s
    for s in "${STAGES[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done
    return 1
}

left() {  # seconds left before the deadline, minus a margin for packing the results
    echo $(( DEADLINE_S - SECONDS - 20 ))
}

run_stage() {  # run_stage NAME LIMIT_S LOG command...: runs with a time limit, records pass / fail / timeout
    local name=$1 limit=$2 log=$3
    shift 3
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    if [ "$limit" -le 5 ]; then
        STATUS[$name]="not run (deadline)"
        return
    fi
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$log" 2>&1
    local rc=$?
    case $rc in
        0) STATUS[$name]=pass ;;
        124|137) STATUS[$name]="timeout after ${limit}s" ;;
        *) STATUS[$name]="fail (exit $rc)" ;;
    esac
}

{
    nvidia-smi
    $PY -c "import torch, triton, transformers; print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
    nvcc --version
    git log -1 --oneline
} >"$OUT/build.log" 2>&1

if wants build; then
    export FASTENC_CUDA_ARCHS=${FASTENC_CUDA_ARCHS:-90a}
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    run_stage build 240 build.log env FASTENC_FORCE_CUDA=1 \
        $PY -m pip install -e . --no-build-isolation --no-index --no-deps -v
    $PY -c "import fastenc.backends as b; print('cuda backend:', b.unavailable_reason('cuda') or 'available')" \
        >>"$OUT/build.log" 2>&1
fi

if wants test; then
    # the full suite as two parts: the GPU-marked tests first (what only this machine can check), then the others
    # (which run on the GPU too where a test picks the device), in parallel when pytest-xdist is there
    XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")
    run_stage tests-gpu 120 tests_gpu.log $PY -m pytest tests -m gpu -q -rs --durations=15 -p no:cacheprovider
    # shellcheck disable=SC2086
    run_stage tests-rest 120 tests_rest.log $PY -m pytest tests -m "not gpu" -q -rs --durations=15 \
        -p no:cacheprovider $XDIST
fi

if wants sanitize; then
    # One small model, padded batch, forward + backward on each kernel backend. The caching allocator is off so that
    # memcheck sees each tensor as its own allocation (an overrun inside a cached block is invisible otherwise).
    SAN_PY='
import torch, fastenc, transformers
from fastenc.backends import unavailable_reason
cfg = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                              vocab_size=1000, max_position_embeddings=128)
hf = transformers.BertForMaskedLM(cfg).cuda()
twin = fastenc.from_hf(hf)
ids = torch.randint(5, 1000, (3, 61), device="cuda")
mask = torch.ones_like(ids)
mask[1, 40:] = 0
mask[2, 7:] = 0
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
    run_stage sanitize 90 sanitizer.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 $PY -c "$SAN_PY"
fi

if wants bench; then
    # default: what issue 5 asks for first (BERT-base fp16 against eager/sdpa/torch.compile), then the op table
    DEFAULT_BENCH="--models bert-base --dtypes fp16 --shapes 1x16,32x128,32x512,var,8x128,128x128 \
        --train-shapes 32x128,16x512 --op-shapes 32x128"
    # the budget stops new cases; the stage's limit (SIGTERM, then the results so far are written) catches a long one
    # shellcheck disable=SC2086
    run_stage bench 600 bench.log $PY -m fastenc bench ${FASTENC_BENCH_ARGS:-$DEFAULT_BENCH} \
        --out "$OUT/results" --no-progress --budget-s $(( $(left) * 3 / 4 ))
    if [ -d "$OUT/results" ]; then
        cp "$OUT/results/results.md" "$OUT/results.md" 2>/dev/null
        tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf "$OUT/results"
    fi
fi

set +x
echo "=== run_gpu.sh: ${SECONDS}s"
for k in "${!STATUS[@]}"; do echo "  $k: ${STATUS[$k]}"; done | sort | tee "$OUT/status.log"
tail -n 5 "$OUT"/tests_*.log 2>/dev/null
[ -f "$OUT/results.md" ] && head -n 60 "$OUT/results.md"
for k in "${!STATUS[@]}"; do [ "${STATUS[$k]}" = pass ] || exit 1; done
exit 0
