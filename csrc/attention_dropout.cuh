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

// out[s] = v[(s + r) % 4] for a run-time r: two stages of selects.
__device__ __forceinline__ void rotate4(uint32_t (&v)[4], int r) {
  uint32_t a[4];
#pragma unroll
  for (int s = 0; s < 4; ++s) a[s] = (r & 1) ? v[(s + 1) & 3] : v[s];
#pragma unroll
  for (int s = 0; s < 4; ++s) v[s] = (r & 2) ? a[(s + 2) & 3] : a[s];
}

// out[s] = v[s ^ x] for a run-time x in 0..7: three stages of selects.
__device__ __forceinline__ void xor_permute8(uint32_t (&v)[8], int x) {
#pragma unroll
  for (int bit = 1; bit < 8; bit <<= 1) {
    uint32_t a[8];
#pragma unroll
    for (int s = 0; s < 8; ++s) a[s] = (x & bit) ? v[s ^ bit] : v[s];
#pragma unroll
    for (int s = 0; s < 8; ++s) v[s] = a[s];
  }
}

// The 16-bit slices of a tile whose rows are queries (i) and columns keys (j): slice[nt][e] for acc[nt][e] =
// (i0 + 8 * (e >> 1), n0 + 8 * nt + 2 * tq + (e & 1)), i0 this lane's row, n0 a multiple of 8. Call c = r * NT + nt
// (counter {n0 / 8 + nt, i0 + 8 r}) serves the quad's 4 lanes, lane tq taking word tq. Lane tq draws the calls with
// c % 4 == tq; in round s it sends word (tq - s) % 4 of its call and reads word tq of call 4k + (tq + s) % 4 from
// quad lane (tq + s) % 4. Rotations by -tq put the words to send, and the words read, in round / call order.
template <int NT>
__device__ __forceinline__ void dropout_slices_query_rows(const DropoutState& d, int b, int h, int i0, int n0,
                                                          int lane, uint32_t (&slice)[NT][4]) {
  static_assert(NT % 2 == 0, "tile shape");
  const int tq = lane & 3, quad = lane & ~3, back = (4 - tq) & 3;
#pragma unroll
  for (int k = 0; k < 2 * NT / 4; ++k) {
    const int own = 4 * k + tq;
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, i0 + 8 * (own / NT), n0 + 8 * (own % NT));
    uint32_t words[4] = {w.x, w.w, w.z, w.y};  // words[s] = word (-s) % 4
    rotate4(words, back);                       // words[s] = word (tq - s) % 4
#pragma unroll
    for (int s = 1; s < 4; ++s) words[s] = __shfl_sync(0xffffffffu, words[s], quad | ((tq + s) & 3));
    rotate4(words, back);  // words[m] = word tq of call 4k + m
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int c = 4 * k + m, r = c / NT, nt = c % NT;
      slice[nt][2 * r] = words[m] & 0xffffu;
      slice[nt][2 * r + 1] = words[m] >> 16;
    }
  }
}

// The same for a transposed tile: rows are keys (j), columns queries (i): slice[nt][e] for acc[nt][e] =
// (j0 + 8 * (e >> 1), m0 + 8 * nt + 2 * tq + (e & 1)), this lane's key j0 = 8 * (group) + g, m0 a multiple of 8.
// Call q = 4 nt + e (counter {j0 / 8 + (e >> 1), column of acc[nt][e]}) serves the 8 lanes g = 0..7 of column tq,
// lane g taking slice g. Lane g draws the calls with q % 8 == g; in round s it sends slice g ^ s of its call and
// reads slice g of call 8k + (g ^ s) from lane g ^ s (lane index ^ 4 s). Permutations by ^ g order both.
template <int NT>
__device__ __forceinline__ void dropout_slices_key_rows(const DropoutState& d, int b, int h, int j0, int m0, int lane,
                                                        uint32_t (&slice)[NT][4]) {
  static_assert(NT % 2 == 0, "tile shape");
  const int g = lane >> 2, tq = lane & 3, jg = (j0 - g) >> 3;
#pragma unroll
  for (int k = 0; k < 4 * NT / 8; ++k) {
    const int own = 8 * k + g, nt = own >> 2, e = own & 3;
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, m0 + 8 * nt + 2 * tq + (e & 1), 8 * (jg + (e >> 1)));
    uint32_t pieces[8] = {w.x & 0xffffu, w.x >> 16, w.y & 0xffffu, w.y >> 16,
                          w.z & 0xffffu, w.z >> 16, w.w & 0xffffu, w.w >> 16};
    xor_permute8(pieces, g);  // pieces[s] = slice g ^ s
#pragma unroll
    for (int s = 1; s < 8; ++s) pieces[s] = __shfl_xor_sync(0xffffffffu, pieces[s], 4 * s);
    xor_permute8(pieces, g);  // pieces[m] = slice g of call 8k + m
#pragma unroll
    for (int m = 0; m < 8; ++m) slice[(8 * k + m) >> 2][(8 * k + m) & 3] = pieces[m];
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
