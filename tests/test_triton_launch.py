"""fastenc.kernels._launch: repeat launches skip JITFunction.run, with exactly what Triton would launch.

Compiled-kernel checks run in one subprocess without TRITON_INTERPRET, under fastenc.precompile's stand-in driver
(compiles for sm_90a, launches nothing), whose launcher is wrapped to record every argument tuple it receives. They
compare the fast path with JITFunction.run for the same arguments: the same CompiledKernel and the same launcher
arguments (except launch_metadata, which Triton builds only for the launch hooks: None when they are empty), and
that every specialisation change (dtype, 16-byte alignment, an int at 1 / divisible by 16 / past int32, a constexpr,
the driver) goes through JITFunction.run and gets another kernel. The interpreter check runs in the test process.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from fastenc.kernels import _launch
from fastenc.kernels import _triton_internals as ti
from fastenc.kernels import add_layer_norm as A

ROOT = pathlib.Path(__file__).resolve().parents[1]
N, D = 4, 64


def _inputs(dtype=torch.float32, stride=D, offset=0):
    """add_layer_norm forward kernel arguments (positional, keyword) for an [N, D] x with row stride `stride`
    starting `offset` elements into its buffer."""
    x = torch.randn(N * stride + offset, dtype=dtype)[offset:].as_strided((N, D), (stride, 1))
    res, y = torch.randn(N, D, dtype=dtype), torch.empty(N, D, dtype=dtype)
    w, b = torch.randn(D, dtype=dtype), torch.randn(D, dtype=dtype)
    mean, rstd = torch.empty(N), torch.empty(N)
    args = [x, res, None, w, b, y, None, mean, rstd, None, x.stride(0), D, D, 1e-5, 0.0]
    kw = dict(HAS_RES=True, HAS_XB=False, HAS_DROPOUT=False, STORE_H=False, BLOCK_D=D, num_warps=2)
    return args, kw


def _with_stride(x_stride: int):
    args, kw = _inputs()
    args[10] = x_stride
    return args, kw


def _same_launch(ours: tuple, theirs: tuple) -> None:
    """Our launcher arguments against JITFunction.run's: grid, stream, function, metadata, hooks, every argument."""
    LazyDict = ti.get("triton.compiler.compiler.LazyDict")  # noqa: N806 (a class)

    assert len(ours) == len(theirs)
    assert ours[:6] == theirs[:6]
    assert ours[6] is None and isinstance(theirs[6], LazyDict)
    assert ours[7] is theirs[7] and ours[8] is theirs[8] and not ours[7].calls and not ours[8].calls
    for a, b in zip(ours[9:], theirs[9:], strict=True):
        assert a is b or (type(a) is type(b) and not isinstance(a, torch.Tensor) and a == b), (a, b)


