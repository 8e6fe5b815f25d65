// attention: softmax(q k^T * scale + key mask) v, flash-style, forward and backward, on tensor cores with
// mma.sync.m16n8k16 (fp16 / bf16 in, fp32 accumulate), for sm_80 and newer. Padded [B, S, H, D] with a key mask
// and packed [T, H, D] with cu_seqlens share every kernel: only the row addressing differs (see AttnTensor).
//
// Forward (one block of 4 warps per 128 queries of one (batch, head), each warp owning two 16-row tiles, so every
// K / V fragment it loads with ldmatrix feeds two mma; 64 queries and one tile per warp at head dim 128): stream
// the key / value tiles through shared memory with cp.async (the V tile lands while Q K^T runs, the next K tile in
// a second buffer while the softmax and P V run), online softmax in the exp2 domain, P converted in registers to
// the A operand of P V. It writes o and the fp32 log-sum-exp.
// Row tiles per warp, from the static figures (nvcc 13.0, fp16, registers / spill bytes / ldmatrix per mma):
//   d32: 1 tile 96 regs, 2 tiles 158 regs, ldmatrix per mma 0.56 -> 0.31, no spill;
//   d64: 124 -> 241 regs, 0.56 -> 0.31, no spill (2 blocks of 4 warps per SM: the same 256 query rows in flight);
//   d128: 2 tiles would take 255 registers and spill (sm_80: 12 bytes), so it keeps one.
// Shared memory per block: (rows + 3 * 64) * (D + 8) * 2 bytes: 25 / 45 / 68 KiB for d32 / 64 / 128. Every kernel's
// stays within the smallest opt-in limit of the GPUs the builds run on (sm_86 / sm_89: 99 KiB; sm_80: 163 KiB,
// sm_90: 227 KiB): launch() static_asserts it.
// Backward is deterministic, without atomics: a preprocess kernel computes delta = rowsum(dO * O); one kernel per
// key tile accumulates dK and dV over all query tiles (it computes S^T = K Q^T, so its warps own key rows); a
// separate kernel per query tile recomputes P and dP and accumulates dQ. The dQ pass re-does two of the five
// matmuls: the price of determinism. Both double-buffer the tiles they stream (the next query tile's Q and dO,
// the next key tile's K and V land while the current one computes). dK / dV warps own one 16-row key tile (their
// dK and dV take 160-250 registers already). dQ warps own two 16-row query tiles at d32 only (229 registers; per
// mma 0.58 -> 0.33 ldmatrix): at d64 two spill on sm_90a (255 registers, 4 bytes), at d128 their 102 KiB of
// shared memory would leave one block per A100 SM. Shared memory: dK / dV 30 / 54 / 68 KiB, dQ 40 / 54 / 68 KiB.
// Dropout follows the Philox scheme of fastenc.kernels.attention (Philox4x32-7, counter
// {b, 4 (j / 32) + (j % 8) / 2, h, 8 (i / 16) + i % 8}, 8-bit slices, kept iff slice >= ceil(p * 2^8)), so the mask
// depends on the element only: backward regenerates forward's mask exactly, and attention_dropout_mask returns it for
// tests. One call covers what one lane holds of a 16-row, 32-key query-row patch (forward, dQ: each lane draws its
// own calls); in dK / dV (rows are keys) a warp uses half of each call, and the two lanes of a key pair draw one call
// each and trade words with a shuffle (csrc/attention_dropout.cuh); dK / dV apply the mask to P and dP.
// A local window (|i - j| <= window, ModernBERT's local layers) is a template flag of the three main kernels, so the
// kernels without one stay as they were: a block steps only over the tiles of the other side that its rows reach
// (fewer steps, not fewer blocks) and tests each element only in the tiles that straddle the window's edge. The
// dropout counter stays the element's own (i, j), so a window changes which elements count, never their mask.
// Not done: wgmma / TMA for sm_90a (the sm_90a build runs these mma.sync kernels), split-KV, causal masks.
#include <atomic>

#include "attention_ptx.cuh"
#include "attention_kernels.cuh"

