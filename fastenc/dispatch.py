"""`run_op(call, backend, ...)`: how every public op runs one call, the one entry point of the ops into dispatch;
`choose(call, backend)`: the backend it runs with.

A named backend runs the call or raises BackendNotSupportedError with every backend's reasons (nothing falls back
silently); "auto" asks fastenc.autotune for its ranking. `reference_runs(call)`: whether the reference is what
would run a call, for a caller that arranges its work differently then (fastenc.models.fused keeps a bias in its
matmul), asked here so that no caller restates the rules. The layers below it: fastenc.backends (the registry of
backends, what each supports, the reasons one cannot run a call) and fastenc.autotune (how auto ranks them).

`run_op` is the template every op shares: choose the backend; the reference runs as the op's own `<op>_ref`; a
kernel backend runs its launcher directly when autograd need not record the call (inference: no autograd.Function,
no saved tensors), else through the op's autograd Fn. Each op states only what differs, as closures.

Trade-off: one more module in the call path (a function call per op) and a few closures per call, in exchange for
one template instead of seven copies and no import cycle between the registry and the ranking that reads it. The
closures are plain Python that torch.compile inlines (fullgraph), so a traced model sees the same graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastenc import autotune, backends
from fastenc.backends import Call


def choose(call: Call, backend: str | None, run: Callable[[str], Any] | None = None) -> str:
    """The backend for one call. `run(name)` runs the call with backend `name`: auto times it when tuning is on."""
    name = backends.check_name(backend) if backend is not None else backends.get_backend()
    if name == "auto":
        return autotune.pick(call, run)
    if backends.not_supported_reasons(name, call):
        raise backends.not_supported_error(call, name)
    return name


def grad_needed(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must record an op on these inputs: grad mode on and one of them requires grad. When it
    need not (inference), the op calls its launcher directly: no autograd.Function, no saved tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def run_op(
    call: Call,
    backend: str | None,
    rerun: Callable[[str], Any],
    *,
    ref: Callable[[], Any],
    launch: Callable[[str], Any],
    apply: Callable[[str], Any],
    grad_inputs: tuple[torch.Tensor | None, ...],
    own_autograd: tuple[str, ...] = (),
) -> Any:
    """Run one op call: `ref()` when the reference is chosen, `launch(name)` (the launcher, no autograd) when no
    tensor of `grad_inputs` needs a gradient or the backend is in `own_autograd` (its launcher records autograd
    itself: sdpa), else `apply(name)` (the op's autograd Fn). `rerun(name)` reruns the whole op with backend `name`,
    for auto's tuner (see `choose`)."""
    name = choose(call, backend, rerun)
    if name == "torch":
        return ref()
    if name in own_autograd or not grad_needed(*grad_inputs):
        return launch(name)
    return apply(name)


def reference_runs(call: Call, backend: str | None = None) -> bool:
    """Whether the reference ("torch") would run `call`: a named backend runs it (or raises) itself, "auto" runs the
    reference when no other candidate supports the call. Reads reasons only: nothing is ranked, timed or recorded."""
    name = backends.check_name(backend) if backend is not None else backends.get_backend()
    if name != "auto":
        return name == "torch"
    return all(n == "torch" or backends.not_supported_reasons(n, call) for n in backends.auto_candidates(call))
