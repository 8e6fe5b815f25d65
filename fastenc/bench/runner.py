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

Trade-off: one model is built per (model, dtype, inference/training) and reused across shapes and variants, which
keeps a full GPU run within minutes, at the price of holding transformers' and fastenc's copies at once. Inference
runs in the model dtype under inference_mode; training is a mixed-precision step (fp32 weights, autocast to the
dtype, forward + backward + AdamW) with the MLM head, as people train; fastenc's twins train with sparse MLM
prediction (the head on the labelled positions only; same loss), recorded as "sparse_mlm": true.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import inspect
import math
import platform
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fastenc import backends
from fastenc.bench import cases as C
from fastenc.bench import timing
from fastenc.bench.flops import encoder_flops

OP_BASELINES = ("eager", "compile")
MODEL_BASELINES = ("hf-eager", "hf-sdpa", "hf-compile")
KERNEL_BACKENDS = ("triton", "cuda", "sdpa")
BENCH_BACKENDS = (*backends.BACKENDS, "auto")
CPU_NOTE = ("kernel backends are timed on a CUDA device only: speed needs a GPU (on the CPU, Triton runs under its "
            "interpreter, a correctness tool)")
_CPU_BACKENDS = ("torch", "sdpa", "auto")  # torch's own kernels: their CPU timings mean something


@dataclass
class Settings:
    """Everything that chooses what is run. Defaults are the standard GPU suite."""

    device: torch.device
    models: list[str] = field(default_factory=lambda: list(C.GPU_MODELS))
    shapes: list[str] = field(default_factory=lambda: list(C.INFER_SHAPES))
    train_shapes: list[str] = field(default_factory=lambda: list(C.TRAIN_SHAPES))
    dtypes: list[str] = field(default_factory=lambda: ["fp16", "bf16"])
    backends: list[str] = field(default_factory=lambda: list(KERNEL_BACKENDS))
    ops: list[str] = field(default_factory=lambda: list(C.OPS))
    op_shapes: list[str] = field(default_factory=lambda: list(C.OP_SHAPES))
    op_modes: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    op_dims: dict[str, int] = field(default_factory=lambda: dict(C.BASE_DIMS))
    train: bool = True
    compile: bool = True
    var_batch: int = C.VAR_BATCH
    var_range: tuple[int, int] = (C.VAR_MIN, C.VAR_MAX)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    budget_s: float | None = None
    graph_shapes: list[str] = field(default_factory=lambda: ["1x16"])  # inference shapes also timed in CUDA graphs
    cpu_demo: bool = False

    @classmethod
    def cpu_demo_settings(cls, device: torch.device) -> Settings:
        """The CPU demo: the same pipeline on a tiny BERT, fp32, reference path against transformers."""
        return cls(device=device, models=["bert-tiny"], shapes=["1x16", "8x32", "var"], train_shapes=["8x32"],
                   dtypes=["fp32"], backends=["torch", "sdpa"], op_shapes=["8x32"], op_dims=dict(C.TINY_DIMS),
                   compile=False, var_batch=8, var_range=(8, 64), warmup_ms=10.0, rep_ms=60.0, graph_shapes=[],
                   cpu_demo=True)

    def shape(self, name: str) -> C.Shape:
        return C.parse_shape(name, self.var_batch, self.var_range)


