"""fastenc: fused Triton and CUDA kernels for encoder-only transformers, as a drop-in for HuggingFace transformers."""

from fastenc import ops
from fastenc.autotune import explain, tune
from fastenc.backends import BackendNotSupportedError, get_backend, set_backend, use_backend
from fastenc.configuration import AlbertConfig, BertConfig, ElectraConfig, RobertaConfig
from fastenc.modeling_utils import from_hf
from fastenc.models import *  # noqa: F403  (the 23 model classes, named as in transformers)
from fastenc.models import MODEL_CLASSES

__version__ = "0.1.0"

__all__ = [
    "AlbertConfig",
    "BackendNotSupportedError",
    "BertConfig",
    "ElectraConfig",
    "RobertaConfig",
    "explain",
    "from_hf",
    "get_backend",
    "ops",
    "set_backend",
    "tune",
    "use_backend",
    "__version__",
    *MODEL_CLASSES,
]

from fastenc.cuda_graphs import cuda_graphs  # noqa: E402
from fastenc.optimize import is_optimized, optimize, restore  # noqa: E402

__all__ += ["cuda_graphs", "is_optimized", "optimize", "restore"]
