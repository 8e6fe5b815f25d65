"""Backend choice: names, precedence, errors that list every backend's reasons, thread-local overrides."""

import os
import subprocess
import sys
import threading

import pytest
import torch

import fastenc
from fastenc import backends
from fastenc.ops import add_layer_norm, add_layer_norm_ref


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastenc.set_backend("tpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastenc.use_backend("numpy"):
            pass


def test_cuda_backend_unavailable_without_extension_says_why():
    if backends.unavailable_reason("cuda") is None:
        pytest.skip("the CUDA extension is built here")
    with pytest.raises(fastenc.BackendNotSupportedError, match="fastenc._C"):
        fastenc.set_backend("cuda")
    assert fastenc.get_backend() != "cuda"


def test_use_backend_restores_previous_and_is_thread_local():
    before = fastenc.get_backend()
    seen = {}
    with fastenc.use_backend("torch"):
        assert fastenc.get_backend() == "torch"
        t = threading.Thread(target=lambda: seen.setdefault("other", fastenc.get_backend()))
        t.start()
        t.join()
    assert fastenc.get_backend() == before
    assert seen["other"] == before


def test_auto_picks_torch_for_cpu_tensors():
    x = torch.randn(3, 8)
    picked = backends.choose("op", [x], "auto", lambda name: [])
    assert picked == "torch"


def test_explicit_backend_that_cannot_run_lists_every_reason():
    x, r = torch.randn(4, 8), torch.randn(4, 8)
    w, b = torch.randn(8), torch.randn(8)

    def reasons(name):
        return [] if name == "torch" else [f"{name} says no"]

    with pytest.raises(fastenc.BackendNotSupportedError) as info:
        backends.choose("add_layer_norm", [x, r, w, b], "triton", reasons)
    msg = str(info.value)
    assert "cuda: cuda says no" in msg and "triton: triton says no" in msg and "torch: supported" in msg
    # the public op with backend="torch" is exactly the reference
    torch.testing.assert_close(add_layer_norm(x, r, w, b, backend="torch"), add_layer_norm_ref(x, r, w, b))


def test_env_variable_sets_default_and_bad_value_fails_clearly():
    code = "import fastenc; print(fastenc.get_backend())"
    env = {**os.environ, "FASTENC_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "torch", out.stderr
    env["FASTENC_BACKEND"] = "bogus"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "backend must be one of" in out.stderr


def test_import_without_cuda_extension_does_not_fail():
    out = subprocess.run([sys.executable, "-c", "import fastenc, fastenc.ops; print('ok')"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_launchers_carry_torch_compiles_constant_flag():
    """backends marks its module-name lookup as torch.compiler.assume_constant_result does, without importing
    torch._dynamo at `import fastenc`; this fails if torch changes how the decorator marks a function."""

    def probe():
        return "x"

    marked = torch.compiler.assume_constant_result(probe)
    assert getattr(marked, backends._DYNAMO_CONSTANT_FLAG, False) is True
    assert getattr(backends._launchers_module_name, backends._DYNAMO_CONSTANT_FLAG) is True


def test_import_is_light():
    """The ops import with torch alone: transformers (the model classes) loads on first use of a model name."""
    code = ("import sys, fastenc; print('transformers' in sys.modules, 'fastenc.kernels' in sys.modules); "
            "fastenc.BertModel; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr
