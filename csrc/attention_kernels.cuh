// The attention kernels of csrc/attention.cu (see its header for the design), apart from the launchers so that
// tests/ops/attention_emulation.cpp runs them on the CPU over an emulation of their PTX (attention_ptx.cuh is
// the GPU's; the emulation supplies the same functions). Everything here is device code that reaches the
// hardware only through those functions, shuffles and __syncthreads.
#pragma once

#include <type_traits>

#include "attention_dropout.cuh"
#include "common.cuh"

namespace fastenc {
namespace {

constexpr int kThreads = 128;  // 4 warps in every attention kernel
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Two fp32 values as one register of two 16-bit values, lo in the low half (the lower column of a fragment).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// ---- Warp-level tile products --------------------------------------------------------------------------------
// Accumulator layout of one m16n8 tile (lane = 4 * g + t): acc[0..1] = row g, cols 2t, 2t+1; acc[2..3] = row g+8.

// acc[rt][16 x 8*NT] += A_rt[16 x KDIM] * B[8*NT x KDIM]^T for RT row tiles A_rt = rows 16 rt .. 16 rt + 15 of
// s_a; A and B row-major in shared memory (row stride LD). Each B fragment is loaded once and feeds the RT tiles.
template <typename T, int NT, int KDIM, int LD, int RT>
__device__ __forceinline__ void mma_abt(float (&acc)[RT][NT][4], const T* s_a, const T* s_b, int lane) {
  static_assert(NT % 2 == 0 && KDIM % 16 == 0, "tile shape");
#pragma unroll
  for (int kk = 0; kk < KDIM / 16; ++kk) {
    uint32_t a[RT][4];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) ldmatrix_x4(a[rt], s_a + (rt * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, s_b + (nt * 8 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) {
        mma_16816<T>(acc[rt][nt], a[rt], b[0], b[1]);
        mma_16816<T>(acc[rt][nt + 1], a[rt], b[2], b[3]);
      }
    }
  }
}

// acc[rt][16 x 8*DT] += A_rt[16 x 16*KT] * B[16*KT x 8*DT], A in registers (A fragments), B row-major in shared
// memory; each B fragment is loaded once and feeds the RT tiles.
template <typename T, int KT, int DT, int LD, int RT>
__device__ __forceinline__ void mma_ab(float (&acc)[RT][DT][4], const uint32_t (&a)[RT][KT][4], const T* s_b,
                                       int lane) {
  static_assert(DT % 2 == 0, "tile shape");
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
    for (int dt = 0; dt < DT; dt += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, s_b + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dt * 8 + (lane >> 4) * 8);
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) {
        mma_16816<T>(acc[rt][dt], a[rt][kk], b[0], b[1]);
        mma_16816<T>(acc[rt][dt + 1], a[rt][kk], b[2], b[3]);
      }
    }
  }
}

// The same for one row tile.
template <typename T, int NT, int KDIM, int LD>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const T* s_a, const T* s_b, int lane) {
  mma_abt<T, NT, KDIM, LD>(reinterpret_cast<float (&)[1][NT][4]>(acc), s_a, s_b, lane);
}

template <typename T, int KT, int DT, int LD>
__device__ __forceinline__ void mma_ab(float (&acc)[DT][4], const uint32_t (&a)[KT][4], const T* s_b, int lane) {
  mma_ab<T, KT, DT, LD>(reinterpret_cast<float (&)[1][DT][4]>(acc), reinterpret_cast<const uint32_t (&)[1][KT][4]>(a),
                        s_b, lane);
}

