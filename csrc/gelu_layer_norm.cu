// gelu_layer_norm: y = LayerNorm(gelu(x + x_bias)), the MLM / ELECTRA-generator head transform, in one kernel.
//
// Trade-off: gelu(x + x_bias) is recomputed wherever it is needed (both forward passes, both backward passes and
// for gelu') instead of being stored: the op stays memory-bound on x alone, and only x is saved for backward.
#include "gelu.cuh"
#include "layer_norm.cuh"

namespace fastenc {

namespace {

// Pre-activation a = x + x_bias of columns c0 .. c0+VEC-1 of one row.
template <typename T, int VEC>
__device__ __forceinline__ void load_preact(const T* x_ptr, const T* x_bias_ptr, int64_t off, int64_t c0,
                                            float (&a)[VEC]) {
  load_f<VEC>(x_ptr + off, a);
  if (x_bias_ptr != nullptr) {
    float b[VEC];
    load_f<VEC>(x_bias_ptr + c0, b);
#pragma unroll
    for (int k = 0; k < VEC; ++k) a[k] += b[k];
  }
}

template <typename T, int VEC>
struct GeluLayerNormFwdOp {
  const T* x_ptr;       // [n, d]
  const T* x_bias_ptr;  // [d] or nullptr
  T* y_ptr;             // [n, d]
  int64_t d;
  bool tanh_approx;

  __device__ void row_begin(int64_t) {}
  __device__ void load_h(int64_t row, int64_t c0, float (&h)[VEC], bool) {
    load_preact<T, VEC>(x_ptr, x_bias_ptr, row * d + c0, c0, h);
#pragma unroll
    for (int k = 0; k < VEC; ++k) h[k] = gelu(h[k], tanh_approx);
  }
  __device__ void store_y(int64_t row, int64_t c0, const float (&y)[VEC]) { store_f<VEC>(y_ptr + row * d + c0, y); }
};

template <typename T, int VEC>
struct GeluLayerNormBwdOp {
  const T* dy_ptr;      // [n, d]
  const T* x_ptr;       // [n, d]
  const T* x_bias_ptr;  // [d] or nullptr
  T* dx_ptr;            // [n, d]
  int64_t d;
  bool tanh_approx;

  __device__ void row_begin(int64_t) {}
  __device__ void load_h(int64_t row, int64_t c0, float (&h)[VEC]) {
    load_preact<T, VEC>(x_ptr, x_bias_ptr, row * d + c0, c0, h);
#pragma unroll
    for (int k = 0; k < VEC; ++k) h[k] = gelu(h[k], tanh_approx);
  }
  __device__ void load_dy(int64_t row, int64_t c0, float (&dy)[VEC]) { load_f<VEC>(dy_ptr + row * d + c0, dy); }
  __device__ void finish(int64_t) {}
  __device__ void store_dh(int64_t row, int64_t c0, const float (&dh)[VEC], float (&extra)[VEC]) {
    float da[VEC];
    load_preact<T, VEC>(x_ptr, x_bias_ptr, row * d + c0, c0, da);
#pragma unroll
    for (int k = 0; k < VEC; ++k) da[k] = dh[k] * gelu_grad(da[k], tanh_approx);
    store_f<VEC>(dx_ptr + row * d + c0, da);
    if (x_bias_ptr != nullptr) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) extra[k] = da[k];
    }
  }
};

}  // namespace

cudaError_t gelu_layer_norm_fwd(const void* x, const void* x_bias, const void* weight, const void* bias, void* y,
                                float* mean, float* rstd, int64_t n, int64_t d, float eps, bool tanh_approx,
                                DType dtype, DType param_dtype, cudaStream_t stream) {
  if (d < 1 || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  FASTENC_DISPATCH_DTYPE(
      dtype, T, FASTENC_DISPATCH_PARAM(dtype, param_dtype, T, P, {
        const bool vec = d % vec_width<T>() == 0 && aligned16(x) && aligned16(y) && (!x_bias || aligned16(x_bias)) &&
                         aligned16(weight) && aligned16(bias);
        FASTENC_DISPATCH_VEC(vec, T, VEC, {
          const GeluLayerNormFwdOp<T, VEC> op{static_cast<const T*>(x), static_cast<const T*>(x_bias),
                                              static_cast<T*>(y), d, tanh_approx};
          layer_norm_fwd_rows_kernel<T, P, VEC><<<fwd_rows_grid(n), row_threads((d + VEC - 1) / VEC), 0, stream>>>(
              op, static_cast<const P*>(weight), static_cast<const P*>(bias), mean, rstd, n, d, eps);
        })
      }))
  return cudaGetLastError();
}

cudaError_t gelu_layer_norm_bwd(const void* dy, const void* x, const void* x_bias, const void* weight,
                                const float* mean, const float* rstd, void* dx, void* dx_bias, void* dweight,
                                void* dbias, float* partial, int64_t n, int64_t d, bool tanh_approx, DType dtype,
                                DType param_dtype, cudaStream_t stream) {
  if (d < 1 || n < 0 || (x_bias == nullptr) != (dx_bias == nullptr)) return cudaErrorInvalidValue;
  FASTENC_DISPATCH_DTYPE(dtype, T, FASTENC_DISPATCH_PARAM(dtype, param_dtype, T, P, {
                           const bool vec = d % vec_width<T>() == 0 && aligned16(dy) && aligned16(x) && aligned16(dx) &&
                                            (!x_bias || aligned16(x_bias)) && aligned16(weight);
                           FASTENC_DISPATCH_VEC(vec, T, VEC, {
                             const GeluLayerNormBwdOp<T, VEC> op{static_cast<const T*>(dy),
                                                                 static_cast<const T*>(x),
                                                                 static_cast<const T*>(x_bias),
                                                                 static_cast<T*>(dx),
                                                                 d,
                                                                 tanh_approx};
                             return launch_layer_norm_bwd<T, P, VEC, 3>(op, static_cast<const P*>(weight), mean, rstd,
                                                                        partial, dweight, dbias, dx_bias, n, d, dtype,
                                                                        param_dtype, stream);
                           })
                         }))
  return cudaErrorInvalidValue;
}

}  // namespace fastenc
