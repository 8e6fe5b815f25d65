"""Every private name of triton that fastenc reads, looked up here once, each with the path it serves.

Triton's runtime internals (JITFunction's and the Autotuner's fields, CompiledKernel's launcher, triton.knobs and its
HookChain, the driver's active slot, the interpreter's run, the cache key) are no API: any release may move them.
fastenc reads them only for optional paths: the fast launch path (LAUNCH, kernels/_launch.py), `fastenc precompile`
and its stand-in driver (PRECOMPILE, also used by `fastenc bench --host`), the host benchmark's stubbed interpreter
(HOST), the attention kernels' TMA loads (TMA: whether a scratch allocator is set), and tests (TESTS). INTERNALS
is the one table; each name is resolved at import by its dotted path, without evaluating properties (reading
`driver.active` would create a driver), fields set per instance on a probe instance.
A name that is absent turns off only the paths that read it, with a reason (`missing()`, `report()`,
`unavailable_reason(use)`); the kernels themselves need only public triton (jit, autotune, language), and no
import in fastenc fails. SUPPORTED is the declared range of releases (pyproject.toml's triton requirement);
`interpreter_reason()` says when the installed triton's interpreter cannot run the kernels with the installed numpy.
tests/test_triton_internals.py holds one canary per name.

Trade-off: a table and a resolver instead of plain imports, and callers that check a reason before using a name,
in exchange for a triton release that moves a name costing that one path (said so), never `import fastenc` or an
AttributeError in the middle of a launch.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import triton

SUPPORTED = ((3, 6), (3, 9))  # lowest and highest (major, minor) release of the declared range, both ends tested

LAUNCH, PRECOMPILE, HOST, TESTS = "the fast launch path", "fastenc precompile", "fastenc bench --host", "tests"
TMA = "the attention kernels' TMA loads (tensor descriptors made on the device need triton's scratch allocator)"


def release(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of a triton version string ("3.6.0", "3.9.0+git1234")."""
    m = re.match(r"(\d+)\.(\d+)", version or triton.__version__)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@dataclass(frozen=True)
class Internal:
    """One private name: its dotted path in triton, the path of fastenc that reads it, the first release that has it
    (names read only from that release on: the launch mirror's knobs), and whether only a compiled kernel has it."""

    name: str
    use: str
    since: tuple[int, int] = SUPPORTED[0]
    compiled_only: bool = False  # a field of a CompiledKernel: checked on the first kernel compiled, not at import


_J, _A, _K = "triton.runtime.jit.JITFunction", "triton.runtime.autotuner.Autotuner", "triton.knobs"
INTERNALS = (
    Internal(_J, LAUNCH),
    *(Internal(f"{_J}.{f}", LAUNCH) for f in ("run", "params", "do_not_specialize", "do_not_specialize_on_alignment",
                                              "pre_run_hooks", "used_global_vals", "debug")),
    *(Internal(f"triton.runtime.jit.KernelParam.{f}", LAUNCH)
      for f in ("name", "is_constexpr", "annotation", "has_default", "default")),
    Internal("triton.compiler.CompiledKernel", LAUNCH),
    Internal("triton.compiler.CompiledKernel.run", LAUNCH),
    *(Internal(f"triton.compiler.CompiledKernel.{f}", LAUNCH, compiled_only=True) for f in ("function",
                                                                                             "packed_metadata")),
    Internal(f"{_K}.HookChain", LAUNCH),
    Internal(f"{_K}.HookChain.calls", LAUNCH),
    Internal(f"{_K}.runtime", LAUNCH),
    Internal(f"{_K}.compilation", LAUNCH),
    *(Internal(f"{_K}.runtime.{f}", LAUNCH) for f in ("launch_enter_hook", "launch_exit_hook",
                                                      "add_stages_inspection_hook", "debug")),
    Internal(f"{_K}.compilation.instrumentation_mode", LAUNCH),
    Internal(f"{_K}.compilation.fpsan_homomorphic_casts", LAUNCH, since=(3, 9)),
    Internal("triton.runtime.driver.driver", LAUNCH),
    Internal("triton.runtime.driver.driver.active", LAUNCH),
    Internal("triton.runtime.driver.driver._active", PRECOMPILE),
    Internal("triton.runtime.driver.driver.set_active", PRECOMPILE),
    Internal("triton.runtime.jit.KernelInterface", PRECOMPILE),
    Internal(f"{_J}.device_caches", PRECOMPILE),
    Internal(f"{_J}.arg_names", PRECOMPILE),
    Internal(_A, PRECOMPILE),
    *(Internal(f"{_A}.{f}", PRECOMPILE) for f in ("fn", "configs", "cache", "cache_results", "do_bench")),
    Internal("triton.backends.compiler.GPUTarget", PRECOMPILE),
    Internal("triton.runtime.cache.triton_key", PRECOMPILE),
    Internal(f"{_K}.cache.dir", PRECOMPILE),
    Internal("triton.runtime.cache.get_cache_manager", PRECOMPILE),  # --report: the PTX of a compiled kernel
    Internal("triton.backends.nvidia.compiler.get_ptxas", PRECOMPILE),  # --report: ptxas's warnings (C7515)
    Internal("triton.runtime.interpreter.InterpretedFunction", HOST),
    Internal("triton.runtime.interpreter.InterpretedFunction.run", HOST),
    Internal("triton.runtime._allocation._allocator", TMA),  # the ContextVar triton.set_allocator sets
    Internal("triton.runtime._allocation.NullAllocator", TMA),  # its value while no allocator is set
    Internal("triton.compiler.compiler.LazyDict", TESTS),
    Internal("triton.compiler.ASTSource", TESTS),
    Internal("triton.backends.backends", TESTS),  # which backends this triton build has (tests skip without nvidia)
)