// Accumulators of a 16 x 8*NT tile as the A fragments of a 16 x 8*NT (k = 8*NT) operand.
template <typename T, int NT>
__device__ __forceinline__ void acc_to_a(const float (&s)[NT][4], uint32_t (&a)[NT / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    a[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// ---- Layout ----------------------------------------------------------------------------------------------------

struct Seq {
  int64_t start;  // first token of the sequence (packed) or 0
  int len;
};

__device__ __forceinline__ Seq seq_of(const AttnParams& p, int b) {
  if (p.cu_seqlens != nullptr) {
    const int s = p.cu_seqlens[b], e = p.cu_seqlens[b + 1];
    const int len = e - s;
    return Seq{s, len < p.max_seqlen ? len : p.max_seqlen};
  }
  return Seq{0, p.max_seqlen};
}

// Row `row` of sequence b, head h.
template <typename T>
__device__ __forceinline__ T* row_ptr(const AttnTensor& t, int b, const Seq& seq, int h, int64_t row) {
  return static_cast<T*>(t.ptr) + b * t.batch_stride + (seq.start + row) * t.row_stride + h * t.head_stride;
}

// ROWS x D tile of rows row0 .. row0+ROWS-1 into shared memory (row stride LD); rows past the sequence are zeros.
template <typename T, int ROWS, int D, int LD>
__device__ __forceinline__ void load_tile_async(T* s_dst, const AttnTensor& t, int b, const Seq& seq, int h, int row0,
                                                int tid) {
  constexpr int kChunks = D / 8;
  const T* base = row_ptr<T>(t, b, seq, h, 0);
#pragma unroll
  for (int i = tid; i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool valid = row0 + r < seq.len;
    cp_async_16(s_dst + r * LD + c, valid ? base + (row0 + r) * t.row_stride + c : base, valid);
  }
}

// Rows row0 .. row0 + ROWS - 1 of x, then of y, into s_dst ([ROWS, LD] each) as one cp.async group: the next
// step's tiles of a double buffer. From row `end` on (the end of the sequence or of the window's span) the group is
// empty, so every step commits one group.
template <typename T, int ROWS, int D, int LD>
__device__ __forceinline__ void prefetch_pair_async(T* s_dst, const AttnTensor& x, const AttnTensor& y, int b,
                                                    const Seq& seq, int h, int row0, int end, int tid) {
  if (row0 < end) {
    load_tile_async<T, ROWS, D, LD>(s_dst, x, b, seq, h, row0, tid);
    load_tile_async<T, ROWS, D, LD>(s_dst + ROWS * LD, y, b, seq, h, row0, tid);
  }
  cp_async_commit();
}

// ---- Window ------------------------------------------------------------------------------------------------------
// With a window (p.window >= 0) query i attends key j only if |i - j| <= window, positions within the sequence. A
// block steps only over the tiles of the other side that its rows reach (window_span), and tests elements only in
// the tiles whose farthest query / key pair lies outside the window (window_edge); the kernels' kWindow = false
// instantiations keep neither test.

struct Span {
  int begin, end;  // rows [begin, end); begin a multiple of the tile
};

// The rows of the other side that rows r0 .. r0 + rows - 1 reach within the window, begin rounded down to a multiple
// of `tile`; the whole sequence without a window.
__device__ __forceinline__ Span window_span(int window, int r0, int rows, int tile, int len) {
  if (window < 0) return Span{0, len};
  const int lo = r0 > window ? r0 - window : 0;
  return Span{lo / tile * tile, window < len - r0 - rows ? r0 + rows + window : len};
}

// Whether some query of m0 .. m0 + M - 1 and key of n0 .. n0 + N - 1 lie farther apart than the window.
__device__ __forceinline__ bool window_edge(int window, int m0, int M, int n0, int N) {
  return m0 + M - 1 - n0 > window || n0 + N - 1 - m0 > window;
}

__device__ __forceinline__ bool in_window(int window, int i, int j) { return (i > j ? i - j : j - i) <= window; }

__device__ __forceinline__ bool key_allowed(const AttnParams& p, int b, const Seq& seq, int j) {
  return j < seq.len && (p.key_mask == nullptr || p.key_mask[b * p.mask_batch_stride + j] != 0);
}

// Writes a warp's 16 x D accumulator tile, scaled per row, to rows row0 + g (+ 8) that lie in the sequence.
template <typename T, int DT>
__device__ __forceinline__ void store_rows(const float (&acc)[DT][4], const float (&row_scale)[2], const AttnTensor& t,
                                           int b, const Seq& seq, int h, int row0, int lane) {
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + g + 8 * r;
    if (row >= seq.len) continue;
    T* out = row_ptr<T>(t, b, seq, h, row);
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      *reinterpret_cast<uint32_t*>(out + dt * 8 + 2 * tq) =
          pack2<T>(acc[dt][2 * r] * row_scale[r], acc[dt][2 * r + 1] * row_scale[r]);
    }
  }
}

__device__ __forceinline__ float* lse_ptr(const AttnParams& p, float* base, int b, const Seq& seq, int h) {
  return base + b * p.lse_batch_stride + h * p.lse_head_stride + seq.start;
}

// ---- Forward ---------------------------------------------------------------------------------------------------

// kRowTiles 16-row query tiles per warp: with two, every K / V fragment loaded by ldmatrix feeds two mma (half
// the shared-memory traffic per mma) and a block covers 128 queries. d128 keeps one (64 queries per block): two
// tiles of its 16 x 128 fp32 output would not fit in the 255 registers of a thread (see attention.cu's header).
template <int D>
struct FwdTile {
  static constexpr int kRowTiles = D == 128 ? 1 : 2;
  static constexpr int kM = 64 * kRowTiles, kN = 64, kLd = D + 8;
  static constexpr size_t kSmem = static_cast<size_t>(kM + 3 * kN) * kLd * 2;  // Q, two K buffers, V
};

template <typename T, int D, bool kWindow>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const AttnParams p) {
  using Tile = FwdTile<D>;
  constexpr int kRT = Tile::kRowTiles, kM = Tile::kM, kN = Tile::kN, kLd = Tile::kLd, kNT = kN / 8, kDT = D / 8;
  T* s_q = dynamic_smem<T>();   // [kM, kLd]
  T* s_k = s_q + kM * kLd;      // [2][kN, kLd]: the tile's K, and the next tile's landing
  T* s_v = s_k + 2 * kN * kLd;  // [kN, kLd]
  __shared__ bool s_key_ok[kN];

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kM;
  const Seq seq = seq_of(p, b);
  if (m0 >= seq.len) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = m0 + warp * 16 * kRT;  // the warp's rows: row0 .. row0 + 16 kRT - 1, tile rt from row0 + 16 rt
  const DropoutState drop = dropout_state(p);
  const float scale_log2 = p.softmax_scale * kLog2e;
  const Span keys = kWindow ? window_span(p.window, m0, kM, kN, seq.len) : Span{0, seq.len};

  load_tile_async<T, kM, D, kLd>(s_q, p.q, b, seq, h, m0, tid);
  load_tile_async<T, kN, D, kLd>(s_k, p.k, b, seq, h, keys.begin, tid);
  cp_async_commit();

  float o[kRT][kDT][4];
  float row_max[kRT][2], row_sum[kRT][2];  // rows g (r = 0) and g + 8 (r = 1) of each tile
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) {
    zero(o[rt]);
    row_max[rt][0] = row_max[rt][1] = -INFINITY;
    row_sum[rt][0] = row_sum[rt][1] = 0.f;
  }
  const T* s_q_warp = s_q + (row0 - m0) * kLd;

  // cp.async groups in flight at each wait: {K(n0), V(n0)} before Q K^T, then {V(n0), K(n0 + kN)} before P V.
  for (int n0 = keys.begin, buf = 0; n0 < keys.end; n0 += kN, buf ^= 1) {
    const bool edge = kWindow && window_edge(p.window, m0, kM, n0, kN);
    __syncthreads();  // the previous tile's V and key flags, and K buffer buf ^ 1, are no longer read
    load_tile_async<T, kN, D, kLd>(s_v, p.v, b, seq, h, n0, tid);
    cp_async_commit();
    for (int j = tid; j < kN; j += kThreads) s_key_ok[j] = key_allowed(p, b, seq, n0 + j);
    cp_async_wait<1>();  // Q and this tile's K have landed; V may still be in flight
    __syncthreads();

    float s[kRT][kNT][4];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) zero(s[rt]);
    mma_abt<T, kNT, D, kLd>(s, s_q_warp, s_k + buf * kN * kLd, lane);
    // The next tile's K lands in the other buffer during the softmax and P V (rows past the sequence: zeros).
    if (n0 + kN < keys.end) load_tile_async<T, kN, D, kLd>(s_k + (buf ^ 1) * kN * kLd, p.k, b, seq, h, n0 + kN, tid);
    cp_async_commit();  // possibly empty: keeps the group count of every iteration the same

    uint32_t pa[kRT][kNT / 2][4];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) {
      // Online softmax over this tile.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[rt][nt][2 * r + e];
            const int j = nt * 8 + 2 * tq + e;
            const bool ok = s_key_ok[j] && (!edge || in_window(p.window, row0 + 16 * rt + g + 8 * r, n0 + j));
            x = ok ? x * scale_log2 : -INFINITY;
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float new_max = fmaxf(row_max[rt][r], mx);
        const float ref = new_max == -INFINITY ? 0.f : new_max;  // a row with no key yet: every p is 0
        const float corr = exp2_approx(row_max[rt][r] - ref);
        row_max[rt][r] = new_max;
        row_sum[rt][r] *= corr;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          o[rt][dt][2 * r] *= corr;
          o[rt][dt][2 * r + 1] *= corr;
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[rt][nt][2 * r + e];
            x = exp2_approx(x - ref);
            row_sum[rt][r] += x;
          }
        }
      }
      if (drop.on) {
        uint32_t slice[kNT][4];
        dropout_slices_query_rows<kNT>(drop, b, h, row0 + 16 * rt + g, n0, lane, slice);
        apply_dropout(s[rt], slice, drop.threshold);
      }
      acc_to_a<T, kNT>(s[rt], pa[rt]);
    }
    cp_async_wait<1>();  // V has landed; the next K may still be in flight
    __syncthreads();
    mma_ab<T, kNT / 2, kDT, kLd>(o, pa, s_v, lane);
  }

  float* lse = lse_ptr(p, p.lse, b, seq, h);
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) {
    float row_scale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[rt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      row_scale[r] = l > 0.f ? drop.scale / l : 0.f;
      const int row = row0 + 16 * rt + g + 8 * r;
      if (tq == 0 && row < seq.len) lse[row] = l > 0.f ? (row_max[rt][r] + log2_approx(l)) * kLn2 : INFINITY;
    }
    store_rows<T, kDT>(o[rt], row_scale, p.o, b, seq, h, row0 + 16 * rt, lane);
  }
}

