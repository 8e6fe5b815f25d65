// GELU and its derivative in fp32, exact (erf) or tanh form, for bias_gelu and gelu_layer_norm.
#pragma once

#include "common.cuh"

namespace fastenc {

constexpr float kSqrt1_2 = 0.70710678118654752f;      // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2 / pi)
constexpr float kTanhCoef = 0.044715f;

__device__ __forceinline__ float gelu(float a, bool tanh_approx) {
  if (tanh_approx) return 0.5f * a * (1.f + tanhf(kSqrt2OverPi * (a + kTanhCoef * a * a * a)));
  return 0.5f * a * (1.f + erff(a * kSqrt1_2));
}

__device__ __forceinline__ float gelu_grad(float a, bool tanh_approx) {
  if (tanh_approx) {
    const float t = tanhf(kSqrt2OverPi * (a + kTanhCoef * a * a * a));
    return 0.5f * (1.f + t) + 0.5f * a * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kTanhCoef * a * a);
  }
  return 0.5f * (1.f + erff(a * kSqrt1_2)) + a * kInvSqrt2Pi * expf(-0.5f * a * a);
}

}  // namespace fastenc
