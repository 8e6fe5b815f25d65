"""Backend choice: names, precedence, errors that list every backend's reasons, thread-local overrides; the
declared support of every backend for every op; auto's choice from the table, from a timer, and its record."""

import ast
import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest
import torch

import fastenc
from fastenc import autotune, backends, dispatch, ops
from fastenc.ops import add_layer_norm, add_layer_norm_ref, attention


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


# ---------------------------------------------------------------------------------------------------------------
# Reasons: one function, from each backend's declaration


@pytest.fixture(autouse=True)
def _fresh_auto(tmp_path, monkeypatch):
    """Each test starts from the shipped table, no timings, and a tuning cache of its own."""
    monkeypatch.setenv("FASTENC_TUNE_CACHE", str(tmp_path / "tune.json"))
    monkeypatch.delenv("FASTENC_TUNE", raising=False)
    autotune.set_table(None)
    autotune.forget_tuning()
    yield
    autotune.set_table(None)
    autotune.forget_tuning()


def _op_calls(dtype=torch.float32) -> dict:
    """One tiny call of every op: op name -> (function, args, kwargs), on CPU tensors of `dtype`."""
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 8, generator=g, dtype=dtype), torch.randn(3, 8, generator=g, dtype=dtype)
    w, b = torch.randn(8, generator=g, dtype=dtype), torch.randn(8, generator=g, dtype=dtype)
    q = torch.randn(2, 4, 2, 8, generator=g, dtype=dtype)
    ids = torch.randint(0, 5, (2, 3), generator=g)
    table = torch.randn(5, 8, generator=g, dtype=dtype)
    return {
        "add_layer_norm": (ops.add_layer_norm, (x, r, w, b), {}),
        "bias_gelu": (ops.bias_gelu, (x, b), {}),
        "gelu_layer_norm": (ops.gelu_layer_norm, (x, w, b), {}),
        "gated_act": (ops.gated_act, (x, r), {}),
        "embeddings": (ops.embeddings, (ids, table, torch.arange(3), table, ids % 2, table[:2], w, b), {}),
        "attention": (ops.attention, (q, q, q), {}),
    }


def _captured_call(fn, args, kwargs) -> backends.Call:
    """The Call an op hands the dispatcher (the op then runs with the reference)."""
    seen = []
    real = dispatch.choose

    def spy(call, backend, run=None):
        seen.append(call)
        return real(call, "torch", run)

    dispatch.choose = spy
    try:
        fn(*args, **kwargs)
    finally:
        dispatch.choose = real
    return seen[0]


def test_every_op_is_in_the_table_and_every_backend_declares_what_it_implements():
    assert set(backends.IMPLEMENTS) == set(_op_calls())
    for op, names in backends.IMPLEMENTS.items():
        assert "torch" in names
        for name in names:
            if name == "torch" or backends.unavailable_reason(name):
                continue
            declared = backends.launchers(name, op).SUPPORT[op]
            assert set(declared) <= set(backends.SUPPORT_KEYS), (name, op, set(declared))
            assert declared["devices"] and declared["dtypes"], (name, op)


@pytest.mark.parametrize("op", sorted(backends.IMPLEMENTS))
def test_reasons_for_every_op_and_backend(op, monkeypatch):
    fn, args, kwargs = _op_calls()[op]
    call = _captured_call(fn, args, kwargs)
    assert call.op == op and call.device.type == "cpu"
    reasons = {name: backends.not_supported_reasons(name, call) for name in backends.BACKENDS}
    assert reasons["torch"] == []
    assert reasons["triton"] == []  # the interpreter is on in the tests
    assert reasons["sdpa"] == ([] if op == "attention" else [f"does not implement {op}"])
    assert reasons["cuda"] and all(isinstance(r, str) and r for r in reasons["cuda"])
    # float64: only the reference takes it
    call64 = _captured_call(*_op_calls(torch.float64)[op])
    for name in ("triton", *(("sdpa",) if op == "attention" else ())):
        assert any("float64 not supported" in r for r in backends.not_supported_reasons(name, call64)), name
    assert backends.not_supported_reasons("torch", call64) == []
    # Triton on CPU tensors without the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert any("interpreter" in r for r in backends.not_supported_reasons("triton", call))


