"""Attention autotune configs: what `kernels/_configs.py` keeps per GPU, dtype, head dim and sequence length, and
that the kept configs compile for sm_80 and sm_90 without spills (fp16 / bf16) and within the GPU's shared memory
(every dtype). Also that the programs per SM that reduce_programs gives the row-op backward kernels fit the register
file of an SM, as ptxas compiles them for sm_80.

The compile checks run Triton's compiler (no GPU: fastenc.precompile's stand-in driver) in a subprocess without the
interpreter. The default run compiles a representative subset: per target, the worst case for registers (head dim
128 with dropout on sm_90, head dim 64 packed with dropout on sm_80) at a short sequence, where one config per
kernel is kept (about 30 s of CPU). FASTENC_SLOW=1 compiles every kept config of every variant of ALL_CASES (about
300 binaries: 41 minutes on 2 shared cores).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections import Counter

import pytest
import torch

from fastenc.kernels import _configs as C
from fastenc.precompile import TARGETS

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK_DS = (16, 32, 64, 128)
BUCKETS = (16, 64, 128, 512, 4096)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kept_configs_are_few_and_fit(target):
    limit, arch = TARGETS[target].max_shared, TARGETS[target].arch
    for kernel in C.KERNELS:
        for block_d in BLOCK_DS:
            for bucket in BUCKETS:
                fp32 = C.kept(kernel, 4, block_d, bucket, limit, arch)
                assert fp32 == [C.FP32[kernel]]
                kept = C.kept(kernel, 2, block_d, bucket, limit, arch)
                assert set(kept) <= set(C.candidates(kernel, block_d, arch))
                assert 1 <= len(kept) <= C.MAX_KEPT <= 4, (kernel, block_d, bucket, kept)
                assert len(set(kept)) == len(kept)
                for c in kept + fp32:
                    assert C.shared_estimate(kernel, c, block_d, 2 if c in kept else 4) <= limit, (kernel, c)


@pytest.mark.parametrize("arch", [80, 90])
def test_short_sequences_keep_one_small_config(arch):
    for kernel in C.KERNELS:
        for block_d in BLOCK_DS:
            cands = C.candidates(kernel, block_d, arch)
            long = C.kept(kernel, 2, block_d, 512, TARGETS["sm_80"].max_shared, arch)
            short = C.kept(kernel, 2, block_d, 16, TARGETS["sm_80"].max_shared, arch)
            assert len(short) == 1 and short[0] in cands
            owned = 1 if kernel == "dkdv" else 0
            assert short[0][owned] == min(c[owned] for c in cands)
            assert len(long) >= len(short)


def test_ampere_and_hopper_lists_differ_where_ptxas_differs():
    assert C.candidates("dkdv", 64, 80) != C.candidates("dkdv", 64, 90)
    assert C.candidates("dkdv", 64, 86) == C.candidates("dkdv", 64, 80)
    assert C.candidates("fwd", 128, 89) == C.candidates("fwd", 128, 80) != C.candidates("fwd", 128, 90)


def test_every_config_holds_whole_dropout_patches():
    """The attention dropout scheme (kernels/attention.py) draws one Philox call per 16 query rows x 32 keys patch:
    every config of every list, the fp32 ones and the interpreter's included, is made of whole patches."""
    configs = [C._as_tuple(c) for c in C.configs("fwd") + C.configs("dkdv") + C.configs("dq")]
    configs += [*C.FP32.values(), C.INTERPRETER_CONFIG]
    tables = (C.CANDIDATES, C.DROPOUT, C.DROPOUT_PADDED, C.WINDOW, C.WINDOW_DROPOUT, C.AMPERE, C.AMPERE_DROPOUT)
    configs += [c for t in tables for lists in t.values() for cs in lists.values() for c in cs]
    for m, n, _, _ in configs:
        assert m % 16 == 0 and n % 32 == 0, (m, n)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("kernel", C.KERNELS)
