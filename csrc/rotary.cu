// rotary: rotate-half RoPE of q and k, forward and backward (the rotation by -angle), one launch for both.
//
// Trade-off: a thread owns VEC columns of the first half (16-byte vectors when the head dim, strides and pointers
// allow) and loops over every head of q and k of its token, so its VEC angles (cos / sin) are computed once per
// token and shared by 2H rotations; a block holds several tokens (threadIdx.y). Each thread computes its VEC inv_freq
// in fp64 rounded to fp32 (the reference's fp32 inv_freq): at thousands of radians an fp32 exp2 / log2 error of a
// few ulps would show, and the fp64 work, per token and column rather than per element, stays small next to the
// loads of 2H heads. Angles are reduced to [-pi, pi] before the fast __sincosf, whose error is small only there.
// Device code: rotary.cuh.
#include "layer_norm.cuh"
#include "rotary.cuh"

namespace fastenc {

namespace {

constexpr int64_t kRotaryMaxBlocks = 1 << 20;  // beyond, threads loop over tokens (grid stride)

template <typename T, typename P>
cudaError_t launch_rotary(const RotaryParams& p, cudaStream_t stream) {
  FASTENC_DISPATCH_VEC(rotary_vec_ok<T>(p), T, VEC, {
    const RotaryShape shape = rotary_shape(p.n, p.half, VEC, kRotaryMaxBlocks);
    rotary_kernel<T, P, VEC><<<shape.grid, shape.block, 0, stream>>>(
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