// ---- Backward ----------------------------------------------------------------------------------------------------

// delta[i] = sum_d dO[i, d] * O[i, d]; one warp per row, 64 rows per block.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_delta_kernel(const AttnParams p) {
  constexpr int kRows = 64, kPer = D / 32;
  const int b = blockIdx.z, h = blockIdx.y;
  const Seq seq = seq_of(p, b);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* delta = lse_ptr(p, p.delta, b, seq, h);
  for (int row = blockIdx.x * kRows + warp; row < seq.len && row < (blockIdx.x + 1) * kRows; row += kThreads / 32) {
    const T* o = row_ptr<T>(p.o, b, seq, h, row);
    const T* d_o = row_ptr<T>(p.dout, b, seq, h, row);
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < kPer; ++k) acc += to_float(o[lane * kPer + k]) * to_float(d_o[lane * kPer + k]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
  }
}

template <int D>
struct BwdTile {
  static constexpr int kM = D == 128 ? 32 : 64;  // query rows per step (dK / dV pass), key rows per step (dQ pass)
  static constexpr int kN = 64;                  // rows owned by a block: keys (dK / dV pass), queries (dQ pass)
  static constexpr int kLd = D + 8;
  // 16-row query tiles per warp in the dQ pass: two only at d32 (why: attention.cu's header).
  static constexpr int kDqRowTiles = D == 32 ? 2 : 1;
  static constexpr int kDqRows = 64 * kDqRowTiles;  // queries owned by a dQ block
  // dK / dV pass: its K, V and two buffers of Q, dO; dQ pass: its Q, dO and two buffers of K, V.
  static constexpr size_t kSmemDkDv = static_cast<size_t>(2 * kN + 4 * kM) * kLd * 2;
  static constexpr size_t kSmemDq = static_cast<size_t>(2 * kDqRows + 4 * kM) * kLd * 2;
};

