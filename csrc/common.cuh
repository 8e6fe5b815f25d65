// Device helpers shared by every fastenc kernel: dtype conversion, vector loads / stores, Philox4x32-10 dropout,
// warp and block reductions, and the launch-shape helpers of the row-wise ops.
//
// Trade-off: the row-wise ops (LayerNorm family, bias + GELU) load 16 bytes per thread when the row length and
// every pointer allow it, and fall back to scalar loads otherwise, so any hidden size works with two template
// instantiations per dtype instead of one per hidden size. Statistics and reductions are always fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace fastenc {

// ---------------------------------------------------------------------------------------------------------------
// Conversions

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ---------------------------------------------------------------------------------------------------------------
// Vector loads / stores of N consecutive elements starting at p (p must be aligned to N * sizeof(T) when that is
// a multiple of 16 bytes, which the launchers check); converted to / from fp32 registers.

template <int N, typename T>
__device__ __forceinline__ void load_f(const T* __restrict__ p, float (&out)[N]) {
  if constexpr ((N * sizeof(T)) % 16 == 0) {
    constexpr int kPer = 16 / sizeof(T);
#pragma unroll
    for (int c = 0; c < N / kPer; ++c) {
      uint4 raw = *reinterpret_cast<const uint4*>(p + c * kPer);
      const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPer; ++k) out[c * kPer + k] = to_float(v[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = to_float(p[k]);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_f(T* __restrict__ p, const float (&in)[N]) {
  if constexpr ((N * sizeof(T)) % 16 == 0) {
    constexpr int kPer = 16 / sizeof(T);
#pragma unroll
    for (int c = 0; c < N / kPer; ++c) {
      uint4 raw;
      T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPer; ++k) v[k] = from_float<T>(in[c * kPer + k]);
      *reinterpret_cast<uint4*>(p + c * kPer) = raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = from_float<T>(in[k]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based generator,
// so any thread can draw the random numbers of any element from (seed, element coordinates) alone, and backward
// regenerates forward's dropout mask without storing it.

struct U32x4 {
  uint32_t x, y, z, w;
};

// Philox4x32 with kRounds rounds: 10 for the row ops' dropout, 7 for attention's (attention_dropout.cuh).
template <int kRounds>
__device__ __forceinline__ U32x4 philox4x32(U32x4 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < kRounds; ++round) {
    const uint32_t hi0 = __umulhi(kMul0, ctr.x), lo0 = kMul0 * ctr.x;
    const uint32_t hi1 = __umulhi(kMul1, ctr.z), lo1 = kMul1 * ctr.z;
    ctr = U32x4{hi1 ^ ctr.y ^ key0, lo1, hi0 ^ ctr.w ^ key1, lo0};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

// Word i (0..3) of r; two levels of selects, so a run-time i compiles to three SELs rather than branches.
__device__ __forceinline__ uint32_t pick(const U32x4& r, int i) {
  const uint32_t lo = (i & 1) ? r.y : r.x, hi = (i & 1) ? r.w : r.z;
  return (i & 2) ? hi : lo;
}

// Dropout parameters as the kernels use them: keep an element when its 32-bit random number is >= threshold
// (threshold = round(p * 2^32)), and scale kept values by 1 / (1 - p).
struct DropoutParams {
  const int64_t* seed_ptr;  // [1] int64 on the device, or nullptr when p == 0
  uint32_t threshold;
  float scale;
};

// Stream ids keep the counters of different uses of one seed apart.
constexpr uint32_t kRowwiseStream = 0x7e1u;
constexpr uint32_t kAttentionStream = 0xa77u;

// Keep flags of the N consecutive elements (row, c0 .. c0 + N - 1) of a row-wise op. Element (row, c) uses word
// (c & 3) of Philox(counter = {c >> 2, row lo, row hi, stream}), whatever the vector width of the caller: the
// scheme (and exact keep probability) that kernels/_common.py documents, so both backends draw the same mask.
template <int N>
__device__ __forceinline__ void rowwise_keep(uint32_t key0, uint32_t key1, uint32_t threshold, int64_t row, int64_t c0,
                                             bool (&keep)[N]) {
  U32x4 r{};
  int64_t quad = -1;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int64_t c = c0 + k;
    if ((c >> 2) != quad) {
      quad = c >> 2;
      r = philox4x32<10>(U32x4{static_cast<uint32_t>(quad), static_cast<uint32_t>(row),
                              static_cast<uint32_t>(static_cast<uint64_t>(row) >> 32), kRowwiseStream},
                        key0, key1);
    }
    keep[k] = pick(r, static_cast<int>(c & 3)) >= threshold;
  }
}

__device__ __forceinline__ void read_seed(const int64_t* seed_ptr, uint32_t& key0, uint32_t& key1) {
  const uint64_t s = seed_ptr ? static_cast<uint64_t>(*seed_ptr) : 0ull;
  key0 = static_cast<uint32_t>(s);
  key1 = static_cast<uint32_t>(s >> 32);
}

// ---------------------------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of a and b over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets the result.
// `scratch` holds 2 * 32 floats of shared memory; the fixed tree makes the result deterministic.
__device__ __forceinline__ void block_sum2(float& a, float& b, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  a = lane < nwarps ? scratch[lane] : 0.f;
  b = lane < nwarps ? scratch[32 + lane] : 0.f;
  a = warp_sum(a);
  b = warp_sum(b);
}

// Welford state (count, mean, M2) merged across the block: every thread gets the row's mean and M2.
struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
  const float n = a.n + b.n;
  if (n == 0.f) return a;
  const float d = b.mean - a.mean, wb = b.n / n;
  return Welford{n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Welford other{__shfl_xor_sync(0xffffffffu, w.n, o), __shfl_xor_sync(0xffffffffu, w.mean, o),
                  __shfl_xor_sync(0xffffffffu, w.m2, o)};
    w = welford_merge(w, other);
  }
  return w;
}

// `scratch` holds 3 * 32 floats of shared memory.
__device__ __forceinline__ Welford block_welford(Welford w, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  w = warp_welford(w);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = w.n;
    scratch[32 + warp] = w.mean;
    scratch[64 + warp] = w.m2;
  }
  __syncthreads();
  w = lane < nwarps ? Welford{scratch[lane], scratch[32 + lane], scratch[64 + lane]} : Welford{0.f, 0.f, 0.f};
  w = warp_welford(w);
  // Merging is not commutative bit for bit: every thread takes lane 0's result, so all use one mean and rstd.
  return Welford{__shfl_sync(0xffffffffu, w.n, 0), __shfl_sync(0xffffffffu, w.mean, 0),
                 __shfl_sync(0xffffffffu, w.m2, 0)};
}

// ---------------------------------------------------------------------------------------------------------------
// Launch shapes of the row-wise ops: one block per row (grid-stride over rows), each thread VEC elements per step.

// 16-byte vectors when the row length and every listed pointer allow it, else scalars.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int row_threads(int64_t chunks) {
  int64_t t = ((chunks + 31) / 32) * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 512 ? 512 : t));
}

// Sums partial[G, D] over G into out[D] (fp32 or the given dtype), in a fixed order.
cudaError_t colsum_partials(const float* partial, void* out, DType out_dtype, int64_t g, int64_t d,
                            cudaStream_t stream);

// Threshold and scale of dropout probability p (host or device).
__host__ __device__ inline DropoutParams make_dropout(const int64_t* seed_ptr, float p) {
  if (!(p > 0.f)) return DropoutParams{nullptr, 0u, 1.f};
  const double t = static_cast<double>(p) * 4294967296.0 + 0.5;
  return DropoutParams{seed_ptr, t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t), 1.f / (1.f - p)};
}

}  // namespace fastenc

// Dispatch a runtime DType onto a type alias T (float, __half, __nv_bfloat16).
#define FASTENC_DISPATCH_DTYPE(dtype, T, ...) \
  switch (dtype) {                            \
    case ::fastenc::DType::kFloat32: {        \
      using T = float;                        \
      __VA_ARGS__;                            \
    } break;                                  \
    case ::fastenc::DType::kFloat16: {        \
      using T = __half;                       \
      __VA_ARGS__;                            \
    } break;                                  \
    case ::fastenc::DType::kBFloat16: {       \
      using T = __nv_bfloat16;                \
      __VA_ARGS__;                            \
    } break;                                  \
    default:                                  \
      return cudaErrorInvalidValue;           \
  }