_ABSENT = object()


def _probe_fn(x_ptr, n, BLOCK: triton.language.constexpr = 1):  # noqa: N803 (a kernel's constexpr name)
    """A function JITFunction and Autotuner wrap, only so that their per-instance fields can be looked up."""


def _probes() -> dict[str, Any]:
    """Instances of the classes whose fields are set per instance, by dotted class name."""
    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        from triton.runtime.jit import JITFunction

        jit = out[_J] = JITFunction(_probe_fn)
        out["triton.runtime.jit.KernelParam"] = jit.params[0]
        from triton.runtime.autotuner import Autotuner

        out[_A] = triton.autotune(configs=[triton.Config({})], key=[])(jit)
        assert isinstance(out[_A], Autotuner)
    with contextlib.suppress(Exception):
        from triton import knobs

        out[f"{_K}.HookChain"] = knobs.runtime.launch_enter_hook
    return out


def _resolve(name: str, probes: dict[str, Any]) -> Any:
    """The object at dotted `name`, or _ABSENT. An attribute defined on the class is returned as the class defines it
    (a property such as driver.active is never run); a field set per instance is read from vars() of the instance, or
    of the probe instance of its class."""
    parts = name.split(".")
    obj: Any = _ABSENT
    for i in range(len(parts), 0, -1):  # the longest importable module prefix
        with contextlib.suppress(ImportError):
            obj = importlib.import_module(".".join(parts[:i]))
            break
    if obj is _ABSENT:
        return _ABSENT
    path = ".".join(parts[:i])
    for part in parts[i:]:
        if isinstance(obj, ModuleType):
            obj = getattr(obj, part, _ABSENT)
        else:
            cls = obj if isinstance(obj, type) else type(obj)
            owner = next((c for c in cls.__mro__ if part in vars(c)), None)
            if owner is not None:
                obj = vars(owner)[part]
            elif not isinstance(obj, type) and part in vars(obj):
                obj = vars(obj)[part]
            elif path in probes and part in vars(probes[path]):
                obj = vars(probes[path])[part]
            else:
                obj = _ABSENT
        if obj is _ABSENT:
            return _ABSENT
        path += "." + part
    return obj


def _expected(item: Internal) -> bool:
    return release() >= item.since


def _lookup() -> dict[str, Any]:
    probes = _probes()
    return {i.name: _resolve(i.name, probes) for i in INTERNALS if not i.compiled_only and _expected(i)}


_BY_NAME = {i.name: i for i in INTERNALS}
_found = _lookup()


def missing(use: str | None = None) -> dict[str, str]:
    """Absent names (of `use`, or all) -> the path they turn off, on the installed triton release."""
    return {name: _BY_NAME[name].use for name, v in _found.items()
            if v is _ABSENT and (use is None or _BY_NAME[name].use == use)}


def get(name: str) -> Any:
    """The object at `name` (an entry of INTERNALS), or None when this triton release lacks it."""
    v = _found.get(name, _ABSENT)
    return None if v is _ABSENT else v


