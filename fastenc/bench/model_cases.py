"""The model cases of a benchmark run: transformers (eager, sdpa, torch.compile) against fastenc's twin built by
`fastenc.from_hf` under each backend (and replayed through CUDA graphs at `graph_shapes`), inference and a training
step, on one set of weights.

Trade-off: one model set per (model, dtype, inference/training), reused across shapes and variants, which keeps a
full GPU run within minutes at the price of holding transformers' and fastenc's copies at once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fastenc import backends
from fastenc.bench import cases as C
from fastenc.bench.flops import encoder_flops
from fastenc.bench.measure import (
    MODEL_BASELINES,
    Settings,
    Skip,
    compile_fresh,
    first_line,
    implements,
    kernel_backend_reason,
    measure_variant,
    new_record,
    run_variant,
)

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
        out.compiled = compile_fresh(hf)
    for b in model_backends(settings):
        reason = kernel_backend_reason(b, dev)
        if reason is None:
            try:
                out.twins[b] = fastenc_twin(hf)
            except Exception as e:  # fastenc is broken here: its rows are errors, not skips
                out.twins[b] = RuntimeError(f"fastenc.from_hf failed: {first_line(e)}")
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

    return run_variant(record, body)


