"""rotary against rotary_ref in float64: outputs and gradients (autograd through the float64 reference), padded and
packed layouts, strided views of a fused [.., 3, H, D] QKV tensor, large positions, ModernBERT's two thetas, fp32
and fp16; the reference against an independent complex-number form and against transformers' own
apply_rotary_pos_emb; the launchers' custom-op registration, torch.compile and errors.

On CPU the Triton kernels run in the interpreter: shapes are tiny. GPU-only cases are marked `gpu`.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch

from fastenc import backends
from fastenc.ops import rotary, rotary_ref
from tests.helpers import assert_close_to_ref, backend_params, compiler_env, device_for

BACKENDS = backend_params()
THETAS = (10000.0, 160000.0)  # ModernBERT: local and global layers
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _grads(fn, q, k, positions, dq, dk):
    """fn's outputs and the gradients of q and k for output gradients (dq, dk)."""
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    q_rot, k_rot = fn(q, k, positions)
    return (q_rot, k_rot), torch.autograd.grad((q_rot, k_rot), (q, k), (dq, dk))


def _positions(lead: tuple[int, ...], layout: str, max_pos: int, device) -> torch.Tensor:
    """padded: arange(S) per row, offset so the last one is max_pos - 1; packed [T]: positions within sequences of
    random lengths (restarting at 0), the last one pushed up to max_pos - 1; both int64."""
    if layout == "padded":
        b, s = lead
        return (torch.arange(s, device=device) + max_pos - s).expand(b, s).contiguous()
    (t,) = lead
    cuts = sorted(torch.randperm(t - 1)[: max(1, t // 5)].add(1).tolist())
    starts = torch.zeros(t, dtype=torch.int64)
    for c in cuts:
        starts[c:] = c
    pos = torch.arange(t) - starts
    pos[-1] = max_pos - 1
    return pos.to(device)


def _check(backend, q, k, positions, theta, atol_scale=1.0):
    """Forward and backward of `backend` against the float64 reference, with the fp32/fp16 reference as the
    yardstick of the allowed error."""
    dtype = q.dtype
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    fn = lambda q, k, p: rotary(q, k, p, theta, backend=backend)  # noqa: E731
    ref = lambda q, k, p: rotary_ref(q, k, p, theta)  # noqa: E731
    outs, grads = _grads(fn, q, k, positions, dq, dk)
    outs64, grads64 = _grads(ref, q.double(), k.double(), positions, dq.double(), dk.double())
    outs_t, grads_t = _grads(ref, q, k, positions, dq, dk)
    atol = ATOL[dtype] * atol_scale
    for name, out, r64, rt in zip(("q_rot", "k_rot", "dq", "dk"), (*outs, *grads), (*outs64, *grads64),
                                  (*outs_t, *grads_t), strict=True):
        assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous(), name
        assert_close_to_ref(out, r64, rt, atol=atol, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize(("layout", "lead", "heads", "head_dim"), [
    ("padded", (2, 9), 3, 16),
    ("padded", (1, 5), 2, 24),  # D/2 = 12: masked columns
    ("packed", (23,), 4, 32),
    ("packed", (4,), 10, 512),  # several head blocks
    ("packed", (7,), 1, 2),
], ids=str)
def test_matches_ref(backend, dtype, theta, layout, lead, heads, head_dim):
    device = device_for(backend)
    q = torch.randn(*lead, heads, head_dim, dtype=dtype, device=device)
    k = torch.randn(*lead, heads, head_dim, dtype=dtype, device=device)
    _check(backend, q, k, _positions(lead, layout, 64, device), theta)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_fused_qkv_views_and_large_positions(backend, dtype, theta, layout):
    """q and k as strided views of one [.., 3, H, D] projection output (no copy), positions up to 8191 (an fp32
    angle there is off by up to half an ulp of 8191, which the fp32 yardstick shares), int32 positions."""
    device = device_for(backend)
    lead = (2, 6) if layout == "padded" else (13,)
    qkv = torch.randn(*lead, 3, 4, 16, dtype=dtype, device=device)
    q, k = qkv.select(-3, 0), qkv.select(-3, 1)
    assert not q.is_contiguous() and q.stride(-1) == 1
    positions = _positions(lead, layout, 8192, device)
    _check(backend, q, k, positions.to(torch.int32), theta)


@pytest.mark.parametrize("backend", BACKENDS)
def test_separate_projections_with_head_stride(backend):
    """k a view of a wider [T, H, 2 D] tensor: a head stride other than D, and q, k with different strides."""
    device = device_for(backend)
    q = torch.randn(11, 3, 16, device=device)
    k = torch.randn(11, 3, 32, device=device)[..., 8:24]
    _check(backend, q, k, _positions((11,), "packed", 300, device), 10000.0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("theta", THETAS)
def test_matches_ref_gpu(backend, dtype, theta):
    device = device_for(backend)
    qkv = torch.randn(8, 1024, 3, 12, 64, dtype=dtype, device=device)
    _check(backend, qkv[:, :, 0], qkv[:, :, 1], _positions((8, 1024), "padded", 8192, device), theta)
    q, k = (torch.randn(3000, 16, 128, dtype=dtype, device=device) for _ in range(2))
    _check(backend, q, k, _positions((3000,), "packed", 8192, device), theta)


def test_ref_is_the_complex_rotation():
    """rotary_ref against an independent form: (x[i] + j x[i + D/2]) * exp(j pos theta^(-2i/D)), in float64."""
    q, k = torch.randn(2, 7, 3, 10, dtype=torch.float64), torch.randn(2, 7, 3, 10, dtype=torch.float64)
    positions = torch.randint(0, 5000, (2, 7))
    for theta in THETAS:
        freqs = torch.tensor([theta ** (-2 * i / 10) for i in range(5)], dtype=torch.float64)
        turn = torch.polar(torch.ones(2, 7, 1, 5, dtype=torch.float64), positions[..., None, None] * freqs)
        for x, out in zip((q, k), rotary_ref(q, k, positions, theta), strict=True):
            z = torch.complex(x[..., :5], x[..., 5:]) * turn
            torch.testing.assert_close(out, torch.cat((z.real, z.imag), dim=-1), atol=1e-12, rtol=1e-12)


def test_ref_matches_transformers_modernbert():
    """rotary_ref = transformers' apply_rotary_pos_emb with cos / sin from ModernBertRotaryEmbedding itself, for
    both layer types (global theta 160000, local 10000), fp32, positions up to 8191."""
    mb = pytest.importorskip("transformers.models.modernbert.modeling_modernbert")
    config = mb.ModernBertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                                 max_position_embeddings=8192)
    rope = mb.ModernBertRotaryEmbedding(config)
    q, k = torch.randn(2, 9, 4, 16), torch.randn(2, 9, 4, 16)
    positions = torch.stack([torch.arange(9), torch.arange(8183, 8192)])
    thetas = set()
    for layer_type in rope.layer_types:
        theta = config.rope_parameters[layer_type]["rope_theta"]
        thetas.add(float(theta))
        cos, sin = rope(q, positions, layer_type)
        hf_q, hf_k = mb.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        ours_q, ours_k = rotary_ref(q, k, positions, theta)
        torch.testing.assert_close(ours_q, hf_q, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_k, hf_k, atol=1e-5, rtol=1e-5)
    assert thetas == set(THETAS)


def test_torch_backend_is_the_ref():
    q, k = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    positions = torch.arange(5)
    for a, b in zip(rotary(q, k, positions, 500.0, backend="torch"), rotary_ref(q, k, positions, 500.0), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_path_and_rotation_is_position_dependent(backend):
    """Without grad the launcher runs directly (same numbers); a rotation at position 0 is the identity and other
    positions are not (a kernel ignoring positions or theta fails test_matches_ref)."""
    device = device_for(backend)
    q, k = torch.randn(2, 3, 2, 8, device=device), torch.randn(2, 3, 2, 8, device=device)
    positions = torch.tensor([[0, 1, 2], [0, 5, 9]], device=device)
    with torch.no_grad():
        q_rot, k_rot = rotary(q, k, positions, 10000.0, backend=backend)
    q_ref, k_ref = rotary_ref(q, k, positions, 10000.0)
    torch.testing.assert_close(q_rot, q_ref)
    torch.testing.assert_close(k_rot, k_ref)
    torch.testing.assert_close(q_rot[:, 0], q[:, 0])
    assert (q_rot[:, 1:] - q[:, 1:]).abs().amax() > 1e-2


def test_custom_ops_registered():
    from fastenc.kernels import rotary as kr

    q, k = torch.randn(5, 3, 8), torch.randn(5, 3, 8)
    for positions in (torch.arange(5), torch.arange(5, dtype=torch.int32)):
        torch.library.opcheck(kr.rotary_fwd.op, (q, k, positions, 10000.0))
        torch.library.opcheck(kr.rotary_bwd.op, (q, k, positions, 10000.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_for(backend)
    qkv = torch.randn(2, 5, 3, 2, 8, device=device)
    positions = torch.arange(5, device=device).expand(2, 5)
    dq, dk = torch.randn(2, 5, 2, 8, device=device), torch.randn(2, 5, 2, 8, device=device)

    def f(q, k, p):
        return rotary(q, k, p, 10000.0, backend=backend)

    outs, grads = _grads(torch.compile(f, fullgraph=True, backend="aot_eager"), qkv[:, :, 0], qkv[:, :, 1],
                         positions, dq, dk)
    outs_e, grads_e = _grads(f, qkv[:, :, 0], qkv[:, :, 1], positions, dq, dk)
    for a, b in zip((*outs, *grads), (*outs_e, *grads_e), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", [*BACKENDS, "torch"])
def test_errors(backend):
    device = device_for(backend) if backend != "torch" else torch.device("cpu")
    q, k = torch.randn(2, 3, 2, 8, device=device), torch.randn(2, 3, 2, 8, device=device)
    pos = torch.arange(3, device=device).expand(2, 3)
    with pytest.raises(ValueError, match="even"):
        rotary(q[..., :7], k[..., :7], pos, 10000.0, backend=backend)
    with pytest.raises(ValueError, match="even and > 0"):
        rotary(q[..., :0], k[..., :0], pos, 10000.0, backend=backend)
    with pytest.raises(ValueError, match="positions must have shape"):
        rotary(q, k, pos[0], 10000.0, backend=backend)
    with pytest.raises(TypeError, match="positions must be an int32 or int64"):
        rotary(q, k, pos.float(), 10000.0, backend=backend)
    with pytest.raises(ValueError, match="k must have q's shape"):
        rotary(q, k[:, :, :1], pos, 10000.0, backend=backend)
    with pytest.raises(TypeError, match="k has dtype"):
        rotary(q, k.half(), pos, 10000.0, backend=backend)
    strided = torch.randn(2, 3, 2, 16, device=device)[..., ::2]
    with pytest.raises(ValueError, match="q must have a unit last stride"):
        rotary(strided, k, pos, 10000.0, backend=backend)
    with pytest.raises(ValueError, match="k must have a unit last stride"):
        rotary(q, strided, pos, 10000.0, backend=backend)
    for theta in (0.0, -1.0, float("nan"), float("inf"), "10000"):
        with pytest.raises(ValueError, match="theta"):
            rotary(q, k, pos, theta, backend=backend)
    with pytest.raises(ValueError, match="q must be"):
        rotary(q[0, 0], k[0, 0], torch.tensor(0, device=device), 10000.0, backend=backend)
    if backend == "torch":
        return
    impl = backends.launchers(backend, "rotary")
    with pytest.raises(ValueError, match="q must be a 3-D"):
        impl.rotary_fwd(q, k, pos, 10000.0)
    with pytest.raises(ValueError, match="positions"):
        impl.rotary_fwd(q[0], k[0], pos[0, :2].contiguous(), 10000.0)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastenc.kernels.rotary as R

fn = R._rotary_kernel
for arch, dtype, pos, d, heads, inverse in ((80, "bf16", "i64", 64, 12, False), (90, "fp16", "i32", 128, 16, True),
                                            (90, "fp32", "i64", 24, 3, False)):
    block_t, block_h, block_d2 = R._blocks(heads, d)
    const = dict(HALF=d // 2, INVERSE=inverse, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D2=block_d2)
    sig = {n: "constexpr" if n in const else ("*" + pos) if n == "pos_ptr" else ("*" + dtype) if n.endswith("_ptr")
           else "fp32" if n == "theta" else "i64" if "stride" in n else "i32" for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", arch, 32), options=dict(num_warps=R._WARPS))
    assert "f64" in k.asm["ptx"]  # inv_freq in fp64, as the header says
"""


def test_kernel_compiles_for_ampere_and_hopper(tmp_path):
    """The interpreter does not run Triton's compiler: compile the kernel for sm_80 and sm_90 (no GPU needed)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=compiler_env(tmp_path), cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]


def test_traced_with_dynamic_shapes_and_a_float_theta():
    """torch.compile(dynamic=True) may pass theta symbolically: the op traces (no value check on a symbolic theta),
    and every theta gives the reference's result."""
    from fastenc import ops

    fn = torch.compile(lambda q, k, pos, theta: ops.rotary(q, k, pos, theta, backend="torch"), dynamic=True,
                       fullgraph=True)
    q, k = torch.randn(2, 2, 5, 2, 8).unbind(0)
    pos = torch.arange(5).expand(2, 5)
    for theta in (10000.0, 12345.5):
        want = ops.rotary_ref(q.double(), k.double(), pos, theta)
        for got, ref in zip(fn(q, k, pos, theta), want, strict=True):
            assert (got.double() - ref).abs().max().item() < 1e-5
