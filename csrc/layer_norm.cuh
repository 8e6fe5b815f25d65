// The LayerNorm skeleton that add_layer_norm, gelu_layer_norm and embeddings share: one thread block per row
// (grid-stride over rows), each thread VEC elements per step, fp32 statistics. The op-specific parts (how the
// LayerNorm input h of a chunk is produced, what happens to y, to the incoming gradient and to dL/dh) are small
// "row op" structs passed by value to the kernels below.
//
// Trade-off: no row is cached in shared memory, so one kernel serves every hidden size; the forward's second pass
// re-reads the row, which is then in L1/L2. Forward computes mean and variance in one pass (Welford, merged across
// the block); backward takes two passes (the two row sums, then dh). When every thread owns at most one vector
// chunk of the row (d <= 512 * VEC: every BERT size), backward keeps that chunk's h, dy and weight in registers
// across the two passes and the per-block partial sums of dweight / dbias (and one extra per-column gradient) in
// registers across rows; otherwise it re-reads the row and keeps the partial sums in shared memory when they fit,
// else in the global workspace row that the block owns.
//
// A forward row op provides:
//   void row_begin(int64_t row)                                      once per row, before the first chunk
//   void load_h(int64_t row, int64_t c0, float (&h)[VEC], bool first)  LayerNorm input of columns c0 .. c0+VEC-1
//   void store_y(int64_t row, int64_t c0, const float (&y)[VEC])      LayerNorm output
// A backward row op provides:
//   void row_begin(int64_t row)
//   void load_h(int64_t row, int64_t c0, float (&h)[VEC])
//   void load_dy(int64_t row, int64_t c0, float (&dy)[VEC])           gradient w.r.t. the LayerNorm output
//   void store_dh(int64_t row, int64_t c0, const float (&dh)[VEC], float (&extra)[VEC])  dL/dh; the op writes
//        its own per-column gradient of these columns to `extra` (ops with NACC == 3; others leave it alone)
//   void finish(int64_t c0)  once per thread at the end, in the one-chunk mode (bwd_one_chunk), for the chunk it
//        owned: flushes what the op summed in registers over the block's rows
#pragma once

#include "common.cuh"

namespace fastenc {

template <typename T, typename P, int VEC, class Op>
__global__ void layer_norm_fwd_rows_kernel(Op op,
                                           const P* __restrict__ weight_ptr,  // [d]
                                           const P* __restrict__ bias_ptr,    // [d] or nullptr (bias-free)
                                           float* __restrict__ mean_ptr,      // [n]
                                           float* __restrict__ rstd_ptr,      // [n]
                                           int64_t n, int64_t d, float eps) {
  __shared__ float scratch[3 * 32];
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    op.row_begin(row);
    Welford w{0.f, 0.f, 0.f};
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
      float h[VEC];
      op.load_h(row, c0, h, true);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        w.n += 1.f;
        const float delta = h[k] - w.mean;
        w.mean += delta / w.n;
        w.m2 += delta * (h[k] - w.mean);
      }
    }
    w = block_welford(w, scratch);
    const float mean = w.mean;
    const float rstd = rsqrtf(fmaxf(w.m2, 0.f) / static_cast<float>(d) + eps);
    if (threadIdx.x == 0) {
      mean_ptr[row] = mean;
      rstd_ptr[row] = rstd;
    }
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
      float h[VEC], wt[VEC], bs[VEC] = {}, y[VEC];
      op.load_h(row, c0, h, false);
      load_f<VEC>(weight_ptr + c0, wt);
      if (bias_ptr != nullptr) load_f<VEC>(bias_ptr + c0, bs);
#pragma unroll
      for (int k = 0; k < VEC; ++k) y[k] = (h[k] - mean) * rstd * wt[k] + bs[k];
      op.store_y(row, c0, y);
    }
  }
}

// Adds one chunk's terms of the row sums sum(g) and sum(g * xhat), g = dy * weight, that the LayerNorm backward needs.
template <int VEC>
__device__ __forceinline__ void layer_norm_bwd_sums(const float (&h)[VEC], const float (&dy)[VEC],
                                                    const float (&wt)[VEC], float mean, float rstd, float& sum_g,
                                                    float& sum_gx) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float gk = dy[k] * wt[k];
    sum_g += gk;
    sum_gx += gk * (h[k] - mean) * rstd;
  }
}

