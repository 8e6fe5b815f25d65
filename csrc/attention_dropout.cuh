// Attention dropout masks inside the mma tiles of csrc/attention.cu, apart so that tests/ops can run the lane
// logic on the CPU (a thread per lane standing in for the warp's shuffles).
//
// Trade-off: one Philox4x32-10 call gives 8 keep decisions (16-bit slices); the lanes holding a call's 8 elements
// draw one call each and trade words with shuffles, so a warp draws every call once. Each shuffle round costs a
// few selects and shifts, far less than the 10 rounds of the Philox calls it saves.
#pragma once

#include "common.cuh"

namespace fastenc {

// Dropout keeps element (i, j) of sequence b, head h iff its 16-bit slice of Philox4x32-10(key = seed, counter =
// {j / 8, i, b, h}) is >= threshold = ceil(p * 2^16): slice j % 2 (low half first) of word (j % 8) / 2. The scheme
// fastenc.kernels.attention documents, so both backends draw the same mask, in each sequence's own coordinates.
__device__ __forceinline__ U32x4 dropout_words(uint32_t key0, uint32_t key1, int b, int h, int i, int j) {
  return philox4x32_10(U32x4{static_cast<uint32_t>(j >> 3), static_cast<uint32_t>(i), static_cast<uint32_t>(b),
                             static_cast<uint32_t>(h)},
                       key0, key1);
}

struct DropoutState {
  bool on;
  uint32_t key0, key1, threshold;  // threshold on a 16-bit slice of a Philox word
  float scale;
};

__host__ __device__ __forceinline__ uint32_t dropout_threshold16(float p) {
  const double t = static_cast<double>(p) * 65536.0;  // exact: p is a float
  const uint32_t c = static_cast<uint32_t>(t);
  return static_cast<double>(c) < t ? c + 1 : c;
}

__device__ __forceinline__ DropoutState dropout_state(const AttnParams& p) {
  DropoutState s{p.dropout_p > 0.f && p.seed != nullptr, 0u, 0u, dropout_threshold16(p.dropout_p),
                 1.f / (1.f - p.dropout_p)};
  if (s.on) read_seed(p.seed, s.key0, s.key1);
  return s;
}

// Keep flags of the two slices of a word: bit 0 = low half (even key), bit 1 = high half (odd key).
__device__ __forceinline__ uint32_t kept2(const DropoutState& d, uint32_t word) {
  return static_cast<uint32_t>((word & 0xffffu) >= d.threshold) |
         (static_cast<uint32_t>((word >> 16) >= d.threshold) << 1);
}

// Keep flags of a tile whose rows are queries (i) and columns keys (j), as bit 4 * nt + e for acc[nt][e] =
// (i0 + 8 * (e >> 1), n0 + 8 * nt + 2 * tq + (e & 1)), i0 this lane's row, n0 a multiple of 8. Call (r, nt) =
// counter {n0 / 8 + nt, i0 + 8 r} serves the quad's 4 lanes, lane tq taking word tq; lane tq draws the calls
// c = r * NT + nt with c % 4 == tq, and in round s reads word tq of call 4k + (tq + s) % 4 from quad lane
// (tq + s) % 4, which sends word (its tq - s) % 4 of its own call.
template <int NT>
__device__ __forceinline__ uint32_t keep_bits_query_rows(const DropoutState& d, int b, int h, int i0, int n0,
                                                         int lane) {
  static_assert(NT % 2 == 0 && 4 * NT <= 32, "tile shape");
  const int tq = lane & 3, quad = lane & ~3;
  uint32_t bits = 0u;
#pragma unroll
  for (int k = 0; k < 2 * NT / 4; ++k) {
    const int own = 4 * k + tq;
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, i0 + 8 * (own / NT), n0 + 8 * (own % NT));
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t word =
          s == 0 ? pick(w, tq) : __shfl_sync(0xffffffffu, pick(w, (tq - s) & 3), quad | ((tq + s) & 3));
      const int c = 4 * k + ((tq + s) & 3);
      bits |= kept2(d, word) << (4 * (c % NT) + 2 * (c / NT));
    }
  }
  return bits;
}

// The same for a transposed tile: rows are keys (j), columns queries (i): acc[nt][e] = (j0 + 8 * (e >> 1),
// m0 + 8 * nt + 2 * tq + (e & 1)) for this lane's key j0 = 8 * (group) + g, m0 a multiple of 8. Call q = 4 nt + e
// (counter {j0 / 8 + (e >> 1), column of acc[nt][e]}) serves the 8 lanes g = 0..7 of column tq, lane g taking slice
// g; lane g draws calls q with q % 8 == g, and in round s reads slice g of call 8k + (g ^ s) from lane g ^ s.
template <int NT>
__device__ __forceinline__ uint32_t keep_bits_key_rows(const DropoutState& d, int b, int h, int j0, int m0, int lane) {
  static_assert(NT % 2 == 0 && 4 * NT <= 32, "tile shape");
  const int g = lane >> 2, tq = lane & 3, jg = (j0 - g) >> 3;
  uint32_t bits = 0u;
#pragma unroll
  for (int k = 0; k < 4 * NT / 8; ++k) {
    const int own = 8 * k + g, nt = own >> 2, e = own & 3;
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, m0 + 8 * nt + 2 * tq + (e & 1), 8 * (jg + (e >> 1)));
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const int slice = g ^ s;  // the slice the reading lane g ^ s takes
      const uint32_t send = pick(w, slice >> 1) >> (16 * (slice & 1));
      const uint32_t got = s == 0 ? send : __shfl_xor_sync(0xffffffffu, send, 4 * s);
      bits |= static_cast<uint32_t>((got & 0xffffu) >= d.threshold) << (8 * k + (g ^ s));
    }
  }
  return bits;
}

// Zeroes acc[nt][e] where bit 4 * nt + e of `bits` is clear.
template <int NT>
__device__ __forceinline__ void apply_keep(float (&acc)[NT][4], uint32_t bits) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (!((bits >> (4 * nt + e)) & 1u)) acc[nt][e] = 0.f;
    }
  }
}

}  // namespace fastenc
