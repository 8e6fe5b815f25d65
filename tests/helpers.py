"""Shared test helpers: backends to test, tolerance rule, comparisons against float64 references."""

from __future__ import annotations

import pytest
import torch

from fastenc import backends


def backend_params() -> list:
    """The kernel backends, as pytest params: triton runs everywhere (interpreter on CPU); cuda needs a GPU build."""
    cuda_reason = backends.unavailable_reason("cuda") if torch.cuda.is_available() else "needs a CUDA device"
    return [
        pytest.param("triton", id="triton"),
        pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(bool(cuda_reason),
                                                                                   reason=str(cuda_reason))]),
    ]


def device_for(backend: str) -> torch.device:
    if backend == "cuda" or torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def assert_close_to_ref(out: torch.Tensor, ref64: torch.Tensor, torch_out: torch.Tensor | None = None,
                        atol: float = 1e-5, rtol: float = 1e-5, name: str = "output") -> None:
    """flash-attention's rule: the kernel's error against the float64 reference may be at most twice the error
    of PyTorch's own computation at the kernel's dtype (torch_out), plus atol. Without torch_out: plain allclose.
    NaN / inf never pass."""
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    out64 = out.double()
    err = (out64 - ref64).abs().max().item()
    if torch_out is not None:
        torch_err = (torch_out.double() - ref64).abs().max().item()
        assert err <= 2 * torch_err + atol, f"{name}: max error {err:.3g} > 2 * torch's {torch_err:.3g} + {atol}"
    else:
        torch.testing.assert_close(out64, ref64, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def compiler_env(tmp_path) -> dict[str, str]:
    """The environment of a subprocess that compiles Triton kernels for a GPU target through precompile's stand-in
    driver (no interpreter, its own cache); skips the test when this triton build has no nvidia backend."""
    import os

    triton_backends = pytest.importorskip("triton.backends")
    if "nvidia" not in triton_backends.backends:
        pytest.skip("triton has no nvidia backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    return env
