"""`launch(kernel, grid, *args, **kwargs)`: `kernel[grid](*args, **kwargs)` without Triton's per-launch binding on
repeat calls.

Triton's JITFunction.run binds every argument, computes each one's specialisation, builds a cache key string and
checks the kernel's global values on every launch (tens of microseconds of host time, against about one for the
compiled kernel's own launcher). Here the first launch of a *specialisation key* goes through JITFunction.run and
its CompiledKernel is kept; later launches with the same key call that kernel's launcher directly with the arguments
in Triton's order (every parameter, constexprs included, defaults filled), the grid evaluated like Triton does
(a callable gets the bound arguments by name) and the current stream.

The key mirrors what triton specialises a binary on (native_specialize_impl, compute_cache_key), per release of
MIRRORED: per positional argument, a tensor's dtype and whether its data pointer is 16-byte aligned; None; an int's
value when it is 1 (a constexpr for Triton), else its width (i32 / i64 / u64) and whether it is divisible by 16; a
bool or a float only by type; every keyword argument's value (constexprs and options such as num_warps, num_stages;
values equal in Python, True and 1, share a key, as constexprs share Triton's); the knobs that release's run adds to
the options (debug and instrumentation mode from 3.6, fpsan casts from 3.9); the active driver object
(fastenc.precompile swaps in stand-ins) and its current device. 3.6 to 3.9 specialise arguments alike and launch
with the same argument order; they differ in those knobs, and in whether a stages-inspection hook enters the key
(3.7 on), which this path never needs: with the hook set every launch goes through JITFunction.run.
Whatever this module cannot mirror goes through JITFunction.run every time: the interpreter (no CompiledKernel),
another triton release or one lacking a name this path reads (`fast_path_reason()` says which), kernels with
do_not_specialize(_on_alignment) lists or non-constexpr annotations, constexprs passed positionally, non-constexpr
parameters passed by keyword, argument types other than those above, pre-run hooks, launch enter/exit hooks, a
stages-inspection hook, and changed global values (Triton then raises its own error). Triton's launch_metadata is
passed as None: Triton builds it only for the enter/exit hooks, which are empty on this path. Every triton name
read here comes from kernels/_triton_internals.py.

Trade-off: a per-kernel table of at most MAX_ENTRIES compiled kernels (cleared when full, so pathological use never
grows it) and a mirror of Triton's specialisation rules that must follow triton upgrades (a release not in MIRRORED
takes the normal path; tests/test_triton_launch.py checks the mirror against JITFunction.run through
fastenc.precompile's stand-in driver on the installed release), in exchange for a few microseconds of host time per
launch instead of tens.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import triton

from fastenc.kernels import _triton_internals as ti
from fastenc.kernels._common import interpreter_on

MAX_ENTRIES = 64  # compiled kernels kept per jitted function; the table is cleared when it is full
# The releases whose rules the key mirrors, each with the knobs.compilation values its JITFunction.run adds to the
# options of its cache key (debug is added by every one); any other release takes the normal path.
MIRRORED: dict[tuple[int, int], tuple[str, ...]] = {
    (3, 6): ("instrumentation_mode",),
    (3, 7): ("instrumentation_mode",),
    (3, 8): ("instrumentation_mode",),
    (3, 9): ("instrumentation_mode", "fpsan_homomorphic_casts"),
}

_Tensor = torch.Tensor
_I32 = range(-(2**31), 2**31)
_I64 = range(-(2**63), 2**63)
_U64 = range(2**63, 2**64)


def _off_reason() -> str | None:
    reasons = []
    if interpreter_on():
        reasons.append("the Triton interpreter runs the kernels (TRITON_INTERPRET=1): each launch goes through its run")
    if ti.release() not in MIRRORED:
        known = ", ".join(f"{a}.{b}" for a, b in MIRRORED)
        reasons.append(f"triton {triton.__version__} is not a release whose specialisation rules fastenc mirrors "
                       f"({known}): every launch goes through JITFunction.run")
    reasons.append(ti.unavailable_reason(ti.LAUNCH))
    return "; ".join(r for r in reasons if r) or None


_reason = _off_reason()
if _reason is None:
    _JITFunction, _CompiledKernel = ti.get("triton.runtime.jit.JITFunction"), ti.get("triton.compiler.CompiledKernel")
    _HookChain, _driver = ti.get("triton.knobs.HookChain"), ti.get("triton.runtime.driver.driver")
    _runtime, _compilation = ti.get("triton.knobs.runtime"), ti.get("triton.knobs.compilation")
    _option_knobs = operator.attrgetter(*MIRRORED[ti.release()])  # one value, or a tuple of them


def fast_path_reason() -> str | None:
    """Why launch() sends every launch through Triton's own run in this process; None when the fast path is on."""
    return _reason


class _Unkeyable(Exception):
    """An argument whose specialisation this module does not mirror: the launch goes through JITFunction.run."""


def _spec(a: Any) -> Any:
    """What Triton specialises a positional (non-constexpr, specialised, aligned) argument on."""
    t = type(a)
    if isinstance(a, torch.Tensor):  # nn.Parameter and other subclasses too: Triton reads data_ptr() and dtype alike
        return a.dtype, not a.data_ptr() & 15
    if a is None:
        return None
    if t is int:
        if a == 1:
            return 1  # Triton makes an int 1 a constexpr
        width = "i32" if a in _I32 else "i64" if a in _I64 else "u64" if a in _U64 else None
        if width is None:
            raise _Unkeyable  # Triton refuses it (too large to represent)
        return width, not a & 15
    if t is float:
        return "fp32"  # every Python float is an fp32 argument, never specialised
    if t is bool:
        return "u1"
    raise _Unkeyable