def release_reason() -> str | None:
    """Why the installed triton release is not one fastenc supports, or None."""
    lo, hi = SUPPORTED
    if lo <= release() <= hi:
        return None
    return (f"triton {triton.__version__} is outside fastenc's supported range {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]} "
            f"(pyproject.toml); install a release in that range")


def unavailable_reason(use: str) -> str | None:
    """Why `use` (LAUNCH, PRECOMPILE, HOST, TMA) cannot run on the installed triton, or None."""
    gone = missing(use)
    if not gone:
        return None
    return f"triton {triton.__version__} has no {', '.join(sorted(gone))} (moved or removed): {use} is off"


def report() -> list[str]:
    """Everything about the installed triton that turns a path of fastenc off, one line each (empty: nothing)."""
    lines = [r for r in [release_reason()] if r]
    lines += [r for r in map(unavailable_reason, (LAUNCH, PRECOMPILE, HOST, TMA)) if r]
    return lines


def require(use: str) -> None:
    """Raise RuntimeError with the reason when `use` cannot run on the installed triton (precompile calls this)."""
    reason = unavailable_reason(use)
    if reason:
        raise RuntimeError(reason)


def _interpreter_reason() -> str | None:
    if os.environ.get("TRITON_INTERPRET", "0") != "1" or release() >= (3, 7):
        return None
    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            int(np.array([1]))
    except TypeError:
        return (f"triton {triton.__version__}'s interpreter converts every range() bound that is not a constexpr "
                f"with int() of a one-element array (triton/runtime/interpreter.py, the tensor __index__ it patches "
                f"in; 3.7 squeezes it first), which numpy {np.__version__} refuses: kernels that loop over a runtime "
                f"bound (the row ops' backward, attention) fail on CPU tensors; install numpy < 2.4")
    return None


_interpreter = _interpreter_reason()


def interpreter_reason() -> str | None:
    """Why Triton's interpreter (TRITON_INTERPRET=1) cannot run fastenc's kernels that loop over a runtime bound
    with the installed triton and numpy, or None."""
    return _interpreter


def compiled_kernel_ok(kernel: Any) -> str | None:
    """None when a CompiledKernel has the fields the fast launch path reads, else the reason."""
    gone = [i.name for i in INTERNALS if i.compiled_only and not hasattr(kernel, i.name.rsplit(".", 1)[1])]
    return f"triton {triton.__version__} has no {', '.join(gone)} (moved or removed): {LAUNCH} is off" if gone else None


# ---------------------------------------------------------------------------------------------------------------
# Accessors for fastenc precompile and fastenc bench --host (each checks its use first: require()).


def active_driver_slot() -> Any:
    """What the driver proxy holds now (None until a driver was created): saved to be put back by set_driver."""
    return get("triton.runtime.driver.driver")._active


def set_driver(drv: Any) -> None:
    """Make `drv` triton's active driver (None: the default one, created on next use)."""
    get("triton.runtime.driver.driver").set_active(drv)


def forget_device_caches(obj: Any) -> None:
    """Drop what a jitted function (or the one an autotuner / heuristics wraps) bound to the driver's target at
    first use, so the next launch binds to the active driver's."""
    while not hasattr(obj, "device_caches") and hasattr(obj, "fn"):
        obj = obj.fn
    if hasattr(obj, "device_caches"):
        obj.device_caches.clear()


def tuner_writes_disk(tuner: Any) -> bool:
    return tuner.cache_results


def set_tuner_writes_disk(tuner: Any, on: bool) -> None:
    tuner.cache_results = on


def forget_tuner_choices(tuner: Any) -> None:
    """Drop an autotuner's in-memory choices and its benchmarker (a cached property holding the driver's)."""
    tuner.cache.clear()
    tuner.__dict__.pop("do_bench", None)


def cache_dir() -> str:
    """Triton's kernel cache directory (TRITON_CACHE_DIR or its default)."""
    from triton import knobs

    return knobs.cache.dir


@contextlib.contextmanager
def interpreter_launches(replacement: Callable[..., Any]) -> Iterator[None]:
    """Within: every launch under the Triton interpreter calls replacement(fn, *args, **kwargs) instead."""
    cls = get("triton.runtime.interpreter.InterpretedFunction")
    run = cls.run
    cls.run = replacement
    try:
        yield
    finally:
        cls.run = run
