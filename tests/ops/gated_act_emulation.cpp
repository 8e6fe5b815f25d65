// Runs the CUDA gated_act kernels of csrc/gated_act_kernels.cuh on the CPU, unchanged: they use no shared memory
// and no warp collectives, so the threads of a block run one after another.
//
// Usage: gated_act_emulation DIR, with DIR/params.txt "dtype(f|h|b) n d x_cols split act p seed vec" and the raw
// inputs DIR/x.bin ([n, x_cols], x_cols >= 2d when split, else >= d: the act input is columns [0, d), the gate
// columns [d, 2d) when split), DIR/y.bin ([n, d], when not split) and DIR/dout.bin ([n, d]). vec: 1, or the 16-byte
// width, as the launcher would choose. Writes out.bin [n, d], dx.bin ([n, 2d] when split, else [n, d]) and, when
// not split, dy.bin [n, d]. tests/ops/test_gated_act_emulation.py compares them with the Triton kernels.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <cuda_bf16.h>  // __half / __nv_bfloat16 and their host conversions
#include <cuda_fp16.h>
#include <cuda_runtime.h>

struct EmuDim {
  unsigned x, y, z;
};
inline EmuDim threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32); }
template <typename T>
T __shfl_sync(unsigned, T, int) {  // the block reductions of common.cuh, which gated_act never calls
  std::abort();
}
template <typename T>
T __shfl_xor_sync(unsigned, T, int) {
  std::abort();
}
inline void __syncthreads() { std::abort(); }

#include "gated_act_kernels.cuh"

namespace {

template <typename T>
std::vector<T> read(const std::string& path, size_t count) {
  std::ifstream f(path, std::ios::binary);
  std::vector<T> v(count);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (!f) std::exit(3);
  return v;
}

template <typename T>
void write(const std::string& path, const std::vector<T>& v) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v.data()),
                                              static_cast<std::streamsize>(v.size() * sizeof(T)));
}

// The launchers' grid and block (csrc/gated_act.cu: fwd_rows_grid, row_threads); blocks and threads in turn.
template <class Kernel>
void launch(int64_t n, int64_t d, int vec, Kernel&& kernel) {
  gridDim.x = static_cast<unsigned>(n < 65536 ? n : 65536);
  blockDim.x = static_cast<unsigned>(fastenc::row_threads((d + vec - 1) / vec));
  for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x) {
    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) kernel();
  }
}

template <typename T, int VEC>
void run(const std::string& dir, int64_t n, int64_t d, int64_t x_cols, bool split, int act,
         const fastenc::DropoutParams& dp) {
  using namespace fastenc;
  const std::vector<T> x = read<T>(dir + "/x.bin", n * x_cols), dout = read<T>(dir + "/dout.bin", n * d);
  const std::vector<T> y = split ? std::vector<T>() : read<T>(dir + "/y.bin", n * d);
  const T* g = split ? x.data() + d : y.data();
  const int64_t g_stride = split ? x_cols : d, dx_cols = split ? 2 * d : d;
  std::vector<T> out(n * d), dx(n * dx_cols), dy(split ? 0 : n * d);
  launch(n, d, VEC, [&] { gated_act_fwd_kernel<T, VEC>(x.data(), g, out.data(), x_cols, g_stride, n, d, act, dp); });
  T* dg = split ? dx.data() + d : dy.data();
  launch(n, d, VEC, [&] {
    gated_act_bwd_kernel<T, VEC>(dout.data(), x.data(), g, dx.data(), dg, x_cols, g_stride, dx_cols, split ? dx_cols : d,
                                 n, d, act, dp);
  });
  write(dir + "/out.bin", out);
  write(dir + "/dx.bin", dx);
  if (!split) write(dir + "/dy.bin", dy);
}

template <typename T>
int run_vec(int vec, const std::string& dir, int64_t n, int64_t d, int64_t x_cols, bool split, int act,
            const fastenc::DropoutParams& dp) {
  if (vec == 1) {
    run<T, 1>(dir, n, d, x_cols, split, act, dp);
  } else if (vec == fastenc::vec_width<T>()) {
    run<T, fastenc::vec_width<T>()>(dir, n, d, x_cols, split, act, dp);
  } else {
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  std::ifstream params(dir + "/params.txt");
  char dtype;
  long long n, d, x_cols, seed;
  int split, act, vec;
  float p;
  params >> dtype >> n >> d >> x_cols >> split >> act >> p >> seed >> vec;
  if (!params) return 2;
  const int64_t seed64 = seed;
  const fastenc::DropoutParams dp = fastenc::make_dropout(&seed64, p);
  if (dtype == 'f') return run_vec<float>(vec, dir, n, d, x_cols, split != 0, act, dp);
  if (dtype == 'h') return run_vec<__half>(vec, dir, n, d, x_cols, split != 0, act, dp);
  if (dtype == 'b') return run_vec<__nv_bfloat16>(vec, dir, n, d, x_cols, split != 0, act, dp);
  return 2;
}