# ---------------------------------------------------------------------------------------------------------------
# Environment and roofs


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def git_commit() -> str | None:
    """The commit of the checkout fastenc runs from (with '+dirty' for local changes), None outside a git tree."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, commit and date: what a recorded run must say about itself."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    with warnings.catch_warnings():  # the reasons are recorded; the extension's import warning would repeat them
        warnings.simplefilter("ignore")
        backend_status = {b: backends.unavailable_reason(b) or "available" for b in backends.BACKENDS}
    return {
        "device": name,
        "device_type": device.type,
        "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "fastenc": _version("fastenc"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backends": backend_status,
    }


def measure_roofs(device: torch.device) -> dict[str, float]:
    """The matmul peak (fp16 on the GPU, fp32 on the CPU) and the copy bandwidth, measured now."""
    if device.type == "cuda":
        return {"matmul_tflops": timing.matmul_peak_tflops(device), "copy_gbps": timing.copy_bandwidth_gbps(device),
                "matmul_dtype": "fp16"}
    return {"matmul_tflops": timing.matmul_peak_tflops(device, n=512, dtype=torch.float32),
            "copy_gbps": timing.copy_bandwidth_gbps(device, nbytes=2**26), "matmul_dtype": "fp32"}


# ---------------------------------------------------------------------------------------------------------------
# Records


class Skip(Exception):
    """A variant that cannot run here; the message says why."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def new_record(kind: str, name: str, dtype: str, shape: C.Shape, mode: str, variant: str) -> dict[str, Any]:
    return {"kind": kind, "name": name, "dtype": dtype, "shape": shape.name, "batch": shape.batch, "seq": shape.seq,
            "tokens": shape.tokens, "mode": mode, "variant": variant, "status": "ok"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(record: dict[str, Any], calls: list[Callable[[], object]], settings: Settings, roofs: dict[str, float],
            flops: int = 0, nbytes: int = 0) -> dict[str, Any]:
    """Time `calls` into `record`: latency, tokens/s, TFLOP/s and MFU (flops > 0), GB/s (nbytes > 0), and on the GPU
    the peak memory: all allocated (peak_mem_mib, weights of every resident model included) and above what was
    allocated before the variant ran (peak_extra_mib: activations, workspaces, optimizer state on its first step)."""
    dev = settings.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        resident = torch.cuda.memory_allocated(dev)
    t0 = time.perf_counter()
    calls[0]()
    _sync(dev)
    record["first_call_s"] = time.perf_counter() - t0
    t = timing.time_calls(calls, dev, warmup_ms=settings.warmup_ms, rep_ms=settings.rep_ms)
    record.update(ms=t.median_ms, ms_p20=t.p20_ms, ms_p80=t.p80_ms, runs=t.runs,
                  tokens_per_s=record["tokens"] / (t.median_ms * 1e-3))
    if flops:
        tflops = flops / (t.median_ms * 1e-3) / 1e12
        record.update(flops=flops, tflops=tflops, mfu=tflops / roofs["matmul_tflops"])
    if nbytes:
        gbps = nbytes / (t.median_ms * 1e-3) / 1e9
        record.update(bytes=nbytes, gbps=gbps, bw_frac=gbps / roofs["copy_gbps"])
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        record.update(peak_mem_mib=peak / 2**20, peak_extra_mib=(peak - resident) / 2**20)
    return record


def _run_variant(record: dict[str, Any], body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return body()
    except (Skip, backends.BackendNotSupportedError) as e:
        record.update(status="skipped", reason=str(e))
    except Exception as e:  # one broken variant must not end the run: record it and go on
        record.update(status="error", reason=_first_line(e))
    return record


def kernel_backend_reason(name: str, device: torch.device) -> str | None:
    """Why fastenc backend `name` is not timed here, or None."""
    if name in ("torch", "auto"):
        return None
    if device.type != "cuda" and name not in _CPU_BACKENDS:
        return CPU_NOTE
    return backends.unavailable_reason(name)


def implements(name: str, op: str) -> bool:
    """Whether backend `name` (or "auto") has an implementation of fastenc.ops.`op`."""
    return name == "auto" or name in backends.IMPLEMENTS[op]


# ---------------------------------------------------------------------------------------------------------------
# Ops


def _compiled(fn: Callable) -> Callable:
    """torch.compile with static shapes, as a fresh start: every case of the run gets its own specialised graph
    instead of hitting dynamo's recompile limit (past which it would silently run eager)."""
    torch.compiler.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # a recompile storm is recorded, never timed as eager
    return torch.compile(fn, dynamic=False)


def _op_fn(op: str, variant: str) -> Callable:
    import fastenc.ops as ops

    ref = getattr(ops, f"{C.public_op(op)}_ref")
    if variant == "eager":
        return ref
    if variant == "compile":
        return _compiled(ref)
    return functools.partial(getattr(ops, C.public_op(op)), backend=variant)


def _op_call(fn: Callable, args: tuple, kwargs: dict, mode: str) -> Callable[[], object]:
    if mode == "fwd":
        def call() -> object:
            with torch.no_grad():
                return fn(*args, **kwargs)
        return call
    leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    # with autograd on, as timed (a compiled fn traces the graph it will run); an op may return a tuple (rotary)
    outs = [o.detach() for o in _outputs(fn(*args, **kwargs))]
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]

    def call_bwd() -> object:
        for t in leaves:
            t.grad = None
        return torch.autograd.backward(_outputs(fn(*args, **kwargs)), grads)
    return call_bwd


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def op_variants(settings: Settings, op: str | None = None) -> list[str]:
    """The baselines and every asked-for backend (that implements `op`, when given; "torch" is the eager baseline
    itself)."""
    out = list(OP_BASELINES if settings.compile else OP_BASELINES[:1])
    return out + [b for b in settings.backends if b != "torch" and (op is None or implements(b, C.public_op(op)))]


def prepare_op(op: str, shape: C.Shape, dtype: str, mode: str, variant: str, settings: Settings
               ) -> tuple[list[Callable[[], object]], int, int]:
    """The calls (one per input copy) of one op variant, its matmul FLOPs and its ideal bytes (fwd only); Skip."""
    if variant not in OP_BASELINES:
        if not implements(variant, C.public_op(op)):
            raise Skip(f"backend {variant!r} does not implement {C.public_op(op)}")
        reason = kernel_backend_reason(variant, settings.device)
        if reason:
            raise Skip(reason)
    case = C.op_case(op, shape, **settings.op_dims)
    dt = C.DTYPES[dtype]
    fn = _op_fn(op, variant)
    n_copies = timing.copies_for(case.bytes(dt), settings.device)
    calls = [_op_call(fn, *case.make(dt, settings.device, mode != "fwd"), mode) for _ in range(n_copies)]
    flops = case.flops * 7 // 2 if mode == "fwd+bwd" else case.flops
    return calls, flops, case.bytes(dt) if mode == "fwd" else 0


def measure_variant(record: dict[str, Any], calls: list[Callable[[], object]], settings: Settings,
                    roofs: dict[str, float], flops: int = 0, nbytes: int = 0) -> dict[str, Any]:
    """`measure`, where a failure of a torch.compile baseline is recorded as that baseline's limit (Skip)."""
    try:
        return measure(record, calls, settings, roofs, flops=flops, nbytes=nbytes)
    except Exception as e:
        if record["variant"] in ("compile", "hf-compile"):
            raise Skip(f"torch.compile failed: {_first_line(e)}") from e
        raise


def run_op_case(op: str, shape: C.Shape, dtype: str, mode: str, variant: str, settings: Settings,
                roofs: dict[str, float]) -> dict[str, Any]:
    record = new_record("op", op, dtype, shape, mode, variant)

    def body() -> dict[str, Any]:
        calls, flops, nbytes = prepare_op(op, shape, dtype, mode, variant, settings)
        return measure_variant(record, calls, settings, roofs, flops=flops, nbytes=nbytes)

    return _run_variant(record, body)


# ---------------------------------------------------------------------------------------------------------------
# Models


def fastenc_twin(hf_model: torch.nn.Module) -> torch.nn.Module:
    """fastenc's twin of a transformers model, via `fastenc.from_hf`, on the model's device and dtype."""
    import fastenc

    p = next(hf_model.parameters())
    twin = fastenc.from_hf(hf_model).to(device=p.device, dtype=p.dtype)
    return twin.train(hf_model.training)


@dataclass
class ModelSet:
    """The built models of one (model, dtype, mode): transformers' model, its compiled form and fastenc's twins
    (sharing transformers' parameters), or for each the reason it is missing."""

    hf: torch.nn.Module
    compiled: torch.nn.Module | None = None
    compile_reason: str | None = None
    twins: dict[str, torch.nn.Module | str | Exception] = field(default_factory=dict)  # str: skip; Exception: error
    graphs: dict[str, Any] = field(default_factory=dict)  # backend -> fastenc.cuda_graphs runner of its twin


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_models(name: str, dtype: str, train: bool, settings: Settings) -> ModelSet:
    from transformers import AutoModel, AutoModelForMaskedLM

    config = C.model_config(name)
    torch.manual_seed(0)
    factory = AutoModelForMaskedLM if train else AutoModel
    hf = factory.from_config(config, attn_implementation="sdpa")
    dev = settings.device
    hf = hf.to(dev) if train else hf.to(device=dev, dtype=C.DTYPES[dtype])
    hf.train(train)
    out = ModelSet(hf)
    if settings.compile:
        out.compiled = _compiled(hf)
    for b in model_backends(settings):
        reason = kernel_backend_reason(b, dev)
        if reason is None:
            try:
                out.twins[b] = fastenc_twin(hf)
            except Exception as e:  # fastenc is broken here: its rows are errors, not skips
                out.twins[b] = RuntimeError(f"fastenc.from_hf failed: {_first_line(e)}")
        else:
            out.twins[b] = reason
    return out


def model_backends(settings: Settings) -> list[str]:
    """The asked-for backends a whole model can run under: those that implement every op."""
    return [b for b in settings.backends if all(implements(b, op) for op in backends.IMPLEMENTS)]


def model_variants(settings: Settings, shape: str | None = None, train: bool = False) -> list[str]:
    """The variants of a model case; `shape` (inference) in settings.graph_shapes adds the CUDA-graph ones."""
    out = list(MODEL_BASELINES if settings.compile else MODEL_BASELINES[:2])
    fast = [f"fastenc-{b}" for b in model_backends(settings)]
    graphs = [f"{v}+graphs" for v in fast] if shape in settings.graph_shapes and not train else []
    return out + fast + graphs


def _backend_of(variant: str) -> str:
    """The fastenc backend of a "fastenc-<backend>[+graphs]" variant."""
    return variant.removeprefix("fastenc-").removesuffix("+graphs")


def _variant_model(ms: ModelSet, variant: str) -> tuple[torch.nn.Module, Callable[[], Any]]:
    """The module a model variant runs and the context it runs in; Skip when the variant cannot run."""
    if variant.startswith("fastenc-"):
        b = _backend_of(variant)
        twin = ms.twins[b]
        if isinstance(twin, str):
            raise Skip(twin)
        if isinstance(twin, Exception):
            raise twin
        if variant.endswith("+graphs"):
            if not next(twin.parameters()).is_cuda:
                raise Skip("CUDA graphs need a CUDA device")
            if b not in ms.graphs:
                from fastenc.graphs import cuda_graphs

                ms.graphs[b] = cuda_graphs(twin)
            return ms.graphs[b], functools.partial(_use_backend, b)
        return twin, functools.partial(_use_backend, b)
    if variant == "hf-compile":
        if ms.compiled is None:
            raise Skip(ms.compile_reason or "torch.compile is off (--no-compile)")
        ms.hf.set_attn_implementation("sdpa")
        return ms.compiled, contextlib.nullcontext
    ms.hf.set_attn_implementation(variant.removeprefix("hf-"))
    return ms.hf, contextlib.nullcontext


def uses_sparse_mlm(model: torch.nn.Module, train: bool) -> bool:
    """Whether a training step runs `model` with sparse MLM prediction: fastenc's MLM heads take it, transformers'
    have no such option."""
    return train and "sparse_prediction" in inspect.signature(model.forward).parameters


def _model_calls(ms: ModelSet, variant: str, inputs: list[dict[str, torch.Tensor]], train: bool, dtype: torch.dtype,
                 device: torch.device) -> list[Callable[[], object]]:
    """One inference forward, or one training step, of `variant` per input copy. Training gets a fresh AdamW per
    case, so every variant's peak memory counts its optimizer state alike (allocated at its first step)."""
    model, ctx = _variant_model(ms, variant)
    if not train:
        def forward(x: dict[str, torch.Tensor]) -> object:
            with ctx(), torch.inference_mode():
                return model(**x)
        return [functools.partial(forward, x) for x in inputs]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    extra = {"sparse_prediction": True} if uses_sparse_mlm(model, train) else {}

    def step(x: dict[str, torch.Tensor]) -> object:
        with ctx():
            with _autocast(device, dtype):
                loss = model(**x, **extra).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return [functools.partial(step, x) for x in inputs]


@contextlib.contextmanager
def _use_backend(name: str) -> Iterator[None]:
    import fastenc

    with fastenc.use_backend(name):
        yield


def prepare_model(ms: ModelSet, name: str, shape: C.Shape, dtype: str, train: bool, variant: str,
                  settings: Settings) -> tuple[list[Callable[[], object]], int]:
    """The calls (one per input copy) of one model variant and the case's matmul FLOPs; Skip when it cannot run."""
    config = C.model_config(name)
    inputs = [C.model_inputs(config, shape, settings.device, mlm_labels=train) for _ in range(2)]
    calls = _model_calls(ms, variant, inputs, train, C.DTYPES[dtype], settings.device)
    return calls, encoder_flops(config, shape.lengths, pooler=C.has_pooler(config, train), mlm_head=train,
                                training=train)


def agreement(ms: ModelSet, variant: str, name: str, shape: C.Shape, device: torch.device) -> float:
    """Largest |fastenc - transformers (sdpa)| of last_hidden_state over the real tokens: a check that the timed
    fast path (a "fastenc-*" variant) computes the same thing."""
    x = C.model_inputs(C.model_config(name), shape, device)
    model, ctx = _variant_model(ms, variant)
    ms.hf.set_attn_implementation("sdpa")
    with torch.inference_mode():
        ref = ms.hf(**x).last_hidden_state
        with ctx():
            out = model(**x).last_hidden_state
    keep = x["attention_mask"].bool()
    return (out[keep].float() - ref[keep].float()).abs().max().item()


def run_model_case(ms: ModelSet, name: str, shape: C.Shape, dtype: str, train: bool, variant: str,
                   settings: Settings, roofs: dict[str, float]) -> dict[str, Any]:
    record = new_record("model", name, dtype, shape, "train" if train else "infer", variant)

    def body() -> dict[str, Any]:
        calls, flops = prepare_model(ms, name, shape, dtype, train, variant, settings)
        if variant.startswith("fastenc-") and uses_sparse_mlm(ms.twins[_backend_of(variant)], train):
            record["sparse_mlm"] = True
        if variant.startswith("fastenc-") and not train:
            record["max_abs_diff"] = agreement(ms, variant, name, shape, settings.device)
        try:
            return measure_variant(record, calls, settings, roofs, flops=flops)
        except Skip as e:
            if variant == "hf-compile":  # later shapes of this model skip at once instead of failing again
                ms.compiled, ms.compile_reason = None, str(e)
            raise

    return _run_variant(record, body)


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
                                     "status": "error", "reason": f"building the models failed: {_first_line(e)}"}
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