def test_candidates_give_each_warp_its_own_rows(kernel, arch):
    # a dot chained into another puts every warp along the owned rows, 16 rows each (see _configs); on sm_90 in
    # whole warpgroups of 4 warps (wgmma), 64 rows each
    for block_d in (64, 128):
        for dropout in (False, True):
            for c in C.candidates(kernel, block_d, arch, dropout):
                assert C._owned_rows(kernel, c) >= 16 * c[2], (kernel, block_d, c)
                if arch >= 90:
                    assert c[2] % 4 == 0 and C._owned_rows(kernel, c) >= 64 * (c[2] // 4), (kernel, block_d, c)


def test_dropout_variants_get_their_own_lists():
    """Dropout takes the DROPOUT lists (sm_90, packed or windowed), DROPOUT_PADDED before them (sm_90, padded, no
    window), AMPERE_DROPOUT (sm_80)."""
    for arch, table, other in ((90, C.DROPOUT, C.AMPERE_DROPOUT), (80, C.AMPERE_DROPOUT, C.DROPOUT)):
        for kernel, by_d in table.items():
            for d, cands in by_d.items():
                assert C.candidates(kernel, d, arch, True, packed=True) == cands != C.candidates(kernel, d, arch)
        for kernel, by_d in other.items():
            for d in by_d:
                if d not in table.get(kernel, {}):
                    assert C.candidates(kernel, d, arch, dropout=True, packed=True) == C.candidates(kernel, d, arch)
    for kernel, by_d in C.DROPOUT_PADDED.items():
        for d, cands in by_d.items():
            assert C.candidates(kernel, d, 90, dropout=True) == cands != C.candidates(kernel, d, 90, True, packed=True)
            assert C.candidates(kernel, d, 90, True, window=True) == C.candidates(kernel, d, 90, True, packed=True)
            if d not in C.AMPERE_DROPOUT.get(kernel, {}):
                assert C.candidates(kernel, d, 80, dropout=True) == C.candidates(kernel, d, 80)
    limit = TARGETS["sm_90a"].max_shared
    assert C.kept("dkdv", 2, 64, 512, limit, 90, dropout=True)[0] == C.DROPOUT_PADDED["dkdv"][64][0]
    assert C.kept("dkdv", 2, 64, 512, limit, 90, dropout=True, packed=True)[0] == C.DROPOUT["dkdv"][64][0]
    assert C.kept("fwd", 2, 64, 512, limit, 90, dropout=True)[0] == C.DROPOUT["fwd"][64][0]
    named = {"q_ptr": torch.empty(1, dtype=torch.float16), "seqlen_bucket": 512}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "_device", lambda: (90, limit))
        mp.setattr(C, "interpreter_on", lambda: False)
        cfgs = C.configs("fwd")
        for packed in (False, True):
            got = C.prune("fwd")(cfgs, named, BLOCK_D=64, DROPOUT=True, WINDOW=False, PACKED=packed,
                                 INPUT_PRECISION="ieee")
            assert [C._as_tuple(g) for g in got] == C.kept("fwd", 2, 64, 512, limit, 90, True, packed=packed)


def test_window_variants_get_their_own_lists_on_sm90():
    """The windowed forward on sm_90 takes the WINDOW list (its own candidates, through prune too); with dropout the
    dropout list; other kernels and sm_80 keep theirs."""
    assert C.candidates("fwd", 64, 90, window=True) == C.WINDOW["fwd"][64] != C.candidates("fwd", 64, 90)
    assert C.candidates("fwd", 64, 90, dropout=True, window=True) == C.WINDOW_DROPOUT["fwd"][64]
    for kernel, by_d in C.WINDOW_DROPOUT.items():
        for d, cands in by_d.items():
            assert C.candidates(kernel, d, 90, dropout=True, window=True) == cands
            assert C.candidates(kernel, d, 90, dropout=True, window=True, packed=True) == cands
            assert set(cands) < set(C.candidates(kernel, d, 90, dropout=True))
    assert C.candidates("dq", 64, 90, window=True) == C.WINDOW["dq"][64] != C.candidates("dq", 64, 90)
    assert C.candidates("dkdv", 64, 90, window=True) == C.candidates("dkdv", 64, 90)
    assert C.candidates("fwd", 64, 80, window=True) == C.candidates("fwd", 64, 80)
    for c in C.WINDOW["fwd"][64]:
        assert c[2] % 4 == 0 and C._owned_rows("fwd", c) >= 64 * (c[2] // 4), c
    named = {"q_ptr": torch.empty(1, dtype=torch.float16), "seqlen_bucket": 512}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "_device", lambda: (90, TARGETS["sm_90a"].max_shared))
        mp.setattr(C, "interpreter_on", lambda: False)
        cfgs = C.configs("fwd")
        got = C.prune("fwd")(cfgs, named, BLOCK_D=64, DROPOUT=False, WINDOW=True, INPUT_PRECISION="ieee")
    assert [C._as_tuple(g) for g in got] == C.kept("fwd", 2, 64, 512, TARGETS["sm_90a"].max_shared, 90, window=True)
    assert C._as_tuple(got[0]) == C.WINDOW["fwd"][64][0]