// dh of one chunk from the row sums; adds dweight, dbias (and the op's extra gradient) terms to acc[a][k].
template <int VEC, int NACC, class Op, class Acc>
__device__ __forceinline__ void layer_norm_bwd_chunk(Op& op, int64_t row, int64_t c0, const float (&h)[VEC],
                                                     const float (&dy)[VEC], const float (&wt)[VEC], float mean,
                                                     float rstd, float mean_g, float mean_gx, Acc&& acc) {
  float dh[VEC], extra[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float xhat = (h[k] - mean) * rstd;
    dh[k] = rstd * (dy[k] * wt[k] - mean_g - xhat * mean_gx);
    acc(0, k) += dy[k] * xhat;
    acc(1, k) += dy[k];
    extra[k] = 0.f;
  }
  op.store_dh(row, c0, dh, extra);
  if constexpr (NACC == 3) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc(2, k) += extra[k];
  }
}

// NACC accumulator rows per block: dweight, dbias, then the op's extra gradient when NACC == 3. ONE_CHUNK: every
// thread owns at most one chunk (blockDim.x * VEC >= d), whose row data and partial sums stay in registers.
template <typename T, typename P, int VEC, int NACC, bool ONE_CHUNK, class Op>
__global__ void layer_norm_bwd_rows_kernel(Op op,
                                           const P* __restrict__ weight_ptr,    // [d]
                                           const float* __restrict__ mean_ptr,  // [n]
                                           const float* __restrict__ rstd_ptr,  // [n]
                                           float* __restrict__ partial_ptr,     // [NACC, gridDim.x, d] fp32
                                           int64_t n, int64_t d, bool acc_in_smem) {
  extern __shared__ float smem_acc[];  // [NACC, d] when acc_in_smem
  __shared__ float scratch[2 * 32];
  const int64_t g = gridDim.x, step = static_cast<int64_t>(blockDim.x) * VEC;
  const float inv_d = 1.f / static_cast<float>(d);
  if constexpr (ONE_CHUNK) {
    const int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC;
    const bool owner = c0 < d;
    float wt[VEC], acc[NACC][VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      wt[k] = 0.f;
#pragma unroll
      for (int a = 0; a < NACC; ++a) acc[a][k] = 0.f;
    }
    if (owner) load_f<VEC>(weight_ptr + c0, wt);
    for (int64_t row = blockIdx.x; row < n; row += g) {
      op.row_begin(row);
      const float mean = mean_ptr[row], rstd = rstd_ptr[row];
      float h[VEC], dy[VEC], sum_g = 0.f, sum_gx = 0.f;
      if (owner) {
        op.load_h(row, c0, h);
        op.load_dy(row, c0, dy);
        layer_norm_bwd_sums<VEC>(h, dy, wt, mean, rstd, sum_g, sum_gx);
      }
      block_sum2(sum_g, sum_gx, scratch);
      if (owner) {
        layer_norm_bwd_chunk<VEC, NACC>(op, row, c0, h, dy, wt, mean, rstd, sum_g * inv_d, sum_gx * inv_d,
                                        [&](int a, int k) -> float& { return acc[a][k]; });
      }
    }
    if (owner) {
#pragma unroll
      for (int a = 0; a < NACC; ++a) store_f<VEC>(partial_ptr + (a * g + blockIdx.x) * d + c0, acc[a]);
      op.finish(c0);
    }
  } else {
    float* acc = acc_in_smem ? smem_acc : partial_ptr + blockIdx.x * d;
    const int64_t acc_stride = acc_in_smem ? d : g * d;
    // Each thread owns the same columns in every row, so its accumulator columns need no synchronisation.
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
#pragma unroll
      for (int a = 0; a < NACC; ++a) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[a * acc_stride + c0 + k] = 0.f;
      }
    }
    for (int64_t row = blockIdx.x; row < n; row += g) {
      op.row_begin(row);
      const float mean = mean_ptr[row], rstd = rstd_ptr[row];
      float sum_g = 0.f, sum_gx = 0.f;
      for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
        float h[VEC], dy[VEC], wt[VEC];
        op.load_h(row, c0, h);
        op.load_dy(row, c0, dy);
        load_f<VEC>(weight_ptr + c0, wt);
        layer_norm_bwd_sums<VEC>(h, dy, wt, mean, rstd, sum_g, sum_gx);
      }
      block_sum2(sum_g, sum_gx, scratch);
      for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
        float h[VEC], dy[VEC], wt[VEC];
        op.load_h(row, c0, h);
        op.load_dy(row, c0, dy);
        load_f<VEC>(weight_ptr + c0, wt);
        layer_norm_bwd_chunk<VEC, NACC>(op, row, c0, h, dy, wt, mean, rstd, sum_g * inv_d, sum_gx * inv_d,
                                        [&](int a, int k) -> float& { return acc[a * acc_stride + c0 + k]; });
      }
    }
    if (acc_in_smem) {
      for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * VEC; c0 < d; c0 += step) {
#pragma unroll
        for (int a = 0; a < NACC; ++a) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) partial_ptr[(a * g + blockIdx.x) * d + c0 + k] = smem_acc[a * d + c0 + k];
        }
      }
    }
  }
}

