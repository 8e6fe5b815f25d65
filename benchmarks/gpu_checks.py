"""What benchmarks/gpu_session.sh checks on the GPU, defined once: the test selection and the sanitizer workload.

- Tests (a pytest plugin, `-p benchmarks.gpu_checks`): every test of tests/ops (with a CUDA device, the triton
  backend's tests run on CUDA tensors too: they carry no `gpu` mark) plus every `gpu`-marked test elsewhere, minus the
  CPU-only checks of tests/ops (the C++ emulation harnesses and the stand-in-driver compile check, which CI runs).
- Sanitizer workload (`python -m benchmarks.gpu_checks sanitize`): fastenc.ops.attention on a padded batch with a key
  mask (rows of 37, 20 and 5 real keys: the padded kernels, never unpadded) and on the packed layout of the same
  lengths, forward and backward, fp16 and bf16, with and without dropout, head dims 32 / 64 / 128, for each kernel
  backend; gated_act in both input forms; then a 1-layer BERT forward + backward (the row ops: embeddings,
  add_layer_norm, bias_gelu, gelu_layer_norm) per backend and dtype. Shapes are odd and small: tails of every block,
  seconds under memcheck.

Trade-off: the workload runs each kernel on one small shape rather than the tests' many: memcheck and racecheck
cost 10-100x per launch, and what they look for (an out-of-bounds or racing access) shows on any shape that has a
partial tile. The same workload also fills the Triton cache on the CPU (benchmarks/gpu_kit.py fill-cache).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Sequence

import pytest
import torch

# tests/ops that never touch a GPU: run by CI, skipped by the GPU session (node id prefixes)
CPU_ONLY = (
    "tests/ops/test_attention_emulation.py",
    "tests/ops/test_attention_dropout_lanes.py",
    "tests/ops/test_attention.py::test_kernels_compile_for_ampere_and_hopper",
    "tests/ops/test_gated_act_emulation.py",
    "tests/ops/test_gated_act.py::test_kernels_compile_for_ampere_and_hopper",
)
KERNEL_BACKENDS = ("cuda", "triton")  # the hand-written kernels first, should memcheck run out of time
LENGTHS = (37, 20, 5)  # one full row, a part-padded one, a mostly padded one; no length a multiple of a block
HEAD_DIMS = (64, 32, 128)  # 64 in every case, the others fp16 without dropout


def gpu_selected(nodeid: str, marked_gpu: bool) -> bool:
    """Whether the GPU session runs this test."""
    if any(nodeid == c or nodeid.startswith(c + "::") for c in CPU_ONLY):
        return False
    return nodeid.startswith("tests/ops/") or marked_gpu


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        (keep if gpu_selected(item.nodeid, "gpu" in item.keywords) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ---------------------------------------------------------------------------------------------------------------
# The sanitizer workload


def _attention_cases(dtypes: Sequence[torch.dtype]) -> list[tuple[torch.dtype, int, str, float]]:
    cases = []
    for dtype in dtypes:
        for layout in ("padded", "packed"):
            for p in (0.0, 0.1):
                cases.append((dtype, HEAD_DIMS[0], layout, p))
            if dtype == torch.float16:
                cases += [(dtype, d, layout, 0.0) for d in HEAD_DIMS[1:]]
    return cases


def run_attention(backend: str, dtype: torch.dtype, head_dim: int, layout: str, dropout_p: float,
                  device: torch.device, check: bool = True) -> str:
    """One forward and backward of fastenc.ops.attention with `backend`; returns a line for the log. With `check`,
    raises unless outputs and gradients are finite and (without dropout) the output is within a loose bound of the
    float64 reference: memcheck looks for bad accesses, this for a launch that silently computed nothing."""
    from fastenc.ops import attention, attention_ref

    g = torch.Generator().manual_seed(head_dim + len(layout))
    heads, b, s = 2, len(LENGTHS), max(LENGTHS)
    lens = torch.tensor(LENGTHS)
    if layout == "packed":
        shape, kw = (int(lens.sum()), heads, head_dim), {}
        cu = torch.zeros(b + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        kw = dict(cu_seqlens=cu.to(device), max_seqlen=s)
    else:
        shape = (b, s, heads, head_dim)
        kw = dict(key_padding_mask=(torch.arange(s)[None, :] < lens[:, None]).to(device))
    q, k, v, do = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    out = attention(q, k, v, dropout_p=dropout_p, backend=backend, **kw)
    out.backward(do)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    what = f"attention {backend} {str(dtype)[6:]} d={head_dim} {layout} p={dropout_p}"
    if not check:
        return what + ": ran"
    if layout == "padded":  # padded query rows are free to hold anything: compare real tokens only
        real = kw["key_padding_mask"]
        got, grads = out[real], [t.grad[real] for t in (q, k, v)]
    else:
        got, grads = out, [t.grad for t in (q, k, v)]
    bad = [n for n, t in zip(("out", "dq", "dk", "dv"), (got, *grads), strict=True) if not torch.isfinite(t).all()]
    if bad:
        raise RuntimeError(f"{what}: non-finite {', '.join(bad)}")
    err = math.nan
    if dropout_p == 0.0:
        ref = attention_ref(*(t.detach().double() for t in (q, k, v)), **kw)
        ref = ref[kw["key_padding_mask"]] if layout == "padded" else ref
        err = (got.double() - ref).abs().max().item()
        if err > 0.05:
            raise RuntimeError(f"{what}: max error {err:.3g} against the float64 reference")
    return f"{what}: ok (max error {err:.2g})"


def run_gated_act(backend: str, dtype: torch.dtype, device: torch.device, check: bool = True) -> str:
    """fastenc.ops.gated_act forward + backward with `backend`: the one-tensor form as a view of a wider output with
    dropout (vector path), and separate x, y with an odd width (scalar path); with `check`, raises unless outputs
    and gradients are finite and the dropout-free case is within a loose bound of the float64 reference."""
    from fastenc.ops import gated_act, gated_act_ref

    g = torch.Generator().manual_seed(11)
    wide = torch.randn(sum(LENGTHS), 2 * 72 + 8, generator=g).to(device, dtype)
    x, y = torch.randn(2, 3, 2, 37, generator=g).to(device, dtype).unbind(2)
    lines = []
    for xi, yi, p, act in ((wide[:, : 2 * 72], None, 0.1, "gelu"), (x, y, 0.0, "silu")):
        leaves = [t.detach().requires_grad_(True) for t in (xi, yi) if t is not None]
        out = gated_act(*leaves, *([None] if yi is None else []), act, p, backend=backend)
        out.backward(torch.randn_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        what = f"gated_act {backend} {str(dtype)[6:]} {act} {'split' if yi is None else 'xy'} p={p}"
        if check and not all(torch.isfinite(t).all() for t in (out, *(t.grad for t in leaves))):
            raise RuntimeError(f"{what}: non-finite output or gradient")
        if check and p == 0.0:
            err = (out.double() - gated_act_ref(*(t.detach().double() for t in leaves), act)).abs().max().item()
            if err > 0.05:
                raise RuntimeError(f"{what}: max error {err:.3g} against the float64 reference")
        lines.append(what)
    return "; ".join(lines) + ": ok"


def run_model(backend: str, dtype: torch.dtype, device: torch.device, check: bool = True) -> str:
    """A 1-layer BERT masked-LM forward + backward under autocast with `backend`, on a padded batch of LENGTHS; with
    `check`, raises unless the loss is finite."""
    import transformers

    import fastenc

    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96,
                                  vocab_size=500, max_position_embeddings=64)
    torch.manual_seed(0)
    twin = fastenc.from_hf(transformers.BertForMaskedLM(cfg).to(device))
    lens = torch.tensor(LENGTHS)
    mask = (torch.arange(max(LENGTHS))[None, :] < lens[:, None]).long().to(device)
    ids = torch.randint(5, 500, mask.shape, generator=torch.Generator().manual_seed(1)).to(device)
    with fastenc.use_backend(backend), torch.autocast(device.type, dtype=dtype):
        loss = twin(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    value = loss.item()
    if check and not math.isfinite(value):
        raise RuntimeError(f"model {backend} {dtype}: loss {value}")
    return f"model bert-1-layer {backend} {str(dtype)[6:]}: ok (loss {value:.4f})"


def sanitize(backends: Sequence[str], dtypes: Sequence[torch.dtype], device: torch.device, model: bool = True,
             check: bool = True, log=print) -> int:
    """The workload for each available backend; returns the number of failed cases (each logged)."""
    from fastenc.backends import unavailable_reason

    failed = 0
    for backend in backends:
        why = unavailable_reason(backend)
        if why:
            log(f"{backend}: skipped: {why}")
            continue
        steps = [functools.partial(run_attention, backend, *c, device=device, check=check)
                 for c in _attention_cases(dtypes)]
        steps += [functools.partial(run_gated_act, backend, d, device, check) for d in dtypes]
        if model:
            steps += [functools.partial(run_model, backend, d, device, check) for d in dtypes]
        for step in steps:
            try:
                log(step())
            except Exception as e:  # every case is tried: one failure must not hide the others
                failed += 1
                log(f"FAILED: {type(e).__name__}: {e}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_checks.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sanitize", help="run the sanitizer workload (under compute-sanitizer, or plainly to warm up)")
    s.add_argument("--backends", default=",".join(KERNEL_BACKENDS))
    s.add_argument("--dtypes", default="fp16,bf16")
    s.add_argument("--no-model", action="store_true", help="attention only (racecheck's workload)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_checks.py sanitize: no CUDA device")
        return 2
    dtypes = [{"fp16": torch.float16, "bf16": torch.bfloat16}[d] for d in args.dtypes.split(",")]
    failed = sanitize(args.backends.split(","), dtypes, torch.device("cuda"), model=not args.no_model)
    print(f"sanitizer workload: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
