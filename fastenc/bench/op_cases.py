"""The op cases of a benchmark run: variants "eager" (the `<op>_ref`), "compile" (torch.compile of it) and every
backend that implements the op through the public `fastenc.ops.<op>(..., backend=name)`, timed on the same inputs.

Trade-off: every compile baseline starts from a reset of torch.compile (a graph per case, static shapes), which
costs its compile time per case but never times a recompile-limited graph as eager.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from fastenc.bench import cases as C
from fastenc.bench import timing
from fastenc.bench.measure import (
    OP_BASELINES,
    Settings,
    Skip,
    compile_fresh,
    implements,
    kernel_backend_reason,
    measure_variant,
    new_record,
    run_variant,
)

# ---------------------------------------------------------------------------------------------------------------
# Ops


def _op_fn(op: str, variant: str) -> Callable:
    import fastenc.ops as ops

    ref = getattr(ops, f"{C.public_op(op)}_ref")
    if variant == "eager":
        return ref
    if variant == "compile":
        return compile_fresh(ref)
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


def run_op_case(op: str, shape: C.Shape, dtype: str, mode: str, variant: str, settings: Settings,
                roofs: dict[str, float]) -> dict[str, Any]:
    record = new_record("op", op, dtype, shape, mode, variant)

    def body() -> dict[str, Any]:
        calls, flops, nbytes = prepare_op(op, shape, dtype, mode, variant, settings)
        return measure_variant(record, calls, settings, roofs, flops=flops, nbytes=nbytes)

    return run_variant(record, body)