// Whether the backward kernel runs in its one-chunk mode: every thread owns at most one VEC-wide chunk of a row.
inline bool bwd_one_chunk(int64_t d, int vec) {
  const int64_t chunks = (d + vec - 1) / vec;
  return chunks <= row_threads(chunks);
}

// Shared-memory bytes of the backward accumulators, or 0 when they go to the global workspace instead.
inline size_t bwd_acc_smem_bytes(int nacc, int64_t d) {
  const size_t bytes = static_cast<size_t>(nacc) * static_cast<size_t>(d) * sizeof(float);
  return bytes <= 40 * 1024 ? bytes : 0;
}

inline unsigned fwd_rows_grid(int64_t n) {
  constexpr int64_t kMaxBlocks = 65536;
  return static_cast<unsigned>(n < 1 ? 1 : (n < kMaxBlocks ? n : kMaxBlocks));
}

// Launches the backward skeleton and the fixed-order sums of its partials into dweight, dbias (param_dtype; skipped
// when dbias is nullptr: a bias-free LayerNorm) and, when `extra_out` is given, the op's extra gradient (dtype).
template <typename T, typename P, int VEC, int NACC, class Op>
cudaError_t launch_layer_norm_bwd(const Op& op, const P* weight, const float* mean, const float* rstd, float* partial,
                                  void* dweight, void* dbias, void* extra_out, int64_t n, int64_t d, DType dtype,
                                  DType param_dtype, cudaStream_t stream) {
  const int g = row_partials_blocks(n);
  const int threads = row_threads((d + VEC - 1) / VEC);
  if (bwd_one_chunk(d, VEC)) {
    layer_norm_bwd_rows_kernel<T, P, VEC, NACC, true, Op>
        <<<g, threads, 0, stream>>>(op, weight, mean, rstd, partial, n, d, false);
  } else {
    const size_t smem = bwd_acc_smem_bytes(NACC, d);
    layer_norm_bwd_rows_kernel<T, P, VEC, NACC, false, Op>
        <<<g, threads, smem, stream>>>(op, weight, mean, rstd, partial, n, d, smem > 0);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if ((err = colsum_partials(partial, dweight, param_dtype, g, d, stream)) != cudaSuccess) return err;
  if (dbias != nullptr &&
      (err = colsum_partials(partial + static_cast<int64_t>(g) * d, dbias, param_dtype, g, d, stream)) != cudaSuccess)
    return err;
  if (NACC == 3 && extra_out != nullptr)
    return colsum_partials(partial + 2 * static_cast<int64_t>(g) * d, extra_out, dtype, g, d, stream);
  return cudaSuccess;
}

}  // namespace fastenc

// Dispatch the LayerNorm parameter dtype: P = T (same as the input) or float (mixed precision).
#define FASTENC_DISPATCH_PARAM(dtype, param_dtype, T, P, ...) \
  if ((param_dtype) == (dtype)) {                             \
    using P = T;                                              \
    __VA_ARGS__;                                              \
  } else if ((param_dtype) == ::fastenc::DType::kFloat32) {   \
    using P = float;                                          \
    __VA_ARGS__;                                              \
  } else {                                                    \
    return cudaErrorInvalidValue;                             \
  }

// Dispatch the vector width: 16-byte vectors when `ok`, else scalars.
#define FASTENC_DISPATCH_VEC(ok, T, VEC, ...)      \
  if (ok) {                                        \
    constexpr int VEC = ::fastenc::vec_width<T>(); \
    __VA_ARGS__;                                   \
  } else {                                         \
    constexpr int VEC = 1;                         \
    __VA_ARGS__;                                   \
  }
