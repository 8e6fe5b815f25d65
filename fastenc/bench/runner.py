"""Runs the cases: every variant of one case is timed in the same process, right after the others, on the same inputs.

Variants of an op: "eager" (the `<op>_ref` in PyTorch), "compile" (torch.compile of the same `<op>_ref`) and every
other backend candidate that implements the op ("triton", "cuda", "sdpa": torch's SDPA padded, varlen_attn packed;
"auto" when asked for) through the public `fastenc.ops.<op>(..., backend=name)`, side by side in one run.
Variants of a model: "hf-eager" and "hf-sdpa" (transformers with attn_implementation eager / sdpa, one set of
weights switched between the two), "hf-compile" (torch.compile of the sdpa model) and "fastenc-<backend>" (the twin
built by `fastenc.from_hf`, run under `fastenc.use_backend`) for the backends that implement every op, and at the
inference shapes of `graph_shapes` "fastenc-<backend>+graphs" (the twin replayed through `fastenc.cuda_graphs`,
GPU only). A variant that cannot run is recorded with its reason and never silently replaced; one that fails
records the error, and the run goes on.

The parts: fastenc.bench.measure (settings, environment and roofs, one variant's record and its timing),
fastenc.bench.op_cases and fastenc.bench.model_cases (the variants of each kind of case); this module plans the run
(models first, each built once), runs it within its time budget and adds the speedups, and re-exports the parts'
names.

Trade-off: one model is built per (model, dtype, inference/training) and reused across shapes and variants, which
keeps a full GPU run within minutes, at the price of holding transformers' and fastenc's copies at once. Inference
runs in the model dtype under inference_mode; training is a mixed-precision step (fp32 weights, autocast to the
dtype, forward + backward + AdamW) with the MLM head, as people train; fastenc's twins train with sparse MLM
prediction (the head on the labelled positions only; same loss), recorded as "sparse_mlm": true.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastenc.bench import cases as C
from fastenc.bench.measure import (  # noqa: F401  (the run's names, importable from here)
    BENCH_BACKENDS,
    CPU_NOTE,
    KERNEL_BACKENDS,
    MODEL_BASELINES,
    OP_BASELINES,
    Settings,
    Skip,
    environment,
    first_line,
    git_commit,
    implements,
    kernel_backend_reason,
    measure,
    measure_roofs,
    measure_variant,
    new_record,
)
from fastenc.bench.model_cases import (  # noqa: F401
    ModelSet,
    _backend_of,
    agreement,
    build_models,
    fastenc_twin,
    model_backends,
    model_variants,
    prepare_model,
    run_model_case,
    uses_sparse_mlm,
)
from fastenc.bench.op_cases import _op_call, _op_fn, op_variants, prepare_op, run_op_case  # noqa: F401

# ---------------------------------------------------------------------------------------------------------------
# The whole run


@dataclass
class Task:
    label: str
    run: Callable[[], list[dict[str, Any]]]


def plan(settings: Settings, roofs: dict[str, float]) -> list[Task]:
    """The run as a list of tasks (one per case, all its variants): models first (they matter most when a time budget
    cuts the run short), in an order that builds each model once, then ops."""
    tasks: list[Task] = []
    cache: dict[tuple, ModelSet] = {}

    def models_for(key: tuple) -> ModelSet:
        if key not in cache:
            cache.clear()
            gc.collect()
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
            cache[key] = build_models(*key, settings)
        return cache[key]

    for name in settings.models:
        for dtype in settings.dtypes:
            for train in ([False, True] if settings.train else [False]):
                for sname in (settings.train_shapes if train else settings.shapes):
                    shape = settings.shape(sname)

                    def run_models(name=name, dtype=dtype, train=train, shape=shape, sname=sname
                                   ) -> list[dict[str, Any]]:
                        try:
                            ms = models_for((name, dtype, train))
                        except Exception as e:  # e.g. out of memory: every variant of the case records it
                            return [{**new_record("model", name, dtype, shape, "train" if train else "infer", v),
                                     "status": "error", "reason": f"building the models failed: {first_line(e)}"}
                                    for v in model_variants(settings, sname, train)]
                        return [run_model_case(ms, name, shape, dtype, train, v, settings, roofs)
                                for v in model_variants(settings, sname, train)]
                    tasks.append(Task(f"{name} {dtype} {sname} {'train' if train else 'infer'}", run_models))
    for op in settings.ops:
        for sname in settings.op_shapes:
            shape = settings.shape(sname)
            for dtype in settings.dtypes:
                for mode in settings.op_modes:
                    def run_ops(op=op, shape=shape, dtype=dtype, mode=mode) -> list[dict[str, Any]]:
                        cache.clear()  # the last model set is no longer needed
                        return [run_op_case(op, shape, dtype, mode, v, settings, roofs)
                                for v in op_variants(settings, op)]
                    tasks.append(Task(f"{op} {dtype} {sname} {mode}", run_ops))
    return tasks


def add_speedups(records: list[dict[str, Any]]) -> None:
    """speedup[baseline] = baseline's latency / this variant's latency, within each case, for every measured one."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["kind"], r["name"], r["dtype"], r["shape"], r["mode"]), {})[r["variant"]] = r
    for (kind, *_), variants in groups.items():
        bases = OP_BASELINES if kind == "op" else MODEL_BASELINES
        for v, r in variants.items():
            if r["status"] != "ok":
                continue
            r["speedup"] = {b: variants[b]["ms"] / r["ms"] for b in bases
                            if b != v and b in variants and variants[b]["status"] == "ok"}


