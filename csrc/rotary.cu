// rotary: rotate-half RoPE of q and k, forward and backward (the rotation by -angle), one launch for both.
//
// Trade-off: a thread owns VEC columns of the first half (16-byte vectors when the head dim, strides and pointers
// allow) of one token and loops over every head of q and k, so its VEC angles (cos / sin) are computed once per
// token and shared by 2H rotations; a block holds several tokens (threadIdx.y). inv_freq is computed once per block
// in fp64 (rounded to fp32, as the reference's fp32 inv_freq) into shared memory: at thousands of radians an fp32
// exp2 / log2 error of a few ulps would show, and fp64 per element would cost more than the loads. Angles are
// reduced to [-pi, pi] before the fast __sincosf, whose error is small only there.
#include "common.cuh"
#include "layer_norm.cuh"

namespace fastenc {

namespace {

constexpr int kRotaryThreads = 256;

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
__global__ void rotary_kernel(const T* __restrict__ q_ptr,    // [n, heads, 2 * half], strides (q_st, q_sh, 1)
                              const T* __restrict__ k_ptr,    // [n, heads, 2 * half], strides (k_st, k_sh, 1)
                              const P* __restrict__ pos_ptr,  // [n] int32 / int64 positions
                              T* __restrict__ qo_ptr,         // [n, heads, 2 * half] contiguous
                              T* __restrict__ ko_ptr,         // [n, heads, 2 * half] contiguous
                              int64_t n, int heads, int half, int64_t q_st, int64_t q_sh, int64_t k_st, int64_t k_sh,
                              float theta, bool inverse) {
  extern __shared__ float inv_freq[];  // [half]
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  // inv_freq_i = theta ** (-2 i / D) = exp2(-(i / half) * log2(theta)), as the Triton kernel computes it
  const double exponent = -log2(static_cast<double>(theta)) / half;
  for (int i = tid; i < half; i += blockDim.x * blockDim.y) inv_freq[i] = static_cast<float>(exp2(i * exponent));
  __syncthreads();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (t >= n) return;
  const int c0 = threadIdx.x * VEC;
  const float p = static_cast<float>(pos_ptr[t]);
  float c[VEC], s[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    const float a = p * inv_freq[c0 + v];
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

template <typename T, typename P>
cudaError_t launch_rotary(const RotaryParams& p, cudaStream_t stream) {
  constexpr int kVec = vec_width<T>();
  const bool vec = p.half % kVec == 0 && p.q_st % kVec == 0 && p.q_sh % kVec == 0 && p.k_st % kVec == 0 &&
                   p.k_sh % kVec == 0 && aligned16(p.q) && aligned16(p.k) && aligned16(p.q_out) &&
                   aligned16(p.k_out);
  FASTENC_DISPATCH_VEC(vec, T, VEC, {
    const int chunks = p.half / VEC;
    const dim3 block(chunks, chunks < kRotaryThreads ? kRotaryThreads / chunks : 1);
    const int64_t blocks = (p.n + block.y - 1) / block.y;
    if (blocks > 2147483647) return cudaErrorInvalidValue;
    rotary_kernel<T, P, VEC><<<static_cast<unsigned>(blocks), block, p.half * sizeof(float), stream>>>(
        static_cast<const T*>(p.q), static_cast<const T*>(p.k), static_cast<const P*>(p.positions),
        static_cast<T*>(p.q_out), static_cast<T*>(p.k_out), p.n, p.heads, p.half, p.q_st, p.q_sh, p.k_st, p.k_sh,
        p.theta, p.inverse);
  })
  return cudaGetLastError();
}

}  // namespace

cudaError_t rotary(const RotaryParams& p, DType dtype, cudaStream_t stream) {
  if (p.n < 0 || p.heads < 0 || p.half < 1 || p.half > kRotaryMaxHalf || !(p.theta > 0.f)) return cudaErrorInvalidValue;
  if (p.n == 0 || p.heads == 0) return cudaSuccess;
  FASTENC_DISPATCH_DTYPE(dtype, T, {
    return p.positions_int64 ? launch_rotary<T, int64_t>(p, stream) : launch_rotary<T, int32_t>(p, stream);
  })
  return cudaSuccess;
}

}  // namespace fastenc