def _stub_checks() -> None:
    import triton

    from fastenc import precompile as P

    assert ti.release() in _launch.MIRRORED, f"triton {triton.__version__}: recheck _launch's mirror, then MIRRORED"
    assert _launch.fast_path_reason() is None, _launch.fast_path_reason()
    runtime, driver = ti.get("triton.knobs.runtime"), ti.get("triton.runtime.driver.driver")
    kern = A._add_layer_norm_fwd_kernel
    received: list[tuple] = []
    launcher_cls = P.TargetDriver.launcher_cls

    def recording(self, src, metadata):
        launcher_cls(self, src, metadata)
        return lambda *a: received.append(a)

    P.TargetDriver.launcher_cls = recording
    runs = []
    jit_run = kern.run

    def counting_run(*a, **k):
        runs.append(1)
        return jit_run(*a, **k)

    kern.run = counting_run

    def fast(args, kw, grid=(N,)):
        """Launch through _launch; return (kernel, launcher arguments, whether JITFunction.run ran)."""
        received.clear(), runs.clear()
        kernel = _launch.launch(kern, grid, *args, **kw)
        (got,) = received
        return kernel, got, bool(runs)

    def slow(args, kw, grid=(N,)):
        received.clear()
        kernel = jit_run(*args, grid=grid, warmup=False, **kw)
        (got,) = received
        return kernel, got

    with P.target_driver(P.TARGETS["sm_90a"]) as d90:
        # (1) one specialisation, several calls with other tensors and sizes of the same classes, a callable grid:
        # the first goes through JITFunction.run, the rest do not, and all launch what it launches
        args, kw = _inputs()
        base, _, ran = fast(args, kw)
        assert ran and ti.compiled_kernel_ok(base) is None  # the canary of CompiledKernel's launcher fields
        for i, grid in enumerate([(N,), (N, 1), (N, 1, 1), lambda meta: (meta["D"] // 16,)]):
            args, kw = _inputs(stride=[D, 2 * D, 96, 80][i])
            args[-4] = [64, 128, 96, 80][i]  # res_stride: divisible by 16 like D
            kernel, ours, ran = fast(args, kw, grid)
            assert kernel is base and not ran
            theirs_kernel, theirs = slow(args, kw, grid)
            assert theirs_kernel is base
            _same_launch(ours, theirs)
        assert ours[:3] == (4, 1, 1)  # the callable grid got the bound arguments by name

        # (2) each specialisation change goes through JITFunction.run and gets another kernel; again: fast path
        changes = {
            "fp16": _inputs(torch.float16),
            "misaligned": _inputs(offset=1),
            "stride % 16": _inputs(stride=72),
            "stride == 1": _with_stride(1),
            "int64": _with_stride(2**31 + 16),  # the kernel never runs: only its signature changes
            "constexpr": (_inputs()[0], {**_inputs()[1], "BLOCK_D": 2 * D}),
            "num_warps": (_inputs()[0], {**_inputs()[1], "num_warps": 4}),
        }
        kernels = {"base": base}
        for name, (args, kw) in changes.items():
            kernel, ours, ran = fast(args, kw)
            assert ran, name
            assert all(kernel is not k for k in kernels.values()), name
            kernels[name] = kernel
            kernel2, ours2, ran2 = fast(args, kw)
            assert kernel2 is kernel and not ran2, name
            _same_launch(ours2, slow(args, kw)[1])
        assert kernels["fp16"].src.signature["x_ptr"] == "*fp16"
        assert kernels["int64"].src.signature["x_stride"] == "i64"
        assert fast(*_inputs())[0] is base

        # the options JITFunction.run keys its cache on are the call's keywords, debug and exactly the knobs MIRRORED
        # lists for this release (read from the binder run calls); a changed knob goes through JITFunction.run
        # (whether the stand-in can compile for it is not the point: run was entered)
        device = driver.active.get_current_device()
        *caches, binder = kern.device_caches[device]
        options_seen = []
        kern.device_caches[device] = (*caches, lambda *a, **k: options_seen.append(set(k)) or binder(*a, **k))
        slow(*_inputs())
        kern.device_caches[device] = (*caches, binder)
        assert options_seen == [{*_inputs()[1], "debug", *_launch.MIRRORED[ti.release()]}], options_seen
        compilation = ti.get("triton.knobs.compilation")
        for name in _launch.MIRRORED[ti.release()]:
            old = getattr(compilation, name)
            with compilation.scope():
                setattr(compilation, name, not old if isinstance(old, bool) else "consan")
                runs.clear()
                with contextlib.suppress(Exception):
                    _launch.launch(kern, (N,), *_inputs()[0], **_inputs()[1])
                assert runs, name
            assert getattr(compilation, name) == old and not fast(*_inputs())[2], name

        # (3) launch hooks, a pre-run hook: every call goes through JITFunction.run
        def hook(metadata):
            pass

        runtime.launch_enter_hook.add(hook)
        assert fast(*_inputs())[2] and fast(*_inputs())[2]
        runtime.launch_enter_hook.remove(hook)
        kern.add_pre_run_hook(lambda *a, **k: None)
        assert fast(*_inputs())[2]
        kern.pre_run_hooks.clear()
        assert not fast(*_inputs())[2]
        # call forms the key does not cover: a non-constexpr parameter by keyword, constexprs positionally
        args, kw = _inputs()
        by_keyword = (args[:-1], {**kw, "p": args[-1]})
        positional = ([*args, *(kw[n] for n in ("HAS_RES", "HAS_XB", "HAS_DROPOUT", "STORE_H", "BLOCK_D"))],
                      {"num_warps": kw["num_warps"]})
        for call in (by_keyword, positional):
            assert fast(*call)[2] and fast(*call)[2]

        # another driver (another target) never gets a kernel kept for this one
        d80 = P.TargetDriver(P.TARGETS["sm_80"])
        driver.set_active(d80)
        P._forget_targets([kern])
        kernel, _, ran = fast(*_inputs())
        assert ran and kernel.metadata.target.arch == 80
        driver.set_active(d90)
        P._forget_targets([kern])
        kernel, _, ran = fast(*_inputs())
        assert kernel is base and not ran

        # the table never outgrows MAX_ENTRIES
        _launch.forget()
        _launch.MAX_ENTRIES = 2
        for name in ("fp16", "misaligned", "constexpr"):
            assert fast(*changes[name])[2]
        assert 0 < len(_launch._kernels[id(kern)].compiled) <= 2
    assert not _launch._kernels  # target_driver forgets the stand-in's kernels
    print("stub checks passed")


def test_fast_launch_matches_jit_run_under_the_stand_in_driver():
    if "nvidia" not in (ti.get("triton.backends.backends") or {}):
        pytest.skip("triton has no nvidia backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_triton_launch as t; t._stub_checks()"
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "stub checks passed" in run.stdout


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="checks the interpreter")
def test_interpreter_launches_through_run(monkeypatch):
    kern = A._add_layer_norm_fwd_kernel
    calls = []
    # on the class: an instance attribute would outlive the test (monkeypatch restores it as one)
    monkeypatch.setattr(type(kern), "run", lambda fn, *a, **k: calls.append((fn, k["grid"])))
    args, kw = _inputs()
    for _ in range(2):
        _launch.launch(kern, (N,), *args, **kw)
    assert calls == [(kern, (N,)), (kern, (N,))]
    assert not _launch._kernels[id(kern)].ok
    assert "TRITON_INTERPRET=1" in _launch.fast_path_reason()


def test_every_release_of_the_declared_range_is_mirrored():
    (major, lo), (major_hi, hi) = ti.SUPPORTED
    assert major == major_hi and set(_launch.MIRRORED) == {(major, minor) for minor in range(lo, hi + 1)}