def run(settings: Settings, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every task of `settings`; returns {"meta", "roofs", "settings", "records"} (the JSON document)."""
    for dtype in settings.dtypes:
        if dtype not in C.DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(C.DTYPES)}")
    for b in settings.backends:
        if b not in BENCH_BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BENCH_BACKENDS)}")
        reason = kernel_backend_reason(b, settings.device)
        if reason:
            log(f"fastenc bench: backend {b!r} is not measured: {reason}")
    threads = torch.get_num_threads()
    if settings.cpu_demo:  # tiny ops: one thread is faster, and far steadier on a shared machine
        torch.set_num_threads(1)
    try:
        return _run(settings, progress, log)
    finally:
        torch.set_num_threads(threads)


def _run(settings: Settings, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    meta = environment(settings.device)
    meta["cpu_threads"] = torch.get_num_threads() if settings.device.type == "cpu" else None
    log(f"fastenc bench on {meta['device']}: measuring the matmul peak and the copy bandwidth")
    roofs = measure_roofs(settings.device)
    tasks = plan(settings, roofs)
    start = time.monotonic()
    deadline = start + settings.budget_s if settings.budget_s else math.inf
    records: list[dict[str, Any]] = []
    over_budget: list[str] = []
    interrupted = False
    bar = _progress(len(tasks), progress)
    try:
        for task in tasks:
            bar.set_description(task.label[:40])
            if time.monotonic() > deadline:
                over_budget.append(task.label)
            else:
                records += task.run()
            bar.update(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see cli): keep and report what was measured
        interrupted = True
        log("fastenc bench: interrupted, writing the cases measured so far")
    bar.close()
    del tasks  # frees the models held by the plan
    if over_budget:
        log(f"fastenc bench: time budget of {settings.budget_s:.0f} s spent; {len(over_budget)} cases not run")
    add_speedups(records)
    missing = sum(r["status"] != "ok" for r in records)
    meta["elapsed_s"] = time.monotonic() - start
    return {"meta": meta, "roofs": roofs, "settings": _settings_json(settings), "records": records,
            "summary": {"measured": len(records) - missing, "not_measured": missing, "over_budget": over_budget,
                        "interrupted": interrupted}}


def _settings_json(settings: Settings) -> dict[str, Any]:
    out = copy.copy(vars(settings))
    out["device"] = str(settings.device)
    out["var_range"] = list(settings.var_range)
    return out


class _NoBar:
    def set_description(self, _: str) -> None:
        pass

    def update(self, _: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, unit="case", dynamic_ncols=True)
        except ImportError:
            pass
    return _NoBar()