namespace fastenc {

namespace {

// ---- Launch ------------------------------------------------------------------------------------------------------

// The smallest opt-in shared memory limit of the GPUs these sm_80 / sm_90a builds run on is sm_86 / sm_89's
// 99 KiB per block; 3 KiB of it stay for the kernels' static arrays.
constexpr size_t kMaxDynamicSmem = 96 * 1024;

// Launches Kernel with kSmem bytes of dynamic shared memory; the first launch on each device raises the kernel's
// limit when it needs more than the default 48 KiB (an attribute of the function on that device, set once rather
// than before every launch).
template <auto Kernel, size_t kSmem>
cudaError_t launch(dim3 grid, cudaStream_t stream, const AttnParams& p) {
  static_assert(kSmem <= kMaxDynamicSmem, "a tile's shared memory exceeds the opt-in limit of sm_86 / sm_89");
  if constexpr (kSmem > 48 * 1024) {
    static std::atomic<uint64_t> raised{0};  // bit d: done on device d (devices 64 and up: every launch)
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0u;
    if ((raised.load(std::memory_order_relaxed) & bit) == 0u) {
      err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem));
      if (err != cudaSuccess) return err;
      raised.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  Kernel<<<grid, kThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
}

dim3 grid_of(const AttnParams& p, int rows_per_block) {
  return dim3(static_cast<unsigned>((p.max_seqlen + rows_per_block - 1) / rows_per_block),
              static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
}

// Rows read with 16-byte cp.async copies (q, k, v, dout) need 16-byte aligned rows: pointer and every stride.
bool rows_aligned16(const AttnTensor& t) {
  return aligned16(t.ptr) && t.batch_stride % 8 == 0 && t.row_stride % 8 == 0 && t.head_stride % 8 == 0;
}

bool valid_params(const AttnParams& p, DType dtype) {
  return (dtype == DType::kFloat16 || dtype == DType::kBFloat16) && p.batch > 0 && p.heads > 0 && p.max_seqlen > 0 &&
         (p.dropout_p == 0.f || p.seed != nullptr) && p.dropout_p >= 0.f && p.dropout_p < 1.f && p.window >= -1 &&
         rows_aligned16(p.q) && rows_aligned16(p.k) && rows_aligned16(p.v);
}

// A window of max_seqlen - 1 or more keeps every key (no sequence is longer): the kernels without the window run.
AttnParams without_wide_window(const AttnParams& p) {
  AttnParams out = p;
  if (out.window >= out.max_seqlen - 1) out.window = -1;
  return out;
}

template <typename T, int D, bool kWindow>
cudaError_t fwd_kernels(const AttnParams& p, cudaStream_t stream) {
  return launch<attention_fwd_kernel<T, D, kWindow>, FwdTile<D>::kSmem>(grid_of(p, FwdTile<D>::kM), stream, p);
}

template <typename T, int D>
cudaError_t fwd(const AttnParams& p, cudaStream_t stream) {
  return p.window >= 0 ? fwd_kernels<T, D, true>(p, stream) : fwd_kernels<T, D, false>(p, stream);
}

template <typename T, int D, bool kWindow>
cudaError_t bwd_kernels(const AttnParams& p, cudaStream_t stream) {
  using Tile = BwdTile<D>;
  cudaError_t err = launch<attention_bwd_delta_kernel<T, D>, 0>(grid_of(p, 64), stream, p);
  if (err != cudaSuccess) return err;
  err = launch<attention_bwd_dkdv_kernel<T, D, kWindow>, Tile::kSmemDkDv>(grid_of(p, Tile::kN), stream, p);
  if (err != cudaSuccess) return err;
  return launch<attention_bwd_dq_kernel<T, D, kWindow>, Tile::kSmemDq>(grid_of(p, Tile::kDqRows), stream, p);
}

template <typename T, int D>
cudaError_t bwd(const AttnParams& p, cudaStream_t stream) {
  return p.window >= 0 ? bwd_kernels<T, D, true>(p, stream) : bwd_kernels<T, D, false>(p, stream);
}

#define FASTENC_DISPATCH_ATTENTION(dtype, head_dim, FN, ...) \
  if ((dtype) == DType::kFloat16) {                          \
    switch (head_dim) {                                      \
      case 32:                                               \
        return FN<__half, 32>(__VA_ARGS__);                  \
      case 64:                                               \
        return FN<__half, 64>(__VA_ARGS__);                  \
      case 128:                                              \
        return FN<__half, 128>(__VA_ARGS__);                 \
      default:                                               \
        return cudaErrorInvalidValue;                        \
    }                                                        \
  }                                                          \
  switch (head_dim) {                                        \
    case 32:                                                 \
      return FN<__nv_bfloat16, 32>(__VA_ARGS__);             \
    case 64:                                                 \
      return FN<__nv_bfloat16, 64>(__VA_ARGS__);             \
    case 128:                                                \
      return FN<__nv_bfloat16, 128>(__VA_ARGS__);            \
    default:                                                 \
      return cudaErrorInvalidValue;                          \
  }

}  // namespace

cudaError_t attention_dropout_mask(const int64_t* seed, uint8_t* out, int batch, int heads, int seqlen, float dropout_p,
                                   cudaStream_t stream) {
  if (seed == nullptr || batch < 0 || heads < 0 || seqlen < 0 || dropout_p < 0.f || dropout_p >= 1.f)
    return cudaErrorInvalidValue;
  const int64_t groups = static_cast<int64_t>(batch) * heads * seqlen * ((seqlen + 31) / 32 * 4);
  if (groups == 0) return cudaSuccess;
  const int64_t blocks = (groups + 255) / 256;
  attention_dropout_mask_kernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(
      seed, out, heads, seqlen, dropout_threshold8(dropout_p), groups);
  return cudaGetLastError();
}

cudaError_t attention_fwd(const AttnParams& params, DType dtype, cudaStream_t stream) {
  if (!valid_params(params, dtype)) return cudaErrorInvalidValue;
  FASTENC_DISPATCH_ATTENTION(dtype, params.head_dim, fwd, without_wide_window(params), stream)
}

cudaError_t attention_bwd(const AttnParams& params, DType dtype, cudaStream_t stream) {
  if (!valid_params(params, dtype) || params.delta == nullptr || !rows_aligned16(params.dout))
    return cudaErrorInvalidValue;
  FASTENC_DISPATCH_ATTENTION(dtype, params.head_dim, bwd, without_wide_window(params), stream)
}

}  // namespace fastenc