def test_smaller_shared_memory_keeps_fewer_or_smaller_configs():
    big, small = TARGETS["sm_90a"].max_shared, TARGETS["sm_86"].max_shared
    for kernel in C.KERNELS:
        kept_small = C.kept(kernel, 2, 128, 512, small, 86)
        assert all(C.shared_estimate(kernel, c, 128, 2) <= small for c in kept_small)
        assert len(kept_small) <= len(C.kept(kernel, 2, 128, 512, big, 86))
    # a budget nothing fits: the config with the smallest estimate, never an empty list
    tiny = C.kept("fwd", 2, 128, 512, 1024, 90)
    assert tiny == [min(C.CANDIDATES["fwd"][128], key=lambda c: C.shared_estimate("fwd", c, 128, 2))]


def test_prune_picks_from_the_autotuner_list(monkeypatch):
    monkeypatch.setattr(C, "_device", lambda: (80, TARGETS["sm_80"].max_shared))
    monkeypatch.setattr(C, "interpreter_on", lambda: False)
    for kernel in C.KERNELS:
        cfgs = C.configs(kernel)
        assert len(cfgs) == len({C._as_tuple(c) for c in cfgs}) > 1
        for dtype, block_d, bucket in ((torch.float16, 64, 512), (torch.bfloat16, 128, 128), (torch.float32, 128, 512)):
            named = {"q_ptr": torch.empty(1, dtype=dtype), "seqlen_bucket": bucket}
            got = C.prune(kernel)(cfgs, named, BLOCK_D=block_d, DROPOUT=True, INPUT_PRECISION="ieee")
            assert all(any(g is c for c in cfgs) for g in got)
            want = C.kept(kernel, dtype.itemsize, block_d, bucket, TARGETS["sm_80"].max_shared, 80, True)
            assert [C._as_tuple(g) for g in got] == want


def test_interpreter_gets_one_config_and_bad_names_fail():
    assert [C._as_tuple(c) for c in C.configs("dq")] == [C.INTERPRETER_CONFIG]  # tests run under the interpreter
    with pytest.raises(ValueError, match="kernel"):
        C.configs("bwd")


def test_attention_autotuners_use_the_pruned_lists_and_key():
    from fastenc.kernels import attention as A

    assert "INPUT_PRECISION" in C.TUNE_KEY
    for kernel, tuner in (("fwd", A._attention_fwd_kernel), ("dkdv", A._attention_bwd_dkdv_kernel),
                          ("dq", A._attention_bwd_dq_kernel)):
        assert tuner.keys == C.TUNE_KEY
        assert tuner.early_config_prune is not None
        assert [C._as_tuple(c) for c in tuner.configs] == [C._as_tuple(c) for c in C.configs(kernel)]


# ---------------------------------------------------------------------------------------------------------------
# Compiled for sm_80 / sm_90 (no GPU)

_SCRIPT = """
import dataclasses, json, sys
from fastenc.precompile import compile_attention
out = []
for case in json.loads(sys.argv[1]):
    out.append([dataclasses.asdict(k) for k in compile_attention(*case)])
print(json.dumps(out))
"""

