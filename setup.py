"""Build script: the Python package always; the CUDA extension fastenc._C only where it can be built.

The extension is built when torch sees CUDA or FASTENC_FORCE_CUDA=1 (e.g. a CPU build box with nvcc), with cubins
for the architectures in FASTENC_CUDA_ARCHS (default "80;90a") and PTX for the newest of them without its "a"
suffix (compute_90 by default: arch-specific "a" PTX cannot be compiled for later GPUs), which the driver compiles
for newer GPUs (sm_100, sm_120). The list is compiled into fastenc._C (CUDA_ARCHS), so that the cuda backend reports
a GPU it has no code for as unsupported instead of failing with "no kernel image". Everywhere else
`pip install -e .` installs the pure-Python package and the cuda backend reports itself unavailable.
"""

import glob
import os
import sys

from setuptools import setup


def _cuda_extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    forced = os.environ.get("FASTENC_FORCE_CUDA", "0") == "1"
    sources = sorted(glob.glob("csrc/*.cu")) + ["csrc/bindings.cpp"]
    if not (forced or torch.cuda.is_available()) or not os.path.exists("csrc/bindings.cpp"):
        return [], {}
    if CUDA_HOME is None:  # a CPU-only torch: no CUDA toolkit found, or no libc10_cuda / libtorch_cuda to link
        print(f"fastenc: not building fastenc._C: torch {torch.__version__} has no CUDA (torch.version.cuda is None "
              "or CUDA_HOME not found)", file=sys.stderr)
        return [], {}
    archs = [a.strip() for a in os.environ.get("FASTENC_CUDA_ARCHS", "80;90a").split(";") if a.strip()]
    gencode = []
    for arch in archs:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    ptx = max(archs, key=lambda a: int(a.rstrip("a"))).rstrip("a")
    gencode += ["-gencode", f"arch=compute_{ptx},code=compute_{ptx}"]
    built = "+".join([*(f"sm_{a}" for a in archs), f"compute_{ptx}"])  # no ';' or quotes: it passes a shell
    ext = CUDAExtension(
        name="fastenc._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={
            # torch's headers need C++20 for the host file; the .cu files are plain CUDA C++17. No --use_fast_math:
            # the row-wise ops need accurate erf / tanh / exp; attention calls the fast exp2 explicitly.
            "cxx": ["-O3", "-std=c++20", f"-DFASTENC_CUDA_ARCHS={built}"],
            "nvcc": ["-O3", "-std=c++17", "-lineinfo", *gencode],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