def test_declared_support_turns_into_reasons():
    support = dict(devices=("cuda",), dtypes=(torch.float16,), head_dims=(32, 64), max_head_dim=48, max_hidden=4,
                   layouts=("padded",), dropout=False, features=("attn_bias",))
    q = torch.randn(1, 2, 1, 40)
    call = backends.Call("attention", {"q": q, "attn_bias": None}, length=2, layout="packed", head_dim=40,
                         hidden=8, dropout=True, features=("attn_bias", "return_probs"))
    assert backends._declared_reasons(support, call) == [
        "runs on cuda tensors, got cpu",
        "dtype torch.float32 not supported (supports torch.float16)",
        "head_dim 40 not supported (supports (32, 64))",
        "hidden size 8 > 4",
        "packed layout not supported (supports padded)",
        "no dropout",
        "return_probs not supported",
    ]
    mixed = backends.Call("bias_gelu", {"x": q, "bias": torch.empty(40, device="meta")}, length=1)
    assert backends._declared_reasons({"devices": None}, mixed) == ["needs tensors on one device type, got "
                                                                     "['cpu', 'meta']"]


def test_named_backend_never_falls_back():
    x, r, w, b = (torch.randn(4, 8, dtype=torch.float64) for _ in range(4))
    w, b = w[0], b[0]
    with pytest.raises(fastenc.BackendNotSupportedError) as info:
        add_layer_norm(x, r, w, b, backend="triton")
    msg = str(info.value)
    assert "triton: dtype torch.float64 not supported" in msg and "torch: supported" in msg and "cuda: " in msg
    with pytest.raises(fastenc.BackendNotSupportedError, match="sdpa: does not implement add_layer_norm"):
        add_layer_norm(x.float(), r.float(), w.float(), b.float(), backend="sdpa")
    with fastenc.use_backend("sdpa"):  # a process-wide name applies to every op: no silent switch either
        with pytest.raises(fastenc.BackendNotSupportedError, match="does not implement add_layer_norm"):
            add_layer_norm(x.float(), r.float(), w.float(), b.float())
    # the public op with backend="torch" is exactly the reference
    torch.testing.assert_close(add_layer_norm(x, r, w, b, backend="torch"), add_layer_norm_ref(x, r, w, b))


def test_kernel_image_reason():
    archs = "sm_80+sm_90a+compute_90"
    assert backends.kernel_image_reason((8, 0), archs) is None
    assert backends.kernel_image_reason((8, 6), archs) is None  # sm_80 cubins run on 8.x
    assert backends.kernel_image_reason((9, 0), archs) is None
    assert backends.kernel_image_reason((10, 0), archs) is None  # compute_90 PTX is compiled by the driver
    assert backends.kernel_image_reason((12, 0), archs) is None
    no_ptx = backends.kernel_image_reason((10, 0), "sm_80+sm_90a")
    assert no_ptx is not None and "sm_100" in no_ptx and "FASTENC_CUDA_ARCHS" in no_ptx
    assert backends.kernel_image_reason((9, 0), "sm_80") is not None  # cubins do not cross major versions
    assert backends.kernel_image_reason((7, 5), archs) is not None
    assert backends.kernel_image_reason((10, 0), "sm_90a+compute_90a") is not None  # 'a' PTX is for 9.0 only
    assert backends.kernel_image_reason((10, 0), None) is None  # a build that does not say is trusted


def test_kernels_never_import_the_front():
    root = pathlib.Path(__file__).resolve().parents[1] / "kernels"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("fastenc") or name.startswith("fastenc.kernels"), (path.name, name)


# ---------------------------------------------------------------------------------------------------------------
# auto: table, timing, record


