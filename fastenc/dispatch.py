"""`choose(call, backend)`: the backend that runs one op call, the one entry point of the ops into dispatch.

A named backend runs the call or raises BackendNotSupportedError with every backend's reasons (nothing falls back
silently); "auto" asks fastenc.autotune for its ranking. `reference_runs(call)`: whether the reference is what
would run a call, for a caller that arranges its work differently then (fastenc.models.fused keeps a bias in its
matmul), asked here so that no caller restates the rules. The layers below it: fastenc.backends (the registry of
backends, what each supports, the reasons one cannot run a call) and fastenc.autotune (how auto ranks them).

Trade-off: one more module in the call path (a function call per op), in exchange for no import cycle between the
registry and the ranking that reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def reference_runs(call: Call, backend: str | None = None) -> bool:
    """Whether the reference ("torch") would run `call`: a named backend runs it (or raises) itself, "auto" runs the
    reference when no other candidate supports the call. Reads reasons only: nothing is ranked, timed or recorded."""
    name = backends.check_name(backend) if backend is not None else backends.get_backend()
    if name != "auto":
        return name == "torch"
    return all(n == "torch" or backends.not_supported_reasons(n, call) for n in backends.auto_candidates(call))
