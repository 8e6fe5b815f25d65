#!/usr/bin/env bash
# Prebuild the CUDA extension fastenc._C on this CPU machine for the GPU machine's exact torch, so that
# benchmarks/run_gpu.sh installs it there instead of spending minutes of device time in nvcc.
#
#   benchmarks/prebuild_ext.sh        (TORCH_VERSION=2.11.0 PYVER=3.12 FASTENC_CUDA_ARCHS=90a by default)
#
# Downloads that torch wheel (about 530 MB, kept in build/ for the next build), unpacks its headers and the
# libraries the extension links against, compiles csrc/*.cu with nvcc and csrc/bindings.cpp with g++ against them
# (the flags of setup.py, which cannot run here: it imports torch, and this torch cannot load without the CUDA
# libraries), links build/prebuilt/_C.cpython-<py>-x86_64-linux-gnu.so and writes build/prebuilt/manifest.json
# (torch version, Python, archs, hash of csrc/ and setup.py), which benchmarks/gpu_kit.py ext-matches checks on the
# GPU machine. Carry build/prebuilt (a few MB). Needs nvcc of the wheel's CUDA major version and python$PYVER's
# headers (or PYTHON_INCLUDE). build/ is git-ignored: nothing here is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${TORCH_VERSION:-2.11.0}
PYVER=${PYVER:-3.12}
ARCHS=${FASTENC_CUDA_ARCHS:-90a}
WORK=build/prebuild-torch$TORCH_VERSION-py$PYVER
DEST=build/prebuilt
NVCC=${NVCC:-$(command -v nvcc)}
NVCC_CUDA=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
if [ -z "${CUDA_HOME:-}" ]; then  # the toolkit holding cuda_runtime.h (nvcc may be a wrapper script elsewhere)
    for root in "${CUDA_PATH:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" "/usr/local/cuda-$NVCC_CUDA" \
        /usr/local/cuda; do
        [ -n "$root" ] && [ -f "$root/include/cuda_runtime.h" ] && CUDA_HOME=$root && break
    done
fi
if [ -z "${CUDA_HOME:-}" ]; then
    echo "prebuild_ext.sh: no CUDA toolkit with cuda_runtime.h found: set CUDA_HOME" >&2
    exit 1
fi
if [ -z "${PYTHON_INCLUDE:-}" ]; then  # Python.h of the GPU machine's Python version (only its headers are used)
    PYTHON_INCLUDE=$("python$PYVER" -c 'import sysconfig; print(sysconfig.get_paths()["include"])') || {
        echo "prebuild_ext.sh: no python$PYVER here: set PYTHON_INCLUDE to a Python $PYVER include folder" >&2
        exit 1
    }
fi
TAG=cpython-${PYVER/./}-x86_64-linux-gnu
LIBS=(libc10.so libc10_cuda.so libtorch.so libtorch_cpu.so libtorch_cuda.so libtorch_python.so)

mkdir -p "$WORK/wheel" "$WORK/obj" "$DEST"
WHEEL=$(ls "$WORK"/wheel/torch-"$TORCH_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$WHEEL" ]; then
    python3 -m pip download "torch==$TORCH_VERSION" --python-version "$PYVER" --platform manylinux_2_28_x86_64 \
        --only-binary=:all: --no-deps -d "$WORK/wheel"
    WHEEL=$(ls "$WORK"/wheel/torch-"$TORCH_VERSION"-*.whl | head -n 1)
fi
unzip -q -o "$WHEEL" 'torch/include/*' 'torch/version.py' "${LIBS[@]/#/torch/lib/}" -d "$WORK"
FULL_VERSION=$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$WORK/torch/version.py")
TORCH_CUDA=$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'/\1/p" "$WORK/torch/version.py")
if [ "${TORCH_CUDA%%.*}" != "${NVCC_CUDA%%.*}" ]; then
    echo "prebuild_ext.sh: torch $FULL_VERSION wants CUDA $TORCH_CUDA, nvcc is $NVCC_CUDA" >&2
    exit 1
fi
echo "building fastenc._C for torch $FULL_VERSION, Python $PYVER, sm_$ARCHS with nvcc $NVCC_CUDA"

rm -f "$WORK"/obj/*.o
GENCODE=()
for arch in ${ARCHS//;/ }; do GENCODE+=(-gencode "arch=compute_$arch,code=sm_$arch"); done
OBJS=()
for src in csrc/*.cu; do
    obj="$WORK/obj/$(basename "$src" .cu).o"
    "$NVCC" -c -O3 -std=c++17 -lineinfo "${GENCODE[@]}" -Xcompiler -fPIC -Icsrc -o "$obj" "$src" &
    OBJS+=("$obj")
done
g++ -c -O3 -std=c++20 -fPIC -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1 \
    -I"$WORK/torch/include" -I"$WORK/torch/include/torch/csrc/api/include" -I"$PYTHON_INCLUDE" \
    -I"$CUDA_HOME/include" -Icsrc -o "$WORK/obj/bindings.o" csrc/bindings.cpp
wait
for obj in "${OBJS[@]}"; do [ -s "$obj" ] || { echo "prebuild_ext.sh: $obj was not built" >&2; exit 1; }; done
rm -f "$DEST"/_C*.so
g++ -shared -o "$DEST/_C.$TAG.so" "${OBJS[@]}" "$WORK/obj/bindings.o" -L"$WORK/torch/lib" \
    -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda -ltorch_python -L"$CUDA_HOME/lib64" -lcudart
rm -f "${LIBS[@]/#/$WORK/torch/lib/}"  # about 1 GB; the wheel stays for the next build
SOURCES=$(python3 -m benchmarks.gpu_kit sources-hash)
cat >"$DEST/manifest.json" <<EOF
{"torch": "$FULL_VERSION", "python": "$PYVER", "archs": "$ARCHS", "cuda": "$TORCH_CUDA", "nvcc": "$NVCC_CUDA",
 "sources": "$SOURCES", "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$(git rev-parse --short HEAD)"}
EOF
ls -l "$DEST"