class _Plan:
    """How one call form (number of positional arguments, keyword names in order) maps to Triton's parameters."""

    def __init__(self, tail: list[tuple[str, Any]]):
        # names and defaults of every parameter after the positional ones, in order
        self.tail_names, self.tail_defaults = [n for n, _ in tail], [d for _, d in tail]


class _Kernel:
    """What launch() precomputes per jitted function, and the compiled kernels by key."""

    def __init__(self, fn: Any):
        self.fn = fn  # held, so the id this is filed under is never reused
        self.ok = _reason is None and isinstance(fn, _JITFunction) \
            and not fn.do_not_specialize and not fn.do_not_specialize_on_alignment \
            and all(p.is_constexpr or not p.annotation for p in fn.params)
        self.names = [p.name for p in fn.params] if self.ok else []
        self.plans: dict[tuple, _Plan | None] = {}
        self.compiled: dict[tuple, Any] = {}  # CompiledKernel by key

    def plan(self, nargs: int, kwnames: tuple[str, ...]) -> _Plan | None:
        form = (nargs, kwnames)
        if form not in self.plans:
            if len(self.plans) >= MAX_ENTRIES:
                self.plans.clear()
            self.plans[form] = self._make_plan(nargs, kwnames)
        return self.plans[form]

    def _make_plan(self, nargs: int, kwnames: tuple[str, ...]) -> _Plan | None:
        params = self.fn.params
        if nargs > len(params) or any(p.is_constexpr for p in params[:nargs]):
            return None
        tail = []
        for p in params[nargs:]:
            given = p.name in kwnames
            if given and not p.is_constexpr:
                return None  # would need its specialisation from the keyword
            if not given and not p.has_default:
                return None  # Triton raises its TypeError
            tail.append((p.name, p.default if p.has_default else None))
        return _Plan(tail)


_kernels: dict[int, _Kernel] = {}


def _no_hook(hook: Any) -> bool:
    return hook is None or (type(hook) is _HookChain and not hook.calls)


def _globals_unchanged(fn: Any) -> bool:
    """Triton's check that the global values a kernel read at compile time still hold (it raises otherwise; a changed
    value sends the launch through JITFunction.run, which raises that error)."""
    missing = object()
    return all(g.get(name, missing) == val for (name, _), (val, g) in fn.used_global_vals.items())


def launch(fn: Any, grid: Any, *args: Any, **kwargs: Any) -> Any:
    """fn[grid](*args, **kwargs); returns what Triton's run returns (the CompiledKernel, when compiled)."""
    global _reason
    k = _kernels.get(id(fn))
    if k is None:
        k = _kernels[id(fn)] = _Kernel(fn)
    if not k.ok:
        return fn.run(*args, grid=grid, warmup=False, **kwargs)
    rt = _runtime
    enter, exit_ = rt.launch_enter_hook, rt.launch_exit_hook
    plan = k.plan(len(args), tuple(kwargs))
    if plan is None or fn.pre_run_hooks or rt.add_stages_inspection_hook is not None or not _no_hook(enter) \
            or not _no_hook(exit_):
        return fn.run(*args, grid=grid, warmup=False, **kwargs)
    drv = _driver.active
    device = drv.get_current_device()
    try:
        # exact torch.Tensor inline (most arguments): a call per argument would cost about a third more
        key = (plan, drv, device, fn.debug, rt.debug, _option_knobs(_compilation), *kwargs.values(),
               *[(a.dtype, not a.data_ptr() & 15) if type(a) is _Tensor else _spec(a) for a in args])
        kernel = k.compiled.get(key)
    except (_Unkeyable, TypeError):  # TypeError: an unhashable keyword value
        return fn.run(*args, grid=grid, warmup=False, **kwargs)
    if kernel is None or fn.used_global_vals and not _globals_unchanged(fn):
        kernel = fn.run(*args, grid=grid, warmup=False, **kwargs)
        if isinstance(kernel, _CompiledKernel):  # not a jit_cache_hook's None, nor an async compile's future
            why = ti.compiled_kernel_ok(kernel)
            if why is not None:  # a release whose kernels lack the launcher's fields: this path is off from now on
                _reason = why
                for each in _kernels.values():
                    each.ok = False
                return kernel
            if len(k.compiled) >= MAX_ENTRIES:
                k.compiled.clear()
            k.compiled[key] = kernel
        return kernel
    full = (*args, *map(kwargs.get, plan.tail_names, plan.tail_defaults))
    if callable(grid):
        grid = grid(dict(zip(k.names, full, strict=True)))
    n = len(grid)
    # launch_metadata None: Triton builds it only for the enter / exit hooks, which are empty here (checked above)
    kernel.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, drv.get_current_stream(device),
               kernel.function, kernel.packed_metadata, None, enter, exit_, *full)
    return kernel


def forget() -> None:
    """Drop every kept compiled kernel (fastenc.precompile does when its stand-in driver goes)."""
    _kernels.clear()
