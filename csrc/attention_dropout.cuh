// Attention dropout masks inside the mma tiles of csrc/attention.cu, apart so that tests/ops can run the lane
// logic on the CPU (a thread per lane standing in for the warp's shuffles).
//
// Trade-off: one Philox4x32-7 call gives 16 keep decisions (8-bit slices): 7 rounds (the fewest that pass BigCrush)
// and 8-bit slices cost a keep probability rounded to 2^-8 but draw 2.9x fewer rounds per decision than 10 rounds
// and 16-bit slices. A call covers what one lane holds of a query-row tile, so the forward and dQ draw each call once
// with no exchange; the dK / dV tiles (key rows) use half of each call's bytes per warp (the other half are the
// next 16 keys, another warp's), so there a call is drawn once per warp and shared by a lane pair with one shuffle.
#pragma once

#include "common.cuh"

namespace fastenc {

// Dropout keeps element (i, j) of sequence b, head h iff its 8-bit slice of Philox4x32-7(key = seed, counter =
// {b, 4 (j / 32) + (j % 8) / 2, h, 8 (i / 16) + i % 8}) is >= threshold = ceil(p * 2^8): byte j % 2 + 2 ((i % 16) / 8)
// of word (j % 32) / 8. A call covers the rows i, i + 8 of a 16-row group and the keys 2q, 2q + 1 of each 8 of a
// 32-key block: what one lane holds of four m16n8 tiles. The scheme fastenc.kernels.attention documents, so both
// backends draw the same mask, in each sequence's own coordinates.
__device__ __forceinline__ U32x4 dropout_words(uint32_t key0, uint32_t key1, int b, int h, int i, int j) {
  return philox4x32<7>(U32x4{static_cast<uint32_t>(b), static_cast<uint32_t>(4 * (j >> 5) + ((j & 7) >> 1)),
                            static_cast<uint32_t>(h), static_cast<uint32_t>(8 * (i >> 4) + (i & 7))},
                      key0, key1);
}

struct DropoutState {
  bool on;
  uint32_t key0, key1, threshold;  // threshold on an 8-bit slice of a Philox word
  float scale;
};

__host__ __device__ __forceinline__ uint32_t dropout_threshold8(float p) {
  const double t = static_cast<double>(p) * 256.0;  // exact: p is a float
  const uint32_t c = static_cast<uint32_t>(t);
  return static_cast<double>(c) < t ? c + 1 : c;
}

__device__ __forceinline__ DropoutState dropout_state(const AttnParams& p) {
  DropoutState s{p.dropout_p > 0.f && p.seed != nullptr, 0u, 0u, dropout_threshold8(p.dropout_p),
                 1.f / (1.f - p.dropout_p)};
  if (s.on) read_seed(p.seed, s.key0, s.key1);
  return s;
}

// The 8-bit slices of a tile whose rows are queries (i) and columns keys (j): slice[nt][e] for acc[nt][e] =
// (i0 + 8 * (e >> 1), n0 + 8 * nt + 2 * tq + (e & 1)), i0 this lane's row (i0 % 16 < 8), n0 a multiple of 32. The call
// of the lane's rows and key block u holds its four tiles 4u .. 4u + 3: acc[4u + w][e] is byte e of word w. No
// exchange between lanes.
template <int NT>
__device__ __forceinline__ void dropout_slices_query_rows(const DropoutState& d, int b, int h, int i0, int n0,
                                                          int lane, uint32_t (&slice)[NT][4]) {
  static_assert(NT % 4 == 0, "tile shape");
  const int tq = lane & 3;
#pragma unroll
  for (int u = 0; u < NT / 4; ++u) {
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, i0, n0 + 32 * u + 2 * tq);
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
#pragma unroll
      for (int e = 0; e < 4; ++e) slice[4 * u + k][e] = (ws[k] >> (8 * e)) & 0xffu;
    }
  }
}

// The same for a transposed tile: rows are keys (j), columns queries (i): slice[nt][e] for acc[nt][e] =
// (j0 + 8 * (e >> 1), m0 + 8 * nt + 2 * tq + (e & 1)), this lane's key j0 = 16 * (tile) + g, m0 a multiple of 16. The
// lane's keys j0, j0 + 8 are words w, w + 1 (w = (j0 % 32) / 8) of the calls of key pair q = g / 2, the same calls
// for lanes g and g ^ 1, which take bytes g % 2 (+ 2 for the second 8 queries). Columns i and i + 8 (tiles 2v, 2v + 1)
// share a call; of the two calls per tile pair (e & 1 = 0, 1) each lane of the pair draws the one with e & 1 = g & 1
// and they swap words w, w + 1 with one shuffle each.
template <int NT>
__device__ __forceinline__ void dropout_slices_key_rows(const DropoutState& d, int b, int h, int j0, int m0, int lane,
                                                        uint32_t (&slice)[NT][4]) {
  static_assert(NT % 2 == 0, "tile shape");
  const int g = lane >> 2, tq = lane & 3, own = g & 1, w = (j0 & 31) >> 3;
#pragma unroll
  for (int v = 0; v < NT / 2; ++v) {
    const U32x4 r = dropout_words(d.key0, d.key1, b, h, m0 + 16 * v + 2 * tq + own, j0);
    const uint32_t mine0 = pick(r, w), mine1 = pick(r, w + 1);
    const uint32_t theirs0 = __shfl_xor_sync(0xffffffffu, mine0, 4), theirs1 = __shfl_xor_sync(0xffffffffu, mine1, 4);
#pragma unroll
    for (int c = 0; c < 2; ++c) {  // column parity e & 1
      const uint32_t w0 = c == own ? mine0 : theirs0, w1 = c == own ? mine1 : theirs1;
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // tile 2v + half: queries + 8 half, byte g % 2 + 2 half
        const int shift = 8 * (own + 2 * half);
        slice[2 * v + half][c] = (w0 >> shift) & 0xffu;
        slice[2 * v + half][2 + c] = (w1 >> shift) & 0xffu;
      }
    }
  }
}

// Zeroes acc[nt][e] where slice[nt][e] < threshold (the dropped elements).
template <int NT>
__device__ __forceinline__ void apply_dropout(float (&acc)[NT][4], const uint32_t (&slice)[NT][4],
                                              uint32_t threshold) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = slice[nt][e] >= threshold ? acc[nt][e] : 0.f;
  }
}

}  // namespace fastenc
