"""Build checks of the CUDA backend that run without a GPU.

- every csrc/*.cu compiles with nvcc alone (no torch headers) for sm_80 and sm_90a, and to compute_90 PTX, and no
  kernel spills registers or keeps a stack frame (ptxas -v) (skipped only without nvcc); the attention kernels' shared
  memory fits every target's opt-in limit (a static_assert in csrc/attention.cu);
- csrc/bindings.cpp parses against torch's headers (skipped without the CUDA runtime headers);
- the op schemas of bindings.cpp and the fake implementations of fastenc/_cuda.py agree with the launcher contracts
  (checked on meta tensors against a stand-in for fastenc._C; the registered ops are the launchers);
- without the extension, `import fastenc` works and backend "cuda" reports itself unavailable.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
NVCC = shutil.which("nvcc")
# setup.py's default: cubins for sm_80 and sm_90a, PTX for compute_90 (compiled by the driver for newer GPUs)
GENCODE = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90a,code=sm_90a",
           "-gencode", "arch=compute_90,code=compute_90"]


def _cuda_include() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC:
        roots.append(str(Path(NVCC).resolve().parents[1]))
    for r in roots:
        if r and (Path(r) / "include" / "cuda_runtime.h").exists():
            return Path(r) / "include"
    return None


def build_host_emulation(source: Path, out_dir: Path, *flags: str) -> Path:
    """Compile a CPU emulation of CUDA device code (`source`, a tests/ C++20 file including csrc/ headers) with
    g++ into `out_dir`; skips without g++, the CUDA headers or C++20 <barrier>."""
    gxx, cuda_inc = shutil.which("g++"), _cuda_include()
    if gxx is None or cuda_inc is None:
        pytest.skip("needs g++ and the CUDA headers")
    exe = out_dir / source.stem
    cmd = [gxx, "-std=c++20", "-O1", *flags, "-pthread", "-I", str(CSRC), "-I", str(cuda_inc), "-o", str(exe),
           str(source)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0 and "barrier" in run.stderr:
        pytest.skip("the host compiler lacks C++20 <barrier>")
    assert run.returncode == 0, run.stderr[-3000:]
    return exe


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_every_cu_file_compiles_with_nvcc_alone(tmp_path):
    sources = sorted(CSRC.glob("*.cu"))
    assert sources, "no csrc/*.cu found"

    def compile_one(src: Path) -> tuple[Path, subprocess.CompletedProcess]:
        cmd = [
            NVCC,
            "-c",
            "-std=c++17",
            *GENCODE,
            "-Werror",
            "all-warnings",
            "-Xptxas",
            "-v",
            "-o",
            str(tmp_path / (src.stem + ".o")),
            str(src),
        ]
        return src, subprocess.run(cmd, capture_output=True, text=True, cwd=CSRC)

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(compile_one, sources))
    failed = [f"{src.name}:\n{res.stdout}{res.stderr}" for src, res in results if res.returncode != 0]
    assert not failed, "nvcc failed:\n" + "\n".join(failed)
    for src, _ in results:
        assert (tmp_path / (src.stem + ".o")).stat().st_size > 0
    reports = [line for _, res in results for line in res.stderr.splitlines() if "bytes spill stores" in line]
    assert reports, "ptxas -v printed no register report"
    spills = [f"{src.name}: {line.strip()}" for src, res in results for line in res.stderr.splitlines()
              if "bytes spill stores" in line and not re.search(r"\b0 bytes spill stores, 0 bytes spill loads", line)]
    assert not spills, "register spills:\n" + "\n".join(spills)
    # nor keeps a stack frame (register arrays indexed at run time live in local memory: slow, yet not a spill)
    frames = [f"{src.name}: {line.strip()}" for src, res in results for line in res.stderr.splitlines()
              if "bytes stack frame" in line and not re.search(r"\b0 bytes stack frame", line)]
    assert not frames, "stack frames:\n" + "\n".join(frames)


def test_bindings_parse_against_torch_headers():
    from torch.utils.cpp_extension import include_paths

    cuda_inc = _cuda_include()
    if cuda_inc is None:
        pytest.skip("CUDA runtime headers (cuda_runtime.h) not found")
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no C++ compiler")
    # CPU builds of torch ship c10/cuda headers without their generated config header; this define skips it.
    cmd = [
        gxx,
        "-fsyntax-only",
        "-std=c++20",
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-DFASTENC_CUDA_ARCHS=sm_80+sm_90a+compute_90",  # as setup.py passes it
        *[f"-I{p}" for p in include_paths()],
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{cuda_inc}",
        f"-I{CSRC}",
        str(CSRC / "bindings.cpp"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-5000:]


# ---------------------------------------------------------------------------------------------------------------
# Schemas, fakes and wrappers on meta tensors, with a stand-in for the compiled module.


def _schemas() -> dict[str, str]:
    text = (CSRC / "bindings.cpp").read_text()
    block = text[text.index("TORCH_LIBRARY(fastenc, m)") : text.index("TORCH_LIBRARY_IMPL")]
    schemas = {}
    for call in re.findall(r"m\.def\(((?:\s*\"[^\"]*\")+)\)", block):
        schema = "".join(re.findall(r"\"([^\"]*)\"", call))
        schemas[schema.split("(")[0]] = schema
    return schemas


@pytest.fixture(scope="module")
def cuda_module():
    """fastenc._cuda imported over a stand-in fastenc._C: the schemas of bindings.cpp defined from Python."""
    if hasattr(torch.ops.fastenc, "attention_fwd") and "fastenc._C" in sys.modules:
        pytest.skip("the real extension is loaded; its schemas are already checked by the GPU tests")
    lib = torch.library.Library("fastenc", "DEF")
    for schema in _schemas().values():
        lib.define(schema)
    sys.modules["fastenc._C"] = types.ModuleType("fastenc._C")
    sys.modules.pop("fastenc._cuda", None)
    try:
        yield importlib.import_module("fastenc._cuda")
    finally:
        sys.modules.pop("fastenc._cuda", None)
        sys.modules.pop("fastenc._C", None)
        lib._destroy()


def test_schemas_cover_every_op():
    ops = ("embeddings", "add_layer_norm", "bias_gelu", "gelu_layer_norm", "gated_act", "attention", "rotary")
    assert set(_schemas()) == {f"{op}_{d}" for op in ops for d in ("fwd", "bwd")} | {"attention_dropout_mask"}


def _meta(*shape, dtype=torch.float16):
    return torch.empty(shape, device="meta", dtype=dtype)


def test_row_ops_wrappers_follow_the_contract(cuda_module):
    m = cuda_module
    n, d = 6, 40
    x, w32, seed = _meta(n, d), _meta(d, dtype=torch.float32), _meta(1, dtype=torch.int64)
    y, h, mean, rstd = m.add_layer_norm_fwd(x, x, _meta(d), w32, w32, 1e-5, 0.1, seed, True)
    assert y.shape == h.shape == (n, d) and y.dtype == torch.float16 and mean.shape == rstd.shape == (n,)
    assert mean.dtype == torch.float32
    assert m.add_layer_norm_fwd(x, None, None, w32, w32, 1e-5, 0.0, None, False)[1].numel() == 0  # absent: empty
    dx, dh, dxb, dw, db = m.add_layer_norm_bwd(x, x, w32, mean, rstd, 0.1, seed, True)
    assert dx.shape == dh.shape == (n, d) and dxb.shape == (d,) and dw.dtype == db.dtype == torch.float32
    dx, dh, dxb, _, _ = m.add_layer_norm_bwd(x, x, w32, mean, rstd, 0.0, None, False)
    assert dx.numel() == 0 and dh.shape == (n, d) and dxb.numel() == 0
    # bias-free LayerNorm and the pre-LN step: no bias, no dbias, the returned h's gradient passed in
    y, h, mean, rstd = m.add_layer_norm_fwd(x, x, None, w32, None, 1e-5, 0.0, None, True)
    assert y.shape == h.shape == (n, d)
    dx, dh, dxb, dw, db = m.add_layer_norm_bwd(x, h, w32, mean, rstd, 0.1, seed, False, False, x)
    assert dx.shape == dh.shape == (n, d) and dxb.numel() == 0 and dw.shape == (d,) and db.numel() == 0

    assert m.bias_gelu_fwd(x, _meta(d), True).shape == (n, d)
    dx, dbias = m.bias_gelu_bwd(x, x, None, False)
    assert dx.shape == (n, d) and dbias.numel() == 0
    assert m.bias_gelu_bwd(x, x, _meta(d), False)[1].shape == (d,)

    y, mean, rstd = m.gelu_layer_norm_fwd(x, None, _meta(d), _meta(d), 1e-12, False)
    assert y.shape == (n, d) and mean.shape == (n,)
    dx, dxb, dw, db = m.gelu_layer_norm_bwd(x, x, _meta(d), _meta(d), mean, rstd, True)
    assert dx.shape == (n, d) and dxb.shape == dw.shape == db.shape == (d,)
    assert m.gelu_layer_norm_bwd(x, x, None, _meta(d), mean, rstd, True)[1].numel() == 0

    wide = _meta(n, 3 * d)[:, : 2 * d]  # the one-tensor form, a view of a wider output
    out = m.gated_act_fwd(wide, None, "silu", 0.1, seed)
    assert out.shape == (n, d) and out.dtype == torch.float16
    dx, dy = m.gated_act_bwd(out, wide, None, "silu", 0.1, seed)
    assert dx.shape == (n, 2 * d) and dy.numel() == 0
    assert m.gated_act_fwd(x, x, "gelu", 0.0, None).shape == (n, d)
    dx, dy = m.gated_act_bwd(x, x, x, "gelu_tanh", 0.0, None)
    assert dx.shape == dy.shape == (n, d)


def test_embeddings_wrappers_follow_the_contract(cuda_module):
    m = cuda_module
    n, e = 5, 16
    ids = _meta(n, dtype=torch.int64)
    word, pos, tt = _meta(30, e), _meta(12, e), _meta(2, e)
    w = _meta(e, dtype=torch.float32)
    y, mean, rstd = m.embeddings_fwd(ids, ids, ids, word, pos, tt, w, w, 1e-12, 0.1, _meta(1, dtype=torch.int64))
    assert y.shape == (n, e) and y.dtype == torch.float16 and mean.shape == (n,)
    dword, dpos, dtt, dw, db = m.embeddings_bwd(y, ids, ids, None, word, pos, None, w, mean, rstd, 0.0, None, 1, -1)
    assert dword.shape == word.shape and dpos.shape == pos.shape and dtt.numel() == 0 and dw.dtype == torch.float32
    # no position table, bias-free LayerNorm: no dposition, no dbias
    y, mean, rstd = m.embeddings_fwd(ids, None, None, word, None, None, w, None, 1e-12, 0.0, None)
    assert y.shape == (n, e)
    dword, dpos, dtt, dw, db = m.embeddings_bwd(y, ids, None, ids, word, None, tt, w, mean, rstd, 0.0, None, 1, -1,
                                                False)
    assert dword.shape == word.shape and dpos.numel() == db.numel() == 0 and dtt.shape == tt.shape


def test_attention_wrappers_follow_the_contract(cuda_module):
    m = cuda_module
    b, s, h, d = 2, 10, 3, 64
    q = _meta(b, s, h, d, dtype=torch.bfloat16)
    o, lse = m.attention_fwd(q, q, q, _meta(b, s, dtype=torch.bool), None, s, 0.125, 0.0, None)
    assert o.shape == q.shape and o.dtype == q.dtype and lse.shape == (b, h, s) and lse.dtype == torch.float32
    dq, dk, dv = m.attention_bwd(o, q, q, q, o, lse, None, None, s, 0.125, 0.0, None)
    assert dq.shape == dk.shape == dv.shape == q.shape
    packed = _meta(17, h, d)
    o, lse = m.attention_fwd(
        packed, packed, packed, None, _meta(3, dtype=torch.int32), 9, 0.125, 0.1, _meta(1, dtype=torch.int64)
    )
    assert o.shape == packed.shape and lse.shape == (h, 17)
    keep = m.attention_dropout_mask(_meta(1, dtype=torch.int64), b, h, s, 0.1)
    assert keep.shape == (b, h, s, s) and keep.dtype == torch.bool


def test_rotary_wrappers_follow_the_contract(cuda_module):
    m = cuda_module
    qkv = _meta(7, 3, 4, 64, dtype=torch.bfloat16)
    for positions in (_meta(7, dtype=torch.int64), _meta(7, dtype=torch.int32)):
        q_rot, k_rot = m.rotary_fwd(qkv[:, 0], qkv[:, 1], positions, 10000.0)
        assert q_rot.shape == k_rot.shape == (7, 4, 64) and q_rot.dtype == torch.bfloat16 and q_rot.is_contiguous()
        dq, dk = m.rotary_bwd(q_rot, k_rot, positions, 160000.0)
        assert dq.shape == dk.shape == (7, 4, 64) and dq.dtype == torch.bfloat16


def test_attention_support_reasons(cuda_module):
    from fastenc.backends import Call, _declared_reasons

    m = cuda_module

    def reasons(q, k, v):
        call = Call("attention", {"q": q, "k": k, "v": v}, length=q.shape[1], layout="padded", head_dim=q.shape[-1])
        return _declared_reasons(m.SUPPORT["attention"], call) + m.not_supported_reasons("attention", call)

    ok = torch.randn(1, 4, 2, 64, dtype=torch.float16)
    assert reasons(ok, ok, ok) == ["runs on cuda tensors, got cpu"]  # CPU tensors here: the only reason
    assert m.CUDA_ARCHS is None  # the stand-in module names no architectures
    odd = torch.randn(1, 4, 2, 48, dtype=torch.float32)
    joined = " ".join(reasons(odd, odd, odd))
    assert "head_dim 48" in joined and "float32 not supported" in joined
    strided = torch.randn(1, 4, 2, 65, dtype=torch.float16)[..., :64]
    assert any("aligned" in r for r in reasons(strided, ok, ok))


def _function_body(text: str, signature_start: str) -> str:
    start = text.index(signature_start)
    end = text.index("\n}\n", start)
    return text[start:end]


def test_attention_checks_every_cp_async_input_for_alignment():
    """Each tensor the attention kernels read with 16-byte cp.async copies (q, k, v; dout in backward) goes through
    the one check that names the argument, before any launch (a misaligned one otherwise gets only the kernels'
    generic invalid-argument error). Without a GPU the check cannot run here: test_gpu_misaligned_dout_is_named
    runs it on a device; this pins the source path."""
    text = (CSRC / "bindings.cpp").read_text()
    check = _function_body(text, "void check_rows_aligned16(")
    assert "% 16 == 0" in check and "stride(i) % 8 == 0" in check and "must have 16-byte aligned rows" in check
    inputs = _function_body(text, "AttnLayout check_attention_inputs(")
    assert re.search(r'\{&q, "q"\}, \{&k, "k"\}, \{&v, "v"\}', inputs)
    assert "check_rows_aligned16(*t, op, name);" in inputs
    bwd = _function_body(text, "std::tuple<Tensor, Tensor, Tensor> attention_bwd(")
    launch = bwd.index("fastenc::attention_bwd(")
    assert 0 <= bwd.find('check_rows_aligned16(dout, op, "dout");') < launch
    assert bwd.index("check_attention_inputs(") < launch


# ---------------------------------------------------------------------------------------------------------------


def test_missing_extension_reports_cuda_unavailable():
    code = (
        "import sys, warnings\n"
        "sys.modules['fastenc._C'] = None\n"  # makes `import fastenc._C` raise ImportError
        "import fastenc\n"
        "from fastenc import backends\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    r1 = backends.unavailable_reason('cuda'); r2 = backends.unavailable_reason('cuda')\n"
        "assert r1 and 'fastenc._C' in r1 and r1 == r2, r1\n"
        "assert sum('fastenc._C' in str(x.message) for x in w) == 1, [str(x.message) for x in w]\n"
        "try:\n"
        "    fastenc.set_backend('cuda')\n"
        "except fastenc.BackendNotSupportedError as e:\n"
        "    assert 'unavailable' in str(e)\n"
        "else:\n"
        "    raise AssertionError('set_backend(cuda) should fail without the extension')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------
# GPU: what the shared op tests do not reach for this backend (its attention takes fp16 / bf16 and head dims
# 32 / 64 / 128 only, and the shared dropout-replay test runs in fp32).


def _cuda_backend_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    from fastenc import backends

    return backends.unavailable_reason("cuda")


needs_cuda_backend = pytest.mark.skipif(bool(_cuda_backend_reason()), reason=str(_cuda_backend_reason()))


def _attention_run(q, k, v, do, **kw):
    from fastenc.ops import attention

    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, backend="cuda", **kw)
    out.backward(do)
    return [out.detach(), *(t.grad for t in leaves)]


def _attention_ref_grads(q, k, v, do, dtype, **kw):
    from fastenc.ops import attention_ref

    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention_ref(*leaves, **kw)
    out.backward(do.to(dtype))
    return [out.detach(), *(t.grad for t in leaves)]


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_gpu_attention_matches_ref(dtype, head_dim, layout, dropout_p, monkeypatch):
    import fastenc.ops.attention as attention_mod
    from fastenc import _cuda
    from tests.helpers import assert_close_to_ref

    dev = torch.device("cuda")
    heads = 3
    if layout == "packed":
        lens = [130, 1, 67, 64]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        qkv = torch.randn(sum(lens), 3, heads, head_dim, dtype=dtype, device=dev)
        kw = dict(cu_seqlens=cu, max_seqlen=max(lens))
        batch, seqlen = len(lens), max(lens)
    else:
        batch, seqlen = 3, 150
        qkv = torch.randn(batch, seqlen, 3, heads, head_dim, dtype=dtype, device=dev)
        mask = torch.rand(batch, seqlen, device=dev) > 0.3
        mask[:, 0] = True
        mask[-1] = False  # a batch row with no key at all
        kw = dict(key_padding_mask=mask)
    q, k, v = qkv.unbind(-3)
    do = torch.randn(q.shape, dtype=dtype, device=dev)
    if dropout_p > 0:
        seed = torch.tensor([2024], dtype=torch.int64, device=dev)
        monkeypatch.setattr(attention_mod, "dropout_seed", lambda device: seed)
        keep = _cuda.attention_dropout_mask(seed, batch, heads, seqlen, dropout_p)
        kw_ref = dict(kw, dropout_p=dropout_p, dropout_mask=keep)
    else:
        kw_ref = dict(kw)
    got = _attention_run(q, k, v, do, dropout_p=dropout_p, **kw)
    ref64 = _attention_ref_grads(q, k, v, do, torch.float64, **kw_ref)
    at_dtype = _attention_ref_grads(q, k, v, do, dtype, **kw_ref)
    atol = 2e-3 if dtype == torch.float16 else 1e-2
    for name, g, r, t in zip(("o", "dq", "dk", "dv"), got, ref64, at_dtype, strict=True):
        assert_close_to_ref(g, r, t, atol=atol, name=name)
    if layout == "padded":
        for t in got:
            assert t[-1].abs().max() == 0  # the batch row with no key: zero output and zero gradients
    again = _attention_run(q, k, v, do, dropout_p=dropout_p, **kw)
    for g, a in zip(got, again, strict=True):
        assert torch.equal(g, a)  # deterministic backward, same mask from the same seed


@pytest.mark.gpu
@needs_cuda_backend
def test_gpu_attention_dropout_mask_is_the_documented_scheme():
    """The CUDA mask equals the Triton backend's (one documented Philox scheme for both)."""
    from fastenc import _cuda
    from fastenc.kernels import attention as triton_attention

    seed = torch.tensor([2**33 + 5], dtype=torch.int64, device="cuda")
    ours = _cuda.attention_dropout_mask(seed, 2, 3, 37, 0.35)
    assert torch.equal(ours, triton_attention.attention_dropout_mask(seed, 2, 3, 37, 0.35))
    assert abs(ours.float().mean().item() - 0.65) < 0.03