// One block per 64 keys of one (batch, head): loops over the query tiles its keys reach (every one without a
// window) and accumulates dK, dV.
template <typename T, int D, bool kWindow>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(const AttnParams p) {
  using Tile = BwdTile<D>;
  constexpr int kM = Tile::kM, kN = Tile::kN, kLd = Tile::kLd, kMT = kM / 8, kDT = D / 8;
  T* s_k = dynamic_smem<T>();  // [kN, kLd]
  T* s_v = s_k + kN * kLd;     // [kN, kLd]
  T* s_qdo = s_v + kN * kLd;   // [2][Q [kM, kLd], dO [kM, kLd]]: the tile's, and the next tile's landing
  __shared__ float s_lse2[kM], s_delta[kM];

  const int b = blockIdx.z, h = blockIdx.y, n0 = blockIdx.x * kN;
  const Seq seq = seq_of(p, b);
  if (n0 >= seq.len) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const DropoutState drop = dropout_state(p);
  const float scale_log2 = p.softmax_scale * kLog2e;
  const float* lse = lse_ptr(p, p.lse, b, seq, h);
  const float* delta = lse_ptr(p, p.delta, b, seq, h);
  const Span queries = kWindow ? window_span(p.window, n0, kN, kM, seq.len) : Span{0, seq.len};

  load_tile_async<T, kN, D, kLd>(s_k, p.k, b, seq, h, n0, tid);
  load_tile_async<T, kN, D, kLd>(s_v, p.v, b, seq, h, n0, tid);
  prefetch_pair_async<T, kM, D, kLd>(s_qdo, p.q, p.dout, b, seq, h, queries.begin, queries.end, tid);
  const int j_row = n0 + warp * 16 + g;  // this lane's key rows: j_row and j_row + 8
  const bool key_ok[2] = {key_allowed(p, b, seq, j_row), key_allowed(p, b, seq, j_row + 8)};

  float dk[kDT][4], dv[kDT][4];
  zero(dk);
  zero(dv);
  const T* s_k_warp = s_k + warp * 16 * kLd;
  const T* s_v_warp = s_v + warp * 16 * kLd;

  // One cp.async group per query tile, issued a tile ahead: the next tile's Q and dO land while this one computes.
  for (int m0 = queries.begin, buf = 0; m0 < queries.end; m0 += kM, buf ^= 1) {
    const bool edge = kWindow && window_edge(p.window, m0, kM, n0, kN);
    __syncthreads();  // buffer buf ^ 1 and the previous tile's lse / delta are no longer read
    prefetch_pair_async<T, kM, D, kLd>(s_qdo + (buf ^ 1) * 2 * kM * kLd, p.q, p.dout, b, seq, h, m0 + kM,
                                       queries.end, tid);
    for (int i = tid; i < kM; i += kThreads) {
      const bool valid = m0 + i < seq.len;
      s_lse2[i] = valid ? lse[m0 + i] * kLog2e : INFINITY;  // +inf: a row with no key (p = 0)
      s_delta[i] = valid ? delta[m0 + i] : 0.f;
    }
    cp_async_wait<1>();  // K, V and this tile's Q, dO have landed; the next tile's may still be in flight
    __syncthreads();
    const T* s_q = s_qdo + buf * 2 * kM * kLd;
    const T* s_do = s_q + kM * kLd;

    // P^T = exp(S^T - lse) with S^T = K Q^T: rows are this warp's keys, columns the tile's queries.
    float pt[kMT][4];
    zero(pt);
    mma_abt<T, kMT, D, kLd>(pt, s_k_warp, s_q, lane);
#pragma unroll
    for (int nt = 0; nt < kMT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = nt * 8 + 2 * tq + (e & 1);
        const bool ok = key_ok[e >> 1] && (!edge || in_window(p.window, m0 + i, j_row + 8 * (e >> 1)));
        pt[nt][e] = ok ? exp2_approx(pt[nt][e] * scale_log2 - s_lse2[i]) : 0.f;
      }
    }
    // dP^T = V dO^T (then dropped like P).
    float dpt[kMT][4];
    zero(dpt);
    mma_abt<T, kMT, D, kLd>(dpt, s_v_warp, s_do, lane);

    uint32_t a[kMT / 2][4];
    if (drop.on) {
      uint32_t slice[kMT][4];  // one mask for P and dP
      dropout_slices_key_rows<kMT>(drop, b, h, j_row, m0, lane, slice);
      float pdrop[kMT][4];
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pdrop[nt][e] = pt[nt][e];  // 1 / (1 - p) is applied to dV once, at the end
          dpt[nt][e] *= drop.scale;
        }
      }
      apply_dropout(pdrop, slice, drop.threshold);
      apply_dropout(dpt, slice, drop.threshold);
      acc_to_a<T, kMT>(pdrop, a);
    } else {
      acc_to_a<T, kMT>(pt, a);
    }
    mma_ab<T, kMT / 2, kDT, kLd>(dv, a, s_do, lane);  // dV += P_dropped^T dO

    // dS^T = P^T * (dP^T - delta), dK += dS^T Q.
