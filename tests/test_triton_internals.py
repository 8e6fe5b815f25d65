"""kernels/_triton_internals.py: one canary per private triton name, the declared release range, and what happens
when a name is gone (its paths turn off with a reason; every import and launch still works).

A canary fails with the name, the installed triton release (the one that moved it) and the path of fastenc that
reads it. The fields only a compiled kernel has (CompiledKernel.function / packed_metadata) are checked on a real
compiled kernel in tests/test_triton_launch.py's stand-in-driver run.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import triton

from fastenc import backends
from fastenc.kernels import _triton_internals as ti

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOOKED_UP = [i for i in ti.INTERNALS if not i.compiled_only]


@pytest.mark.parametrize("item", LOOKED_UP, ids=[i.name for i in LOOKED_UP])
def test_canary(item):
    if ti.release() < item.since:
        assert item.name not in ti._found  # not looked for before the release that added it
        pytest.skip(f"{item.name} is read from triton {item.since[0]}.{item.since[1]} on")
    assert ti._found[item.name] is not ti._ABSENT, (
        f"triton {triton.__version__} moved or removed {item.name}, which {item.use} reads: update "
        f"kernels/_triton_internals.py (and the reader) for this release")


def test_installed_release_is_in_the_declared_range():
    assert ti.release_reason() is None
    assert backends.unavailable_reason("triton") is None
    assert ti.missing() == {} and ti.report() == []


def test_release_parsing():
    assert ti.release("3.6.0") == (3, 6) and ti.release("3.10.0+git1a2b") == (3, 10) and ti.release("4.0rc1") == (4, 0)


@pytest.mark.parametrize("version", ["3.5.1", "3.10.0"])
def test_release_outside_the_range_turns_the_triton_backend_off(monkeypatch, version):
    monkeypatch.setattr(triton, "__version__", version)
    monkeypatch.setattr(backends, "_unavailable", {})
    why = backends.unavailable_reason("triton")
    assert why and f"triton {version} is outside" in why and "3.6 to 3.9" in why
    with pytest.raises(backends.BackendNotSupportedError, match=version):
        backends.set_backend("triton")
    assert backends.triton_notes() == []


def test_a_moved_name_is_found_missing(monkeypatch):
    """The lookup itself can fail: a class attribute, a module attribute and a per-instance field taken away."""
    from triton.runtime import autotuner, cache
    from triton.runtime.jit import JITFunction

    monkeypatch.delattr(cache, "triton_key")
    monkeypatch.delattr(autotuner.Autotuner, "do_bench")
    init = JITFunction.__init__

    def without_pre_run_hooks(self, *a, **k):
        init(self, *a, **k)
        del self.pre_run_hooks

    monkeypatch.setattr(JITFunction, "__init__", without_pre_run_hooks)
    monkeypatch.setattr(ti, "_found", ti._lookup())
    assert ti.missing() == {"triton.runtime.cache.triton_key": ti.PRECOMPILE,
                            "triton.runtime.autotuner.Autotuner.do_bench": ti.PRECOMPILE,
                            "triton.runtime.jit.JITFunction.pre_run_hooks": ti.LAUNCH}
    assert ti.get("triton.runtime.cache.triton_key") is None
    with pytest.raises(RuntimeError, match=r"triton_key.*fastenc precompile is off"):
        ti.require(ti.PRECOMPILE)
    assert ti.require(ti.HOST) is None
    assert any("pre_run_hooks" in r and ti.LAUNCH in r for r in ti.report())


def test_compiled_kernel_fields():
    class Kernel:
        function, packed_metadata = 1, 2

    assert ti.compiled_kernel_ok(Kernel()) is None
    del Kernel.packed_metadata
    assert "CompiledKernel.packed_metadata" in ti.compiled_kernel_ok(Kernel())


_VANISHED = """
import importlib, pkgutil, torch
import triton.knobs, triton.runtime.cache
del triton.knobs.HookChain, triton.runtime.cache.triton_key
import fastenc, fastenc.kernels as pkg
from fastenc import backends
from fastenc.ops import add_layer_norm
for info in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(f"fastenc.kernels.{info.name}")
from fastenc.kernels import _launch
assert backends.unavailable_reason("triton") is None
notes = backends.triton_notes()
assert any("fast launch path off" in n and "triton.knobs.HookChain" in n for n in notes), notes
assert any("triton_key" in n and "fastenc precompile is off" in n for n in notes), notes
x, w, b = torch.randn(4, 64), torch.randn(64), torch.randn(64)
y = add_layer_norm(x, None, w, b, 1e-5, backend="triton")
assert torch.allclose(y, torch.nn.functional.layer_norm(x, (64,), w, b, 1e-5), atol=1e-5)
assert not _launch._kernels or not any(k.ok for k in _launch._kernels.values())
print("vanished names handled")
"""


def test_vanished_names_turn_paths_off_and_everything_still_imports_and_launches():
    """In a fresh process (the interpreter: a launch runs on the CPU), with HookChain and triton_key taken out of
    triton before fastenc is imported: every kernels module imports, backends reports each path that is off and
    why, and a kernel launch runs."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", _VANISHED], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "vanished names handled" in run.stdout


def test_interpreter_reason_names_numpy_and_the_triton_line(monkeypatch):
    """triton 3.6's interpreter with a numpy that refuses int() of a one-element array: backends' notes say so;
    triton 3.7 on, or a numpy that converts it, nothing."""
    import numpy as np

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(ti, "release", lambda version=None: (3, 6))
    try:
        int(np.array([1]))
        refuses = False
    except TypeError:
        refuses = True
    why = ti._interpreter_reason()
    assert (why is not None) == refuses
    if why:
        assert "interpreter.py" in why and np.__version__ in why and "numpy < 2.4" in why
    monkeypatch.setattr(ti, "_interpreter", "triton 3.6's interpreter: install numpy < 2.4")
    assert "triton 3.6's interpreter: install numpy < 2.4" in backends.triton_notes()
    monkeypatch.setattr(ti, "release", lambda version=None: (3, 7))
    assert ti._interpreter_reason() is None


def test_explain_names_what_triton_turns_off(monkeypatch):
    """explain() carries triton_notes() once triton is loaded."""
    from fastenc import autotune, backends

    monkeypatch.setattr(backends, "triton_notes", lambda: ["fast launch path off: a stand-in reason"])
    import fastenc.kernels._launch  # noqa: F401

    assert "off: triton: fast launch path off: a stand-in reason" in autotune.explain()


def test_supported_releases_are_the_declared_range():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    spec = next(d for d in deps["dependencies"] if d.startswith("triton"))
    (lo_major, lo_minor), (hi_major, hi_minor) = ti.SUPPORTED
    assert spec.split(";")[0].strip() == f"triton>={lo_major}.{lo_minor},<{hi_major}.{hi_minor + 1}"
