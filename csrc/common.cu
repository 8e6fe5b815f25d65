// Host helpers shared by the row-wise ops: grid sizes, dropout parameters, and the fixed-order column sum that
// turns per-block partial parameter gradients into deterministic final gradients.
#include "common.cuh"

namespace fastenc {

namespace {

int sm_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0) {
    cudaGetLastError();  // leave no sticky error behind: fall back to a guess
    return 108;
  }
  return count;
}

constexpr int kColsumCols = 32, kColsumRows = 8;

// out[c] = sum over g of partial[g, c], summed by kColsumRows strided lanes then a fixed tree.
template <typename T>
__global__ void colsum_partials_kernel(const float* __restrict__ partial_ptr,  // [g, d] fp32
                                       T* __restrict__ out_ptr,                // [d]
                                       int64_t g, int64_t d) {
  __shared__ float part[kColsumRows][kColsumCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColsumCols + threadIdx.x;
  float s = 0.f;
  if (c < d) {
    for (int64_t r = threadIdx.y; r < g; r += kColsumRows) s += partial_ptr[r * d + c];
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < d) {
    float total = 0.f;
#pragma unroll
    for (int r = 0; r < kColsumRows; ++r) total += part[r][threadIdx.x];
    out_ptr[c] = from_float<T>(total);
  }
}

}  // namespace

int row_partials_blocks(int64_t n_rows) {
  const int64_t cap = static_cast<int64_t>(sm_count()) * 4;
  return static_cast<int>(n_rows < 1 ? 1 : (n_rows < cap ? n_rows : cap));
}

cudaError_t colsum_partials(const float* partial, void* out, DType out_dtype, int64_t g, int64_t d,
                            cudaStream_t stream) {
  const dim3 block(kColsumCols, kColsumRows);
  const dim3 grid(static_cast<unsigned>((d + kColsumCols - 1) / kColsumCols));
  FASTENC_DISPATCH_DTYPE(out_dtype, T,
                         colsum_partials_kernel<T><<<grid, block, 0, stream>>>(partial, static_cast<T*>(out), g, d));
  return cudaGetLastError();
}

}  // namespace fastenc
