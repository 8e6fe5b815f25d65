// The gated_act kernels of csrc/gated_act.cu (see its header for the design), apart from the launchers so that
// tests/ops/gated_act_emulation.cpp runs them on the CPU. Device code only: no shared memory, no warp collectives.
#pragma once

#include "common.cuh"
#include "gelu.cuh"

namespace fastenc {
namespace {

// act and its derivative in fp32, sharing the transcendental; act indexes GatedAct.
__device__ __forceinline__ float gated_act_value(float a, int act) {
  if (act == static_cast<int>(GatedAct::kSilu)) return a / (1.f + expf(-a));
  return gelu(a, act == static_cast<int>(GatedAct::kGeluTanh));
}

__device__ __forceinline__ void gated_act_value_grad(float a, int act, float& value, float& grad) {
  if (act == static_cast<int>(GatedAct::kSilu)) {
    const float s = 1.f / (1.f + expf(-a));
    value = a * s;
    grad = s * (1.f + a * (1.f - s));
  } else if (act == static_cast<int>(GatedAct::kGeluTanh)) {
    const float t = tanhf(kSqrt2OverPi * (a + kTanhCoef * a * a * a));
    value = 0.5f * a * (1.f + t);
    grad = 0.5f * (1.f + t) + 0.5f * a * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kTanhCoef * a * a);
  } else {
    const float cdf = 0.5f * (1.f + erff(a * kSqrt1_2));
    value = a * cdf;
    grad = cdf + a * kInvSqrt2Pi * expf(-0.5f * a * a);
  }
}

// Zeroes the dropped elements of v (row, c0 .. c0 + VEC - 1) and scales the kept ones; nothing without dropout.
template <int VEC>
__device__ __forceinline__ void apply_dropout(const DropoutParams& dp, uint32_t key0, uint32_t key1, int64_t row,
                                              int64_t c0, float (&v)[VEC]) {
  if (dp.seed_ptr == nullptr) return;
  bool keep[VEC];
  rowwise_keep<VEC>(key0, key1, dp.threshold, row, c0, keep);
#pragma unroll
  for (int k = 0; k < VEC; ++k) v[k] = keep[k] ? v[k] * dp.scale : 0.f;
}

// One block per row (grid-stride), VEC consecutive columns per thread and step.
template <typename T, int VEC>
__global__ void gated_act_fwd_kernel(const T* __restrict__ u_ptr,  // [n, d] act input, row stride u_stride
                                     const T* __restrict__ g_ptr,  // [n, d] gate, row stride g_stride
                                     T* __restrict__ out_ptr,      // [n, d] contiguous
                                     int64_t u_stride, int64_t g_stride, int64_t n, int64_t d, int act,
                                     DropoutParams dp) {
  uint32_t key0, key1;
  read_seed(dp.seed_ptr, key0, key1);
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
      float a[VEC], g[VEC];
      load_f<VEC>(u_ptr + row * u_stride + c0, a);
      load_f<VEC>(g_ptr + row * g_stride + c0, g);
#pragma unroll
      for (int k = 0; k < VEC; ++k) a[k] = gated_act_value(a[k], act) * g[k];
      apply_dropout<VEC>(dp, key0, key1, row, c0, a);
      store_f<VEC>(out_ptr + row * d + c0, a);
    }
  }
}

template <typename T, int VEC>
__global__ void gated_act_bwd_kernel(const T* __restrict__ dout_ptr,  // [n, d] contiguous
                                     const T* __restrict__ u_ptr,     // [n, d] act input, row stride u_stride
                                     const T* __restrict__ g_ptr,     // [n, d] gate, row stride g_stride
                                     T* __restrict__ du_ptr,          // [n, d] out, row stride du_stride
                                     T* __restrict__ dg_ptr,          // [n, d] out, row stride dg_stride
                                     int64_t u_stride, int64_t g_stride, int64_t du_stride, int64_t dg_stride,
                                     int64_t n, int64_t d, int act, DropoutParams dp) {
  uint32_t key0, key1;
  read_seed(dp.seed_ptr, key0, key1);
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
      float dy[VEC], a[VEC], g[VEC];
      load_f<VEC>(dout_ptr + row * d + c0, dy);
      load_f<VEC>(u_ptr + row * u_stride + c0, a);
      load_f<VEC>(g_ptr + row * g_stride + c0, g);
      apply_dropout<VEC>(dp, key0, key1, row, c0, dy);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float value, grad;
        gated_act_value_grad(a[k], act, value, grad);
        a[k] = dy[k] * g[k] * grad;
        g[k] = dy[k] * value;
      }
      store_f<VEC>(du_ptr + row * du_stride + c0, a);
      store_f<VEC>(dg_ptr + row * dg_stride + c0, g);
    }
  }
}

}  // namespace
}  // namespace fastenc