# (target, dtype, head_dim, dropout, packed, seqlen)
DEFAULT_CASES = [("sm_90a", "fp16", 128, True, False, 16), ("sm_80", "bf16", 64, True, True, 16)]
ALL_CASES = [(t, dt, d, drop, packed, 512) for t in ("sm_80", "sm_90a") for dt in ("fp16", "bf16", "fp32")
             for d in (32, 64, 128) for drop in (False, True) for packed in (drop,)]


def _run(script: str, *args: str):
    """JSON printed last by `script`, run with Triton's compiler (no interpreter) in a subprocess."""
    triton_backends = pytest.importorskip("triton.backends")
    if "nvidia" not in triton_backends.backends:
        pytest.skip("triton has no nvidia backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _compile(cases: list[tuple]) -> list[list[dict]]:
    return _run(_SCRIPT, json.dumps(cases))


def _check(cases: list[tuple], results: list[list[dict]]) -> None:
    problems = []
    for case, kernels in zip(cases, results, strict=True):
        names = Counter(k["name"] for k in kernels)
        assert {"_attention_fwd_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel"} <= set(names)
        assert max(names.values()) <= C.MAX_KEPT, (case, names)
        for k in kernels:
            if k["regs"] < 0:
                problems.append(f"{case}: {k['name']} needs {k['shared']} B of shared memory, over the target's")
            elif k["spill_bytes"] > 0 and case[1] != "fp32":
                problems.append(f"{case}: {k['name']} {k['blocks']} {k['num_warps']} warps {k['num_stages']} stages "
                                f"spills {k['spill_bytes']} B/thread")
    assert not problems, "\n".join(problems)


def test_kept_configs_compile_without_spills_representative():
    _check(DEFAULT_CASES, _compile(DEFAULT_CASES))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FASTENC_SLOW") != "1", reason="set FASTENC_SLOW=1 (about 15 minutes)")
def test_every_kept_config_compiles_without_spills():
    _check(ALL_CASES, _compile(ALL_CASES))


_ROW_SCRIPT = """
import json, torch
from fastenc.kernels import _common, add_layer_norm as A, embeddings as E, gelu_layer_norm as G
from fastenc.precompile import target, target_driver
_common._sm_count = lambda index: 1
programs = {}
for mod, name in ((A, "_add_layer_norm_bwd_kernel"), (E, "_embeddings_bwd_kernel"), (G, "_gelu_layer_norm_bwd_kernel")):
    def per_sm(device, rows, warps, name=name, **kw):
        programs[name] = _common.reduce_programs(torch.device("cuda", 0), 1 << 30, warps, **kw)
        return 2
    mod.reduce_programs = per_sm
n, d = 8, 768
g = torch.Generator().manual_seed(0)
r = lambda *shape: torch.randn(*shape, generator=g).half()
seed, mean, rstd = torch.tensor([1]), torch.zeros(n), torch.ones(n)
ids = torch.randint(0, 16, (n,), generator=g)
with target_driver(target("sm_80")) as fake:
    A._bwd_impl(r(n, d), r(n, d), r(d), mean, rstd, 0.1, seed, True)
    G._bwd_impl(r(n, d), r(n, d), r(d), r(d), mean, rstd, False)
    E._bwd_impl(r(n, d), ids, torch.arange(n), ids % 2, r(16, d), r(n, d), r(2, d), r(d), mean, rstd, 0.1, seed, 0, -1)
print(json.dumps([dict(name=k.name, regs=k.regs, warps=k.num_warps, programs=programs[k.name])
                  for k in fake.kernels.values()]))
"""


def test_row_backward_programs_per_sm_fit_the_register_file():
    kernels = _run(_ROW_SCRIPT)
    assert len(kernels) == 3
    for k in kernels:
        assert k["regs"] > 0
        per_warp = -(-k["regs"] * 32 // 256) * 256  # registers are allocated per warp in units of 256
        assert per_warp * k["warps"] * k["programs"] <= 65536, k
        assert k["warps"] * k["programs"] >= 16, k  # at least the 16 warps per SM these kernels had before
    assert {k["name"]: k["warps"] * k["programs"] for k in kernels if "layer_norm" in k["name"]} == {
        "_add_layer_norm_bwd_kernel": 32, "_gelu_layer_norm_bwd_kernel": 32}
