// bias_gelu: y = gelu(x + bias), exact (erf) or tanh form, forward and backward.
//
// Trade-off: one block per row (grid-stride), 16-byte vectors when the row length allows, so the bias chunk of a
// thread never changes across rows and the backward's dbias partial sums stay in the thread's own columns of
// shared memory (or of the block's global workspace row for very wide rows): deterministic, no atomics.
#include "gelu.cuh"
#include "layer_norm.cuh"

namespace fastenc {

namespace {

template <typename T, int VEC>
__global__ void bias_gelu_fwd_kernel(const T* __restrict__ x_ptr,     // [n, d]
                                     const T* __restrict__ bias_ptr,  // [d] or nullptr
                                     T* __restrict__ y_ptr,           // [n, d]
                                     int64_t n, int64_t d, bool tanh_approx) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
      float a[VEC];
      load_f<VEC>(x_ptr + row * d + c0, a);
      if (bias_ptr != nullptr) {
        float b[VEC];
        load_f<VEC>(bias_ptr + c0, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) a[k] += b[k];
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) a[k] = gelu(a[k], tanh_approx);
      store_f<VEC>(y_ptr + row * d + c0, a);
    }
  }
}

template <typename T, int VEC>
__global__ void bias_gelu_bwd_kernel(const T* __restrict__ dy_ptr,     // [n, d]
                                     const T* __restrict__ x_ptr,      // [n, d]
                                     const T* __restrict__ bias_ptr,   // [d] or nullptr (then no dbias)
                                     T* __restrict__ dx_ptr,           // [n, d]
                                     float* __restrict__ partial_ptr,  // [gridDim.x, d] fp32, with bias only
                                     int64_t n, int64_t d, bool tanh_approx, bool acc_in_smem) {
  extern __shared__ float smem_acc[];  // [d] when acc_in_smem
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  float* acc = acc_in_smem ? smem_acc : (bias_ptr != nullptr ? partial_ptr + blockIdx.x * d : nullptr);
  if (acc != nullptr) {
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[c0 + k] = 0.f;
    }
  }
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
      float a[VEC], g[VEC];
      load_f<VEC>(x_ptr + row * d + c0, a);
      load_f<VEC>(dy_ptr + row * d + c0, g);
      if (bias_ptr != nullptr) {
        float b[VEC];
        load_f<VEC>(bias_ptr + c0, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) a[k] += b[k];
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) g[k] *= gelu_grad(a[k], tanh_approx);
      store_f<VEC>(dx_ptr + row * d + c0, g);
      if (acc != nullptr) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[c0 + k] += g[k];
      }
    }
  }
  if (acc_in_smem) {
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) partial_ptr[blockIdx.x * d + c0 + k] = smem_acc[c0 + k];
    }
  }
}

}  // namespace

cudaError_t bias_gelu_fwd(const void* x, const void* bias, void* y, int64_t n, int64_t d, bool tanh_approx, DType dtype,
                          cudaStream_t stream) {
  if (d < 1 || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  FASTENC_DISPATCH_DTYPE(dtype, T, {
    const bool vec = d % vec_width<T>() == 0 && aligned16(x) && aligned16(y) && (!bias || aligned16(bias));
    FASTENC_DISPATCH_VEC(vec, T, VEC, {
      bias_gelu_fwd_kernel<T, VEC><<<fwd_rows_grid(n), row_threads((d + VEC - 1) / VEC), 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(y), n, d, tanh_approx);
    })
  })
  return cudaGetLastError();
}

cudaError_t bias_gelu_bwd(const void* dy, const void* x, const void* bias, void* dx, void* dbias, float* partial,
                          int64_t n, int64_t d, bool tanh_approx, DType dtype, cudaStream_t stream) {
  if (d < 1 || n < 0 || (bias == nullptr) != (dbias == nullptr) || (bias != nullptr && partial == nullptr))
    return cudaErrorInvalidValue;
  const bool with_bias = bias != nullptr;
  if (n == 0 && !with_bias) return cudaSuccess;
  const unsigned grid = with_bias ? static_cast<unsigned>(row_partials_blocks(n)) : fwd_rows_grid(n);
  const size_t smem = with_bias ? bwd_acc_smem_bytes(1, d) : 0;
  FASTENC_DISPATCH_DTYPE(dtype, T, {
    const bool vec =
        d % vec_width<T>() == 0 && aligned16(dy) && aligned16(x) && aligned16(dx) && (!bias || aligned16(bias));
    FASTENC_DISPATCH_VEC(vec, T, VEC, {
      bias_gelu_bwd_kernel<T, VEC><<<grid, row_threads((d + VEC - 1) / VEC), smem, stream>>>(
          static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(dx),
          partial, n, d, tanh_approx, smem > 0);
    })
  })
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !with_bias) return err;
  return colsum_partials(partial, dbias, dtype, grid, d, stream);
}

}  // namespace fastenc
