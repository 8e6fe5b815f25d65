"""Which backend runs an op, and why not the others.

Three backends implement every op: "cuda" (the compiled extension fastenc._C), "triton" (fastenc.kernels) and
"torch" (the pure-PyTorch `<op>_ref`, which runs anywhere). The choice is, in order: the op's explicit `backend=`
argument, else `set_backend` / `use_backend` / the FASTENC_BACKEND environment variable, else "auto".
"auto" takes the first backend of cuda > triton > torch that supports the call for CUDA tensors, and torch for CPU
tensors. A backend asked for by name that cannot run the call raises `BackendNotSupportedError`, which lists every
backend's reasons (xformers' `not_supported_reasons` idea), so a wrong setting never falls back silently.

Trade-off: the checks run in Python on every call (a few microseconds); they look only at tensor metadata, never
at data, so they never synchronise the device.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

BACKENDS = ("cuda", "triton", "torch")
_CHOICES = (*BACKENDS, "auto")

_state = threading.local()
_default: str | None = None


class BackendNotSupportedError(RuntimeError):
    """A backend was asked for by name and cannot run the call; the message lists every backend's reasons."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return name.lower()


def _env_default() -> str:
    global _default
    if _default is None:
        _default = _check_name(os.environ.get("FASTENC_BACKEND", "auto"))
    return _default


def get_backend() -> str:
    """The backend in force on this thread: the innermost `use_backend`, else `set_backend`, else FASTENC_BACKEND."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _env_default()


def set_backend(name: str) -> None:
    """Set the process-wide backend ("cuda" | "triton" | "torch" | "auto"); raises if it cannot run here at all."""
    global _default
    name = _check_name(name)
    if name != "auto":
        reason = unavailable_reason(name)
        if reason:
            raise BackendNotSupportedError(f"backend {name!r} is unavailable: {reason}")
    _default = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with another backend; restores the previous one on exit (thread-local)."""
    name = _check_name(name)
    if name != "auto":
        reason = unavailable_reason(name)
        if reason:
            raise BackendNotSupportedError(f"backend {name!r} is unavailable: {reason}")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


# ---------------------------------------------------------------------------------------------------------------
# Availability of each backend as a whole (cached: imports are expensive and the answer does not change).

_unavailable: dict[str, str | None] = {}
# torch.compile cannot trace importlib: functions that import are marked as torch.compiler.assume_constant_result
# marks them, by one attribute, set directly because calling that decorator imports torch._dynamo (~2 s) on
# `import fastenc` (tests/test_backends.py checks that the flag is still the decorator's).
_DYNAMO_CONSTANT_FLAG = "_dynamo_marked_constant"
_cuda_ext_warned = False


def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    return None


def _cuda_reason() -> str | None:
    global _cuda_ext_warned
    try:
        importlib.import_module("fastenc._cuda")
    except Exception as e:  # the extension is optional: a missing or broken build must not break `import fastenc`
        if not _cuda_ext_warned:
            _cuda_ext_warned = True
            warnings.warn(f"fastenc: CUDA extension fastenc._C is not available, backend 'cuda' is off ({e})",
                          stacklevel=3)
        return f"the CUDA extension fastenc._C is not built or failed to load ({e})"
    return None


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run at all in this process, or None if it can run somewhere."""
    if name == "torch":
        return None
    if name not in _unavailable:
        _unavailable[name] = _triton_reason() if name == "triton" else _cuda_reason()
    return _unavailable[name]


setattr(unavailable_reason, _DYNAMO_CONSTANT_FLAG, True)  # cached, constant per process; imports (see below)


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _import_launchers(name: str, op: str) -> ModuleType:
    if name == "triton":
        return importlib.import_module(f"fastenc.kernels.{op}")
    if name == "cuda":
        return importlib.import_module("fastenc._cuda")
    raise ValueError(f"backend {name!r} has no launchers")


def _launchers_module_name(name: str, op: str) -> str:
    return _import_launchers(name, op).__name__


# run at trace time; the module name is a constant
setattr(_launchers_module_name, _DYNAMO_CONSTANT_FLAG, True)


def launchers(name: str, op: str) -> ModuleType:
    """The module holding `<op>_fwd` / `<op>_bwd` (and `not_supported_reasons_<op>`) for backend `name`.
    Traceable by torch.compile (fullgraph): the import happens once, outside the graph."""
    return sys.modules[_launchers_module_name(name, op)]


def device_reasons(name: str, tensors: list[torch.Tensor | None], dtypes: tuple[torch.dtype, ...]) -> list[str]:
    """Reasons common to every op: availability, device, dtype."""
    reason = unavailable_reason(name)
    if reason:
        return [reason]
    if name == "torch":
        return []
    present = [t for t in tensors if t is not None]
    out = []
    devices = {t.device.type for t in present}
    if name == "cuda" and devices != {"cuda"}:
        out.append(f"needs CUDA tensors, got {sorted(devices)}")
    if name == "triton" and devices != {"cuda"}:
        if devices != {"cpu"}:
            out.append(f"needs tensors on one device type, got {sorted(devices)}")
        elif not triton_interpreter_on():
            out.append("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)")
    floats = {t.dtype for t in present if t.is_floating_point()}
    bad = sorted(str(d) for d in floats if d not in dtypes)
    if bad:
        out.append(f"dtype {', '.join(bad)} not supported (supports {', '.join(str(d) for d in dtypes)})")
    return out


def choose(
    op: str,
    tensors: list[torch.Tensor | None],
    backend: str | None,
    reasons: Callable[[str], list[str]],
) -> str:
    """Pick the backend for one call of `op`. `reasons(name)` lists why `name` cannot run this call (empty: it can)."""
    name = _check_name(backend) if backend is not None else get_backend()
    if name == "auto":
        on_cuda = any(t is not None and t.is_cuda for t in tensors)
        for candidate in (("cuda", "triton") if on_cuda else ()):
            if not reasons(candidate):
                return candidate
        return "torch"
    why = reasons(name)
    if why:
        lines = [f"fastenc.ops.{op}: backend {name!r} cannot run this call:"]
        for b in BACKENDS:
            r = reasons(b)
            lines.append(f"  {b}: " + ("supported" if not r else "; ".join(r)))
        raise BackendNotSupportedError("\n".join(lines))
    return name