@pytest.mark.gpu
@needs_cuda_backend
def test_gpu_misaligned_dout_is_named():
    dev = torch.device("cuda")
    q, k, v = (torch.randn(1, 8, 2, 64, dtype=torch.float16, device=dev) for _ in range(3))
    o, lse = torch.ops.fastenc.attention_fwd(q, k, v, None, None, 8, 0.125, 0.0, None)
    dout = torch.randn(q.numel() + 1, dtype=torch.float16, device=dev)[1:].view(q.shape)  # contiguous, 2 bytes off
    with pytest.raises(ValueError, match="dout must have 16-byte aligned rows"):
        torch.ops.fastenc.attention_bwd(dout, q, k, v, o, lse, None, None, 8, 0.125, 0.0, None)


def test_attention_schemas_take_a_trailing_window():
    """Launcher contract 4: both attention launchers end on `window` (-1: none), defaulted so that callers of the
    earlier contract keep working."""
    schemas = _schemas()
    for name in ("attention_fwd", "attention_bwd"):
        assert re.search(r"Tensor\? seed, int window=-1\) ->", schemas[name]), schemas[name]


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize(("window", "dropout_p"), [(0, 0.0), (40, 0.0), (40, 0.3)])
def test_gpu_attention_window_matches_ref(dtype, head_dim, layout, window, dropout_p):
    """The launchers with a window (blocks that skip whole tiles, edge tiles, window 0) against attention_ref with
    the window as an additive -inf bias, run padded (packed sequences padded here)."""
    from fastenc import _cuda
    from tests.helpers import assert_close_to_ref

    dev = torch.device("cuda")
    heads, scale = 2, head_dim**-0.5
    seed = torch.tensor([2**34 + 3], dtype=torch.int64, device=dev) if dropout_p > 0 else None
    if layout == "packed":
        lens = [300, 1, 67, 200]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        batch, seqlen = len(lens), max(lens)
        q, k, v, do = (torch.randn(sum(lens), heads, head_dim, dtype=dtype, device=dev) for _ in range(4))
        keep = torch.arange(seqlen, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
        mask = None
    else:
        batch, seqlen = 2, 333
        q, k, v, do = (torch.randn(batch, seqlen, heads, head_dim, dtype=dtype, device=dev) for _ in range(4))
        mask = torch.rand(batch, seqlen, device=dev) > 0.2
        cu = keep = None
    o, lse = _cuda.attention_fwd(q, k, v, mask, cu, seqlen, scale, dropout_p, seed, window)
    got = [o, *_cuda.attention_bwd(do, q, k, v, o, lse, mask, cu, seqlen, scale, dropout_p, seed, window)]

    def padded(t):
        if keep is None:
            return t
        out = t.new_zeros(batch, seqlen, *t.shape[1:])
        out[keep] = t
        return out

    i = torch.arange(seqlen, device=dev)
    bias = torch.where((i[:, None] - i[None, :]).abs() <= window, 0.0, -math.inf)
    kw = dict(key_padding_mask=mask if keep is None else keep, attn_bias=bias, softmax_scale=scale)
    if dropout_p > 0:
        kw.update(dropout_p=dropout_p, dropout_mask=_cuda.attention_dropout_mask(seed, batch, heads, seqlen, dropout_p))
    refs = [_attention_ref_grads(*(padded(t) for t in (q, k, v, do)), dt, **kw) for dt in (torch.float64, dtype)]
    if keep is not None:
        refs = [[t[keep] for t in ref] for ref in refs]
    atol = 2e-3 if dtype == torch.float16 else 1e-2
    for name, g, r, t in zip(("o", "dq", "dk", "dv"), got, *refs, strict=True):
        assert_close_to_ref(g, r, t, atol=atol, name=name)


@pytest.mark.gpu
@needs_cuda_backend
def test_gpu_attention_wide_window_is_no_window_and_negative_is_named():
    dev = torch.device("cuda")
    q, k, v = (torch.randn(2, 100, 2, 64, dtype=torch.float16, device=dev) for _ in range(3))
    fwd = torch.ops.fastenc.attention_fwd
    none = fwd(q, k, v, None, None, 100, 0.125, 0.0, None)
    for window in (99, 2**40):  # every key of a 100-token sequence
        wide = fwd(q, k, v, None, None, 100, 0.125, 0.0, None, window)
        assert all(torch.equal(a, b) for a, b in zip(wide, none, strict=True))
    assert not torch.equal(fwd(q, k, v, None, None, 100, 0.125, 0.0, None, 98)[0], none[0])
    with pytest.raises(ValueError, match="window must be -1"):
        fwd(q, k, v, None, None, 100, 0.125, 0.0, None, -2)