def _qkv(dtype=torch.float32):
    q = torch.randn(2, 5, 2, 8, dtype=dtype)
    return q, torch.randn_like(q), torch.randn_like(q)


def test_auto_on_cpu_picks_sdpa_for_attention_from_the_recorded_run_and_torch_elsewhere():
    q, k, v = _qkv()
    assert torch.equal(attention(q, k, v), attention(q, k, v, backend="sdpa"))
    assert not torch.equal(attention(q, k, v), attention(q, k, v, backend="torch"))  # another computation
    x, w = torch.randn(3, 8), torch.randn(8)
    torch.testing.assert_close(add_layer_norm(x, x, w, w), add_layer_norm_ref(x, x, w, w), rtol=0, atol=0)
    text = fastenc.explain()
    assert "op=attention|device=cpu|dtype=float32" in text and "-> sdpa (table (run cpu-2026-11-23)" in text
    assert "op=add_layer_norm" in text and "-> torch (default preference (no run)" in text
    assert "cuda" not in fastenc.explain("attention")  # neither cuda nor the Triton interpreter is an auto candidate
    table = json.loads(autotune.TABLE_PATH.read_text())
    assert not any(e["match"].get("device", "").startswith("sm_") for e in table["entries"])  # no GPU run yet


def test_auto_follows_the_table_most_specific_entry_first():
    q, k, v = _qkv()
    run = {"cpu-test": {"device": "none"}}
    autotune.set_table([
        {"match": {"op": "attention"}, "order": ["sdpa", "torch"], "source": "cpu-test"},
        {"match": {"op": "attention", "device": "cpu", "dtype": "float32"}, "order": ["torch", "sdpa"],
         "source": "cpu-test"},
    ])
    assert torch.equal(attention(q, k, v), attention(q, k, v, backend="torch"))
    h = _qkv(torch.bfloat16)
    assert torch.equal(attention(*h), attention(*h, backend="sdpa"))  # only the general entry matches bf16
    assert "-> torch (table (run cpu-test)" in fastenc.explain()
    path = pathlib.Path(os.environ["FASTENC_TUNE_CACHE"]).with_name("table.json")
    path.write_text(json.dumps({"format": 1, "runs": run, "entries": [{"match": {"gpu": 1}, "order": [],
                                                                         "source": "cpu-test"}]}))
    with pytest.raises(ValueError, match="unknown fields"):
        autotune.load_table(path)


def test_traced_auto_never_guards_on_a_symbolic_length():
    """Under dynamic shapes the length bucket is ANY: every bucket's entry fits, the largest bucket's wins, and one
    graph serves every length (no guard on it). A static compile keeps the bucket of its length, as eager does."""
    from torch._dynamo.testing import CompileCounterWithBackend

    autotune.set_table([
        {"match": {"op": "attention", "device": "cpu", "bucket": 8}, "order": ["torch", "sdpa"], "source": "t"},
        {"match": {"op": "attention", "device": "cpu", "bucket": 64}, "order": ["sdpa", "torch"], "source": "t"},
        {"match": {"op": "attention", "device": "cpu", "bucket": 16}, "order": ["torch", "sdpa"], "source": "t"},
    ])

    def f(q, k, v):
        return attention(q, k, v)

    for dynamic, expected in ((True, "sdpa"), (False, "torch")):
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("eager")
        compiled = torch.compile(f, backend=counter, fullgraph=True, dynamic=dynamic)
        for seq in (5, 7, 6):  # bucket 8 (eager: torch first)
            q, k, v = (torch.randn(2, seq, 2, 8) for _ in range(3))
            out = compiled(q, k, v)
            assert torch.equal(out, attention(q, k, v, backend=expected)), (dynamic, seq)
            assert not torch.equal(out, attention(q, k, v, backend={"sdpa": "torch", "torch": "sdpa"}[expected]))
        assert counter.frame_count == (1 if dynamic else 3)
    assert torch.equal(attention(q, k, v), attention(q, k, v, backend="torch"))
    # timings tuned on this device come first, again those of the largest bucket: here the opposite of the table
    for seq, fastest in ((40, "torch"), (5, "sdpa")):
        with autotune.tuning(lambda name, fn, device, fastest=fastest: 1.0 if name == fastest else 2.0):
            attention(*(torch.randn(2, seq, 2, 8) for _ in range(3)))
    torch._dynamo.reset()
    out = torch.compile(f, backend="eager", fullgraph=True, dynamic=True)(q, k, v)
    assert torch.equal(out, attention(q, k, v, backend="torch"))