#pragma unroll
    for (int nt = 0; nt < kMT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) pt[nt][e] *= dpt[nt][e] - s_delta[nt * 8 + 2 * tq + (e & 1)];
    }
    acc_to_a<T, kMT>(pt, a);
    mma_ab<T, kMT / 2, kDT, kLd>(dk, a, s_q, lane);
  }
  const float dk_scale[2] = {p.softmax_scale, p.softmax_scale}, dv_scale[2] = {drop.scale, drop.scale};
  store_rows<T, kDT>(dk, dk_scale, p.dk, b, seq, h, n0 + warp * 16, lane);
  store_rows<T, kDT>(dv, dv_scale, p.dv, b, seq, h, n0 + warp * 16, lane);
}

// One block per kDqRows queries of one (batch, head), each warp owning kDqRowTiles 16-row tiles: loops over the key
// tiles its queries reach (every one without a window) and accumulates dQ.
template <typename T, int D, bool kWindow>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(const AttnParams p) {
  using Tile = BwdTile<D>;
  constexpr int kRT = Tile::kDqRowTiles, kM = Tile::kDqRows, kN = Tile::kM, kLd = Tile::kLd, kNT = kN / 8,
                kDT = D / 8;
  T* s_q = dynamic_smem<T>();  // [kM, kLd]
  T* s_do = s_q + kM * kLd;    // [kM, kLd]
  T* s_kv = s_do + kM * kLd;   // [2][K [kN, kLd], V [kN, kLd]]: the tile's, and the next tile's landing
  __shared__ bool s_key_ok[kN];

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kM;
  const Seq seq = seq_of(p, b);
  if (m0 >= seq.len) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = m0 + warp * 16 * kRT;  // the warp's rows: row0 .. row0 + 16 kRT - 1, tile rt from row0 + 16 rt
  const DropoutState drop = dropout_state(p);
  const float scale_log2 = p.softmax_scale * kLog2e;
  const Span keys = kWindow ? window_span(p.window, m0, kM, kN, seq.len) : Span{0, seq.len};

  load_tile_async<T, kM, D, kLd>(s_q, p.q, b, seq, h, m0, tid);
  load_tile_async<T, kM, D, kLd>(s_do, p.dout, b, seq, h, m0, tid);
  prefetch_pair_async<T, kN, D, kLd>(s_kv, p.k, p.v, b, seq, h, keys.begin, keys.end, tid);
  float lse2[kRT][2], dlt[kRT][2];  // rows row0 + 16 rt + g (r = 0) and + 8 (r = 1)
  const float* lse = lse_ptr(p, p.lse, b, seq, h);
  const float* delta = lse_ptr(p, p.delta, b, seq, h);
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + 16 * rt + g + 8 * r;
      lse2[rt][r] = row < seq.len ? lse[row] * kLog2e : INFINITY;
      dlt[rt][r] = row < seq.len ? delta[row] : 0.f;
    }
  }

  float dq[kRT][kDT][4];
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) zero(dq[rt]);
  const T* s_q_warp = s_q + (row0 - m0) * kLd;
  const T* s_do_warp = s_do + (row0 - m0) * kLd;

  // One cp.async group per key tile, issued a tile ahead: the next tile's K and V land while this one computes.
  for (int n0 = keys.begin, buf = 0; n0 < keys.end; n0 += kN, buf ^= 1) {
    const bool edge = kWindow && window_edge(p.window, m0, kM, n0, kN);
    __syncthreads();  // buffer buf ^ 1 and the previous tile's key flags are no longer read
    prefetch_pair_async<T, kN, D, kLd>(s_kv + (buf ^ 1) * 2 * kN * kLd, p.k, p.v, b, seq, h, n0 + kN, keys.end, tid);
    for (int j = tid; j < kN; j += kThreads) s_key_ok[j] = key_allowed(p, b, seq, n0 + j);
    cp_async_wait<1>();  // Q, dO and this tile's K, V have landed; the next tile's may still be in flight
    __syncthreads();
    const T* s_k = s_kv + buf * 2 * kN * kLd;
    const T* s_v = s_k + kN * kLd;

    float s[kRT][kNT][4], dp[kRT][kNT][4];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) {
      zero(s[rt]);
      zero(dp[rt]);
    }
    mma_abt<T, kNT, D, kLd>(s, s_q_warp, s_k, lane);
    mma_abt<T, kNT, D, kLd>(dp, s_do_warp, s_v, lane);
    uint32_t a[kRT][kNT / 2][4];
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = nt * 8 + 2 * tq + (e & 1);
          const bool ok = s_key_ok[j] && (!edge || in_window(p.window, row0 + 16 * rt + g + 8 * (e >> 1), n0 + j));
          s[rt][nt][e] = ok ? exp2_approx(s[rt][nt][e] * scale_log2 - lse2[rt][e >> 1]) : 0.f;
        }
      }
      if (drop.on) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) dp[rt][nt][e] *= drop.scale;
        }
        uint32_t slice[kNT][4];
        dropout_slices_query_rows<kNT>(drop, b, h, row0 + 16 * rt + g, n0, lane, slice);
        apply_dropout(dp[rt], slice, drop.threshold);
      }
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[rt][nt][e] *= dp[rt][nt][e] - dlt[rt][e >> 1];
      }
      acc_to_a<T, kNT>(s[rt], a[rt]);
    }
    mma_ab<T, kNT / 2, kDT, kLd>(dq, a, s_k, lane);  // dQ += dS K
  }
  const float dq_scale[2] = {p.softmax_scale, p.softmax_scale};
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) store_rows<T, kDT>(dq[rt], dq_scale, p.dq, b, seq, h, row0 + 16 * rt, lane);
}

