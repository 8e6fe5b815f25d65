"""fastenc: fused Triton and CUDA kernels for encoder-only transformers, as a drop-in for HuggingFace transformers."""

from fastenc import ops
from fastenc.backends import BackendNotSupportedError, get_backend, set_backend, use_backend

__version__ = "0.1.0"

__all__ = ["BackendNotSupportedError", "get_backend", "ops", "set_backend", "use_backend", "__version__"]
