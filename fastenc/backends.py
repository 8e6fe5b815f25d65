"""Which backend runs an op, and why not the others: one table of backends per op, one reasons function.

Backends: "cuda" (the compiled extension fastenc._C, module fastenc._cuda), "triton" (fastenc.kernels.<op>), "sdpa"
(torch's own fused attention, module fastenc._sdpa; attention only) and "torch" (the pure-PyTorch `<op>_ref` of
fastenc.ops, which runs anywhere). `IMPLEMENTS` is the table of which backends implement each op. Every backend
module declares what it supports as plain data, `SUPPORT = {op: {"devices": ..., "dtypes": ..., ...}}` (keys in
`SUPPORT_KEYS`), plus an optional hook `not_supported_reasons(op, call)` for what a declaration cannot say
(alignment, grid limits); `not_supported_reasons(name, call)` below turns the declaration into reasons, so no op
writes its own. Kernel modules only declare data: they never import this module (the kernels sit below the front).

Choice, in order: the op's explicit `backend=` argument, else `set_backend` / `use_backend` / FASTENC_BACKEND, else
"auto". A backend named explicitly that cannot run the call raises `BackendNotSupportedError` listing every
backend's reasons: nothing falls back silently. "auto" ranks the supported backends with fastenc.autotune (an
on-device timing when tuning is on, else the shipped table of recorded runs, else the default preference) and
records the choice and why for `fastenc.explain()`.

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
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import torch

BACKENDS = ("cuda", "triton", "sdpa", "torch")
_CHOICES = (*BACKENDS, "auto")
_ROW_OPS = ("embeddings", "add_layer_norm", "bias_gelu", "gelu_layer_norm", "gated_act")
IMPLEMENTS: dict[str, tuple[str, ...]] = {
    **{op: ("cuda", "triton", "torch") for op in _ROW_OPS},
    "attention": ("cuda", "triton", "sdpa", "torch"),
}
SUPPORT_KEYS = ("devices", "dtypes", "head_dims", "max_head_dim", "max_hidden", "min_capability", "layouts",
                "dropout", "features")


class _State(threading.local):
    """Per-thread stack of use_backend names; every thread starts with an empty one (no attribute that appears
    later, which would fail a torch.compile guard taken while it was missing)."""

    def __init__(self) -> None:
        self.stack: list[str] = []


_state = _State()
# set_backend's name, else FASTENC_BACKEND as given (checked at use, so that a bad value fails there, not at import);
# never changed by a call, so a graph traced with it stays valid until set_backend changes it
_default: str = os.environ.get("FASTENC_BACKEND", "auto")


class BackendNotSupportedError(RuntimeError):
    """A backend was asked for by name and cannot run the call; the message lists every backend's reasons."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return name.lower()


def get_backend() -> str:
    """The backend in force on this thread: the innermost `use_backend`, else `set_backend`, else FASTENC_BACKEND."""
    stack = _state.stack
    return stack[-1] if stack else check_name(_default)