// ---- The dropout mask as a tensor (tests replay the kernels' dropout with it) -------------------------------------

__global__ void attention_dropout_mask_kernel(const int64_t* __restrict__ seed_ptr,  // [1] int64
                                              uint8_t* __restrict__ out_ptr,         // [B, H, S, S] keep flags
                                              int heads, int seqlen, uint32_t threshold, int64_t groups) {
  const int64_t groups_per_row = (seqlen + 31) / 32 * 4;  // one Philox call per (row, 32-key block, q)
  DropoutState d{true, 0u, 0u, threshold, 1.f};
  read_seed(seed_ptr, d.key0, d.key1);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < groups;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = c / groups_per_row;  // (b * heads + h) * seqlen + i
    const int call = static_cast<int>(c % groups_per_row), i = static_cast<int>(row % seqlen);
    const int j0 = 32 * (call >> 2) + 2 * (call & 3);  // keys j0 + 8 k + e, k < 4, e < 2
    const int64_t bh = row / seqlen;
    const U32x4 w = dropout_words(d.key0, d.key1, static_cast<int>(bh / heads), static_cast<int>(bh % heads), i, j0);
    for (int k = 0; k < 4; ++k) {
      for (int e = 0; e < 2; ++e) {  // key j0 + 8 k + e: byte e + 2 ((i % 16) / 8) of word k
        const int j = j0 + 8 * k + e;
        if (j < seqlen) out_ptr[row * seqlen + j] = ((pick(w, k) >> (8 * (e + 2 * ((i & 15) >> 3)))) & 0xffu) >= threshold;
      }
    }
  }
}

}  // namespace
}  // namespace fastenc
