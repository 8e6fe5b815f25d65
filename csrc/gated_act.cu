// gated_act: out = dropout(act(u) * g), act = GELU (erf or tanh form) or SiLU, forward and backward.
//
// Trade-off: one block per row (grid-stride), 16-byte vectors when the row length, the base pointers and every
// row stride allow it (scalars otherwise), fp32 math. The act input and the gate are two row-strided pointers, so
// the one-tensor form ([n, 2d], split in halves) is read in place and its gradient written into one [n, 2d]
// tensor with no copy. Backward recomputes act and act' from the saved input; dropout draws the row-wise Philox
// mask of common.cuh over the [n, d] output (the Triton kernels draw the same), so backward regenerates it.
#include <initializer_list>
#include <utility>

#include "gated_act_kernels.cuh"
#include "layer_norm.cuh"

namespace fastenc {

namespace {

// Vector width VEC is possible for every listed row (pointer aligned to 16 bytes, row stride a multiple of VEC).
template <typename T>
bool rows_vectorizable(int64_t d, std::initializer_list<std::pair<const void*, int64_t>> rows) {
  if (d % vec_width<T>() != 0) return false;
  for (const auto& [p, stride] : rows) {
    if (!aligned16(p) || stride % vec_width<T>() != 0) return false;
  }
  return true;
}

bool valid_act(int act) { return act >= 0 && act <= static_cast<int>(GatedAct::kSilu); }

}  // namespace

cudaError_t gated_act_fwd(const void* u, int64_t u_stride, const void* g, int64_t g_stride, void* out, int64_t n,
                          int64_t d, int act, float dropout_p, const int64_t* seed, DType dtype, cudaStream_t stream) {
  if (d < 1 || n < 0 || !valid_act(act) || (dropout_p > 0.f && seed == nullptr)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const DropoutParams dp = make_dropout(seed, dropout_p);
  FASTENC_DISPATCH_DTYPE(dtype, T, {
    const bool vec = rows_vectorizable<T>(d, {{u, u_stride}, {g, g_stride}, {out, d}});
    FASTENC_DISPATCH_VEC(vec, T, VEC, {
      gated_act_fwd_kernel<T, VEC><<<fwd_rows_grid(n), row_threads((d + VEC - 1) / VEC), 0, stream>>>(
          static_cast<const T*>(u), static_cast<const T*>(g), static_cast<T*>(out), u_stride, g_stride, n, d, act,
          dp);
    })
  })
  return cudaGetLastError();
}

cudaError_t gated_act_bwd(const void* dout, const void* u, int64_t u_stride, const void* g, int64_t g_stride, void* du,
                          int64_t du_stride, void* dg, int64_t dg_stride, int64_t n, int64_t d, int act,
                          float dropout_p, const int64_t* seed, DType dtype, cudaStream_t stream) {
  if (d < 1 || n < 0 || !valid_act(act) || (dropout_p > 0.f && seed == nullptr)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const DropoutParams dp = make_dropout(seed, dropout_p);
  FASTENC_DISPATCH_DTYPE(dtype, T, {
    const bool vec =
        rows_vectorizable<T>(d, {{dout, d}, {u, u_stride}, {g, g_stride}, {du, du_stride}, {dg, dg_stride}});
    FASTENC_DISPATCH_VEC(vec, T, VEC, {
      gated_act_bwd_kernel<T, VEC><<<fwd_rows_grid(n), row_threads((d + VEC - 1) / VEC), 0, stream>>>(
          static_cast<const T*>(dout), static_cast<const T*>(u), static_cast<const T*>(g), static_cast<T*>(du),
          static_cast<T*>(dg), u_stride, g_stride, du_stride, dg_stride, n, d, act, dp);
    })
  })
  return cudaGetLastError();
}

}  // namespace fastenc
