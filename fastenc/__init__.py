"""fastenc: fused Triton and CUDA kernels for encoder-only transformers, as a drop-in for HuggingFace transformers.

The ops and the backend choice import with torch alone; the model classes, configs, Auto classes and optimize()
(which are transformers' classes) are imported on first use, so `import fastenc` stays cheap for ops-only use.
"""

import importlib
from typing import Any

from fastenc import ops
from fastenc.autotune import explain, tune
from fastenc.backends import BackendNotSupportedError, get_backend, set_backend, use_backend
from fastenc.graphs import cuda_graphs
from fastenc.models.families import AUTO_NAMES, CLASS_NAMES, CONFIG_NAMES

__version__ = "0.1.0"

_CONFIGS, _MODELS, _AUTO = CONFIG_NAMES, CLASS_NAMES, AUTO_NAMES  # from the one table of families
_LAZY = {
    **dict.fromkeys(_CONFIGS, "transformers"),
    **dict.fromkeys((*_MODELS, "MODEL_CLASSES", "models"), "fastenc.models"),
    **dict.fromkeys(_AUTO, "fastenc.models.auto"),
    **dict.fromkeys(("from_hf", "is_optimized", "optimize", "restore"), "fastenc.models.optimize"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastenc' has no attribute {name!r}")
    mod = importlib.import_module(module)
    if name in _CONFIGS and not hasattr(mod, name):  # a family newer than the installed transformers (GTE on 5.17)
        from fastenc.models.families import missing_config

        value = missing_config(name)
    else:
        value = mod if name == "models" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BackendNotSupportedError",
    "cuda_graphs",
    "explain",
    "from_hf",
    "get_backend",
    "is_optimized",
    "ops",
    "optimize",
    "restore",
    "set_backend",
    "tune",
    "use_backend",
    "__version__",
    *_CONFIGS,
    *_MODELS,
    *_AUTO,
]
