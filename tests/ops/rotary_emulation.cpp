// Runs the CUDA rotary kernel of csrc/rotary.cuh on the CPU, unchanged, with the launcher's own choices: the
// vector width (rotary_vec_ok) and the launch shape (rotary_shape, under a grid cap given here, so that threads also
// loop over tokens). The kernel has no barrier and no shared memory, so its threads run one after another. __sincosf
// is the host's sinf / cosf (the kernel passes it angles in [-pi, pi], where the GPU's error is about 4e-7).
// The input buffer has NaN guard zones on both sides and the outputs start as NaN with a guard zone after them, so
// a read outside q / k or an element left unwritten shows up as NaN, and a write past the outputs fails the run.
//
// Usage: rotary_emulation DIR, with DIR/params.txt
//   "dtype(f|h|b) n heads half q_offset q_token_stride q_head_stride k_offset k_token_stride k_head_stride
//    x_elems theta inverse positions_int64 max_blocks"
// (offsets and strides in elements of DIR/x.bin, the one buffer q and k are views of), DIR/pos.bin (int32 or int64
// [n]). Writes DIR/q_out.bin and DIR/k_out.bin ([n, heads, 2 half] contiguous) and prints "vec V grid G block X Y".
#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <cuda_bf16.h>  // __half / __nv_bfloat16 and their host conversions
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define __launch_bounds__(n)

namespace emu {
struct Dim {
  unsigned x, y, z;
};
}  // namespace emu

inline emu::Dim threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline void __sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
// common.cuh's other helpers name these; the rotary kernel uses none of them
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32); }
template <typename T>
T __shfl_xor_sync(unsigned, T, int) {
  std::abort();
}
template <typename T>
T __shfl_sync(unsigned, T, int) {
  std::abort();
}
inline void __syncthreads() { std::abort(); }

#include "rotary.cuh"

namespace {

constexpr size_t kGuardBytes = 4096;  // a multiple of 16: the data after the leading guard stays 16-byte aligned

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

template <typename T, typename P>
void run(fastenc::RotaryParams p, int64_t max_blocks) {
  const bool vec = fastenc::rotary_vec_ok<T>(p);
  const int width = vec ? fastenc::vec_width<T>() : 1;
  const fastenc::RotaryShape shape = fastenc::rotary_shape(p.n, p.half, width, max_blocks);
  std::printf("vec %d grid %u block %u %u\n", width, shape.grid, shape.block.x, shape.block.y);
  gridDim = {shape.grid, 1, 1};
  blockDim = {shape.block.x, shape.block.y, 1};
  for (unsigned b = 0; b < shape.grid; ++b) {
    for (unsigned y = 0; y < shape.block.y; ++y) {
      for (unsigned x = 0; x < shape.block.x; ++x) {
        blockIdx = {b, 0, 0};
        threadIdx = {x, y, 0};
        const auto* q = static_cast<const T*>(p.q);
        const auto* k = static_cast<const T*>(p.k);
        const auto* pos = static_cast<const P*>(p.positions);
        if (vec) {
          fastenc::rotary_kernel<T, P, fastenc::vec_width<T>()>(q, k, pos, static_cast<T*>(p.q_out),
                                                                static_cast<T*>(p.k_out), p.n, p.heads, p.half,
                                                                p.q_st, p.q_sh, p.k_st, p.k_sh, p.theta, p.inverse);
        } else {
          fastenc::rotary_kernel<T, P, 1>(q, k, pos, static_cast<T*>(p.q_out), static_cast<T*>(p.k_out), p.n,
                                          p.heads, p.half, p.q_st, p.q_sh, p.k_st, p.k_sh, p.theta, p.inverse);
        }
      }
    }
  }
}

template <typename T>
void run_dtype(const fastenc::RotaryParams& p, int64_t max_blocks) {
  if (p.positions_int64) {
    run<T, int64_t>(p, max_blocks);
  } else {
    run<T, int32_t>(p, max_blocks);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  std::ifstream params(dir + "/params.txt");
  char code = 0;
  int64_t n = 0, heads = 0, half = 0, q_off = 0, q_st = 0, q_sh = 0, k_off = 0, k_st = 0, k_sh = 0, x_elems = 0;
  int64_t max_blocks = 0;
  int inverse = 0, pos64 = 0;
  float theta = 0.f;
  params >> code >> n >> heads >> half >> q_off >> q_st >> q_sh >> k_off >> k_st >> k_sh >> x_elems >> theta >>
      inverse >> pos64 >> max_blocks;
  if (!params) return 2;
  const size_t elem = code == 'f' ? 4 : 2;
  const size_t out_bytes = static_cast<size_t>(n * heads * 2 * half) * elem;

  // 16-byte aligned storage: [guard | x | guard], [q_out | guard], [k_out | guard]
  std::vector<char> x_file = read_file(dir + "/x.bin"), positions = read_file(dir + "/pos.bin");
  if (x_file.size() != static_cast<size_t>(x_elems) * elem) return 2;
  std::vector<uint4> x_buf((2 * kGuardBytes + x_file.size() + 15) / 16), q_buf((out_bytes + kGuardBytes + 15) / 16),
      k_buf((out_bytes + kGuardBytes + 15) / 16);
  for (auto* buf : {&x_buf, &q_buf, &k_buf}) std::memset(buf->data(), 0xff, buf->size() * 16);  // NaN in every dtype
  char* x = reinterpret_cast<char*>(x_buf.data()) + kGuardBytes;
  std::memcpy(x, x_file.data(), x_file.size());
  char* q_out = reinterpret_cast<char*>(q_buf.data());
  char* k_out = reinterpret_cast<char*>(k_buf.data());

  fastenc::RotaryParams p{x + q_off * elem, x + k_off * elem, positions.data(), q_out, k_out, n,
                          static_cast<int>(heads), static_cast<int>(half), q_st, q_sh, k_st, k_sh, theta,
                          inverse != 0, pos64 != 0};
  switch (code) {
    case 'f':
      run_dtype<float>(p, max_blocks);
      break;
    case 'h':
      run_dtype<__half>(p, max_blocks);
      break;
    case 'b':
      run_dtype<__nv_bfloat16>(p, max_blocks);
      break;
    default:
      return 2;
  }
  for (const char* out : {q_out, k_out}) {
    for (size_t i = out_bytes; i < out_bytes + kGuardBytes; ++i) {
      if (static_cast<unsigned char>(out[i]) != 0xff) {
        std::fprintf(stderr, "written past the output (byte %zu of %zu)\n", i, out_bytes);
        return 3;
      }
    }
  }
  std::ofstream(dir + "/q_out.bin", std::ios::binary).write(q_out, static_cast<std::streamsize>(out_bytes));
  std::ofstream(dir + "/k_out.bin", std::ios::binary).write(k_out, static_cast<std::streamsize>(out_bytes));
  return 0;
}