def test_auto_from_a_timer_picks_the_fastest_measured_and_caches_it_on_disk():
    q, k, v = (t.requires_grad_() for t in _qkv())
    times = {"sdpa": 3.0, "torch": 1.0}  # the opposite of the shipped table
    timed = []

    def timer(name, fn, device):
        out = fn()  # forward + backward of that backend
        assert torch.isfinite(out).all() and device.type == "cpu"
        timed.append(name)
        return times[name]

    with autotune.tuning(timer):
        out = attention(q, k, v)
    assert sorted(timed) == ["sdpa", "torch"] and q.grad is None  # timing leaves the caller's .grad alone
    torch.testing.assert_close(out, attention(q, k, v, backend="torch"), rtol=0, atol=0)
    assert "-> torch (tuned on this device" in fastenc.explain() and "[3 ms]" in fastenc.explain()
    saved = json.loads(pathlib.Path(os.environ["FASTENC_TUNE_CACHE"]).read_text())
    assert saved["torch"] == torch.__version__ and list(saved["entries"].values()) == [times]
    # a later process (here: state forgotten) reads the timings back without timing again
    autotune.forget_tuning()
    with autotune.tuning(lambda *a: pytest.fail("timed again")):
        attention(q, k, v)
    assert "-> torch (tuned on this device" in fastenc.explain()


def test_a_candidate_that_fails_while_timed_is_not_chosen():
    def timer(name, fn, device):
        if name == "sdpa":
            raise RuntimeError("no kernel image")
        return 5.0

    with autotune.tuning(timer):
        out = attention(*_qkv())
    assert "-> torch (tuned" in fastenc.explain() and torch.isfinite(out).all()


def test_tune_runs_a_model_on_example_shapes():
    proj = torch.nn.Linear(8, 24)

    def model(x):
        q, k, v = proj(x).view(*x.shape[:2], 3, 2, 4).unbind(2)
        return attention(q, k, v)

    calls = []
    text = fastenc.tune(model, [(torch.randn(2, 5, 8),), {"x": torch.randn(1, 40, 8)}], backward=True,
                        timer=lambda name, fn, device: calls.append(name) or {"sdpa": 1.0, "torch": 2.0}[name])
    assert calls == ["sdpa", "torch", "sdpa", "torch"]  # two keys (length buckets 8 and 64), each timed once
    assert text.count("-> sdpa (tuned on this device") == 2
    assert proj.weight.grad is not None  # backward=True back-propagated through the model


def test_a_broken_tuning_cache_is_ignored_not_fatal(caplog):
    pathlib.Path(os.environ["FASTENC_TUNE_CACHE"]).write_text("{not json")
    out = attention(*_qkv())
    assert torch.isfinite(out).all() and "ignoring the tuning cache" in caplog.text


def test_triton_takes_cpu_tensors_only_in_the_interpreter_or_through_a_stand_in_driver(monkeypatch):
    """The rule lives in the triton backend's hook (kernels/_common.launch_reasons), for every op it implements."""
    from fastenc.kernels import _common

    monkeypatch.setattr(_common, "interpreter_on", lambda: False)
    for op, (fn, args, kwargs) in _op_calls().items():
        call = _captured_call(fn, args, kwargs)
        reasons = backends.not_supported_reasons("triton", call)
        assert any("CPU tensors need the Triton interpreter" in r for r in reasons), op
        with _common.stand_in_driver():
            assert backends.not_supported_reasons("triton", call) == [], op
