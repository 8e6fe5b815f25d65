// rotary's device code and launch shape (csrc/rotary.cu launches it; tests/ops/rotary_emulation.cpp runs it on the
// CPU): rotate-half RoPE of q and k, one thread per VEC columns of the first half of a token, looping over the heads.
#pragma once

#include "common.cuh"

namespace fastenc {

constexpr int kRotaryThreads = 256;

// Block (half / VEC column chunks, tokens) and grid (a block per blockDim.y tokens, at most max_blocks: threads then
// loop over the tokens with a grid stride).
struct RotaryShape {
  dim3 block;
  unsigned grid;
};
inline RotaryShape rotary_shape(int64_t n, int half, int vec, int64_t max_blocks) {
  const unsigned chunks = static_cast<unsigned>(half / vec);
  const dim3 block(chunks, chunks < kRotaryThreads ? kRotaryThreads / chunks : 1);
  const int64_t blocks = (n + block.y - 1) / block.y;
  return {block, static_cast<unsigned>(blocks < max_blocks ? (blocks < 1 ? 1 : blocks) : max_blocks)};
}

template <typename T, int VEC>
__device__ __forceinline__ void rotate_heads(const T* __restrict__ x,  // first-half columns of head 0 of the token
                                             T* __restrict__ out,      // same, in the contiguous output
                                             int64_t head_stride, int heads, int half, const float (&c)[VEC],
                                             const float (&s)[VEC]) {
  for (int h = 0; h < heads; ++h) {
    float x1[VEC], x2[VEC], y1[VEC], y2[VEC];
    load_f<VEC>(x + h * head_stride, x1);
    load_f<VEC>(x + h * head_stride + half, x2);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      y1[v] = x1[v] * c[v] - x2[v] * s[v];
      y2[v] = x2[v] * c[v] + x1[v] * s[v];
    }
    store_f<VEC>(out + static_cast<int64_t>(h) * 2 * half, y1);
    store_f<VEC>(out + static_cast<int64_t>(h) * 2 * half + half, y2);
  }
}

template <typename T, typename P, int VEC>
__global__ void __launch_bounds__(kRotaryThreads)
    rotary_kernel(const T* __restrict__ q_ptr,    // [n, heads, 2 * half], strides (q_st, q_sh, 1)
                              const T* __restrict__ k_ptr,    // [n, heads, 2 * half], strides (k_st, k_sh, 1)
                              const P* __restrict__ pos_ptr,  // [n] int32 / int64 positions
                              T* __restrict__ qo_ptr,         // [n, heads, 2 * half] contiguous
                              T* __restrict__ ko_ptr,         // [n, heads, 2 * half] contiguous
                              int64_t n, int heads, int half, int64_t q_st, int64_t q_sh, int64_t k_st, int64_t k_sh,
                              float theta, bool inverse) {
  const int c0 = static_cast<int>(threadIdx.x) * VEC;
  // inv_freq_i = theta ** (-2 i / D) = exp2(-(i / half) * log2(theta)) in fp64, rounded to fp32; the thread's next
  // columns by fp64 products with theta ** (-2 / D) (relative error ~1e-15, far below fp32's rounding)
  const double exponent = -log2(static_cast<double>(theta)) / half, step = exp2(exponent);
  double freq = exp2(c0 * exponent);
  float inv_freq[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v, freq *= step) inv_freq[v] = static_cast<float>(freq);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < n; t += stride) {
    const float p = static_cast<float>(pos_ptr[t]);
    float c[VEC], s[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float a = p * inv_freq[v];
      // a - turns * 2 pi, 2 pi = 6.28125 (exact in 8 bits: turns * 6.28125 is exact below 2^16 turns) + 0.00193...
      const float turns = rintf(a * 0.15915494309189535f);
      const float r = fmaf(-turns, 0.0019353071795864769f, fmaf(-turns, 6.28125f, a));
      __sincosf(r, &s[v], &c[v]);
      if (inverse) s[v] = -s[v];
    }
    const int64_t o = t * heads * 2 * half + c0;
    rotate_heads<T, VEC>(q_ptr + t * q_st + c0, qo_ptr + o, q_sh, heads, half, c, s);
    rotate_heads<T, VEC>(k_ptr + t * k_st + c0, ko_ptr + o, k_sh, heads, half, c, s);
  }
}

// Whether the 16-byte vector path applies: half, every stride and every pointer in whole vectors.
template <typename T>
inline bool rotary_vec_ok(const RotaryParams& p) {
  constexpr int kVec = vec_width<T>();
  return p.half % kVec == 0 && p.q_st % kVec == 0 && p.q_sh % kVec == 0 && p.k_st % kVec == 0 &&
         p.k_sh % kVec == 0 && aligned16(p.q) && aligned16(p.k) && aligned16(p.q_out) && aligned16(p.k_out);
}

}  // namespace fastenc