def _check_available(name: str) -> str:
    name = check_name(name)
    if name != "auto":
        reason = unavailable_reason(name)
        if reason:
            raise BackendNotSupportedError(f"backend {name!r} is unavailable: {reason}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide backend ("cuda" | "triton" | "sdpa" | "torch" | "auto"); raises if it cannot run here.

    "sdpa" implements attention only: the other ops then raise, listing the backends that can run them."""
    global _default
    _default = _check_available(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with another backend; restores the previous one on exit (thread-local)."""
    name = _check_available(name)
    stack = _state.stack
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


def _import_reason(module: str, what: str) -> str | None:
    global _cuda_ext_warned
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # optional parts: a missing or broken one must not break `import fastenc`
        if module == "fastenc._cuda" and not _cuda_ext_warned:
            _cuda_ext_warned = True
            warnings.warn(f"fastenc: CUDA extension fastenc._C is not available, backend 'cuda' is off ({e})",
                          stacklevel=5)
        return f"{what} ({e})"
    # triton: a release outside the declared range is off too (its private names are looked up on import)
    return mod.release_reason() if module == _TRITON_INTERNALS else None


_TRITON_INTERNALS = "fastenc.kernels._triton_internals"
_AVAILABILITY = {
    "cuda": ("fastenc._cuda", "the CUDA extension fastenc._C is not built or failed to load"),
    "triton": (_TRITON_INTERNALS, "triton is not installed or failed to import"),
    "sdpa": ("fastenc._sdpa", "torch.nn.functional.scaled_dot_product_attention is missing"),
}


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run at all in this process, or None if it can run somewhere."""
    if name == "torch":
        return None
    if name not in _unavailable:
        _unavailable[name] = _import_reason(*_AVAILABILITY[name])
    return _unavailable[name]


setattr(unavailable_reason, _DYNAMO_CONSTANT_FLAG, True)  # cached, constant per process; imports (see below)


def triton_notes() -> list[str]:
    """What runs slower or not at all with the installed triton although backend "triton" is available: the fast
    launch path when off (the interpreter, a release it does not mirror, a private name moved), the interpreter's
    loops with the installed numpy, and `fastenc precompile` / `fastenc bench --host` when a private name they read
    moved. Empty when triton is unavailable."""
    if unavailable_reason("triton"):
        return []
    internals = importlib.import_module(_TRITON_INTERNALS)
    launch = importlib.import_module("fastenc.kernels._launch")
    notes = [f"fast launch path off: {launch.fast_path_reason()}"] if launch.fast_path_reason() else []
    notes += [internals.interpreter_reason()] if internals.interpreter_reason() else []
    return notes + [r for r in map(internals.unavailable_reason, (internals.PRECOMPILE, internals.HOST)) if r]





def _launchers_module_name(name: str, op: str) -> str:
    if name not in BACKENDS or name == "torch" or name not in IMPLEMENTS.get(op, ()):
        raise ValueError(f"backend {name!r} has no launchers for op {op!r}")
    module = {"cuda": "fastenc._cuda", "triton": f"fastenc.kernels.{op}", "sdpa": "fastenc._sdpa"}[name]
    return importlib.import_module(module).__name__


# run at trace time; the module name is a constant
setattr(_launchers_module_name, _DYNAMO_CONSTANT_FLAG, True)


_modules: dict[tuple[str, str], ModuleType] = {}


def launchers(name: str, op: str) -> ModuleType:
    """The module of backend `name` for `op`: its launchers (`<op>_fwd` / `<op>_bwd`, or `<op>` for sdpa) and its
    SUPPORT declaration. Traceable by torch.compile (fullgraph): the import happens once, outside the graph."""
    if torch.compiler.is_compiling():  # no cache read while tracing: its first entry would fail a guard (below)
        return sys.modules[_launchers_module_name(name, op)]
    module = _modules.get((name, op))
    if module is None:
        module = _modules[(name, op)] = sys.modules[_launchers_module_name(name, op)]
    return module


# ---------------------------------------------------------------------------------------------------------------
# The call and the reasons.


class Call:
    """What the dispatcher needs to know about one call of an op: its tensors (by argument name, None = absent),
    layout ("rows" for the row ops, "padded" / "packed" for attention), head dim, hidden size, whether dropout is
    on, the optional features it uses that not every backend has (e.g. "attn_bias"), and its length: the sequence
    length for attention, the number of rows for the row ops (auto buckets it)."""

    __slots__ = ("op", "tensors", "layout", "head_dim", "hidden", "dropout", "features", "length")

    def __init__(self, op: str, tensors: Mapping[str, torch.Tensor | None], *, length: int, layout: str = "rows",
                 head_dim: int | None = None, hidden: int | None = None, dropout: bool = False,
                 features: tuple[str, ...] = ()) -> None:
        self.op, self.tensors, self.layout, self.head_dim, self.hidden = op, tensors, layout, head_dim, hidden
        self.dropout, self.features, self.length = dropout, features, length

    def signature(self) -> tuple:
        """Everything a SUPPORT declaration can look at: op, layout, sizes, dropout, features, and each present
        tensor's device and dtype."""
        return (self.op, self.layout, self.head_dim, self.hidden, self.dropout, self.features,
                tuple((t.device, t.dtype) for t in self.tensors.values() if t is not None))

    def present(self) -> list[torch.Tensor]:
        return [t for t in self.tensors.values() if t is not None]

    @property
    def device(self) -> torch.device:
        return self.present()[0].device

    @property
    def dtype(self) -> torch.dtype:
        floats = [t.dtype for t in self.present() if t.is_floating_point()]
        return floats[0] if floats else torch.float32


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def kernel_image_reason(capability: tuple[int, int], archs: str | None) -> str | None:
    """Why a CUDA build for `archs` (e.g. "sm_80+sm_90a+compute_90": cubins and PTX) has no code for a device of
    `capability`, or None if it has. A cubin sm_XY runs on capability X.Z with Z >= Y (sm_XYa on X.Y only); PTX
    compute_XY is compiled by the driver for any capability >= X.Y. archs None (a build that does not say): None."""
    if archs is None:
        return None
    for arch in archs.replace(";", "+").split("+"):
        kind, _, num = arch.strip().partition("_")
        specific = num.endswith("a")
        num = num.rstrip("a")
        built = (int(num[:-1]), int(num[-1]))
        if kind == "sm" and built[0] == capability[0] and (built[1] == capability[1] if specific
                                                            else built[1] <= capability[1]):
            return None
        if kind == "compute" and not specific and built <= tuple(capability):
            return None
    major, minor = capability
    return (f"fastenc._C has no kernel image for sm_{major}{minor} (built for {archs}); rebuild it with "
            f"FASTENC_CUDA_ARCHS including {major}{minor}")


def _declared_reasons(support: Mapping[str, Any], call: Call) -> list[str]:
    out = []
    present = call.present()
    devices = {t.device.type for t in present}
    allowed = support.get("devices")
    if len(devices) > 1:
        out.append(f"needs tensors on one device type, got {sorted(devices)}")
    elif allowed is not None and not devices <= set(allowed):
        out.append(f"runs on {'/'.join(allowed)} tensors, got {sorted(devices)[0]}")
    floats = {t.dtype for t in present if t.is_floating_point()}
    dtypes = support.get("dtypes")
    bad = sorted(str(d) for d in floats if dtypes is not None and d not in dtypes)
    if bad:
        out.append(f"dtype {', '.join(bad)} not supported (supports {', '.join(str(d) for d in dtypes)})")
    head_dims, max_head_dim = support.get("head_dims"), support.get("max_head_dim")
    if call.head_dim is not None and head_dims is not None and call.head_dim not in head_dims:
        out.append(f"head_dim {call.head_dim} not supported (supports {tuple(head_dims)})")
    if call.head_dim is not None and max_head_dim is not None and call.head_dim > max_head_dim:
        out.append(f"head_dim {call.head_dim} > {max_head_dim}")
    max_hidden = support.get("max_hidden")
    if call.hidden is not None and max_hidden is not None and call.hidden > max_hidden:
        out.append(f"hidden size {call.hidden} > {max_hidden}")
    cap = support.get("min_capability")
    if cap is not None and devices == {"cuda"} and _capability(call.device) < tuple(cap):
        out.append(f"needs compute capability {cap[0]}.{cap[1]} or newer")
    layouts = support.get("layouts", ("rows",))
    if call.layout not in layouts:
        out.append(f"{call.layout} layout not supported (supports {', '.join(layouts)})")
    if call.dropout and not support.get("dropout", True):
        out.append("no dropout")
    out += [f"{f} not supported" for f in call.features if f not in support.get("features", ())]
    return out


# (backend, call.signature()) -> (declared reasons, the backend's hook or None): metadata only, so cached
_declared: dict[tuple, tuple[list[str], Callable | None]] = {}


def not_supported_reasons(name: str, call: Call) -> list[str]:
    """Why backend `name` cannot run `call` ([] = it can): availability, then the backend's declared support for
    the op (both cached per call signature), then the backend's own hook (run on every call: it reads what a
    signature leaves out, such as alignment)."""
    if name == "torch":
        return []
    signature = call.signature()
    # While torch.compile traces, the caches are not read: dynamo guards on a dict's contents, so a graph traced
    # before (or while) an entry is added would be compiled again at the next call. The reasons are metadata only,
    # computed at trace time and never in the graph.
    entry = None if torch.compiler.is_compiling() else _declared.get((name, signature))
    if entry is None:
        declared = _static_reasons(name, call)
        hook = None if declared else getattr(launchers(name, call.op), "not_supported_reasons", None)
        entry = (declared, hook)
        if not torch.compiler.is_compiling():
            _declared[(name, signature)] = entry
    declared, hook = entry
    if declared:
        return list(declared)
    return hook(call.op, call) if hook is not None else []


def _static_reasons(name: str, call: Call) -> list[str]:
    if name not in IMPLEMENTS[call.op]:
        return [f"does not implement {call.op}"]
    reason = unavailable_reason(name)
    if reason:
        return [reason]
    return _declared_reasons(launchers(name, call.op).SUPPORT[call.op], call)


def not_supported_error(call: Call, name: str) -> BackendNotSupportedError:
    lines = [f"fastenc.ops.{call.op}: backend {name!r} cannot run this call:"]
    names = IMPLEMENTS[call.op] if name in IMPLEMENTS[call.op] else (name, *IMPLEMENTS[call.op])
    for b in names:
        r = not_supported_reasons(b, call)
        lines.append(f"  {b}: " + ("supported" if not r else "; ".join(r)))
    return BackendNotSupportedError("\n".join(lines))
