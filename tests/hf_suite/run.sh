#!/usr/bin/env bash
# Usage: ./run.sh MODE [pytest args...]   MODE = off | classes | optimize
# Runs transformers' own BERT/RoBERTa/ALBERT/ELECTRA model tests (or the paths/args you pass) with fastenc swapped
# in per MODE (see fastenc_swap.py). Writes results/MODE.xml (junit), results/MODE.log (full output) and
# results/MODE.txt (summary line + failed/errored test ids). Extra env: FASTENC_HF_OPTIMIZE_STYLE=inplace|subclass,
# TIMEOUT (seconds, default 2400).
# The transformers test tree (not shipped in transformers' wheel or sdist: see README.md) is HF_TREE; this folder's
# plugin is copied into it.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
TREE="${HF_TREE:?set HF_TREE to the assembled transformers test tree (see README.md)}"
cp "$HERE/fastenc_swap.py" "$TREE/fastenc_swap.py"
cp "$HERE/hf_conftest.py" "$TREE/conftest.py"
cd "$TREE"
MODE="${1:?usage: run.sh off|classes|optimize [pytest args]}"; shift
case "$MODE" in off|classes|optimize) ;; *) echo "MODE must be off, classes or optimize" >&2; exit 2;; esac
TESTS=(tests/models/bert/test_modeling_bert.py tests/models/roberta/test_modeling_roberta.py
       tests/models/albert/test_modeling_albert.py tests/models/electra/test_modeling_electra.py)
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=("${TESTS[@]}")
mkdir -p results
FASTENC_HF_MODE="$MODE" HF_HUB_OFFLINE=1 timeout "${TIMEOUT:-2400}" python -m pytest -q -p no:cacheprovider -rfE \
    --junitxml="results/$MODE.xml" "${ARGS[@]}" > "results/$MODE.log" 2>&1
RC=$?
SUMMARY=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|^=+ .*(passed|failed|error).* in ' "results/$MODE.log" | tail -1)
{
  echo "mode=$MODE rc=$RC ${SUMMARY:-no summary line (timeout? see results/$MODE.log)}"
  grep -E '^(FAILED|ERROR) ' "results/$MODE.log" | sed -E 's/ - .*//' | sort -u
} > "results/$MODE.txt"
head -1 "results/$MODE.txt"
exit $RC
