// Attention dropout masks inside the mma tiles of csrc/attention.cu, apart so that tests/ops can run the lane
// logic on the CPU (a thread per lane standing in for the warp's shuffles).
//
// Trade-off: one Philox4x32-7 call gives 16 keep decisions (8-bit slices): 7 rounds (the fewest that pass BigCrush)
// and 8-bit slices cost a keep probability rounded to 2^-8 but draw 2.9x fewer rounds per decision than 10 rounds
// and 16-bit slices. The lanes holding a call's 16 elements draw one call each and trade words with shuffles, so a
// warp draws every call once. Each shuffle round costs a few selects and shifts, far less than the Philox calls it
// saves.
#pragma once

#include "common.cuh"

namespace fastenc {

// Dropout keeps element (i, j) of sequence b, head h iff its 8-bit slice of Philox4x32-7(key = seed, counter =
// {j / 16, i, b, h}) is >= threshold = ceil(p * 2^8): with c = j % 16, byte (c % 2) + 2 (c / 8) of word (c % 8) / 2,
// so word w holds keys 2w, 2w + 1, 2w + 8, 2w + 9 (the columns of lane w of a quad in two m16n8 tiles). The scheme
// fastenc.kernels.attention documents, so both backends draw the same mask, in each sequence's own coordinates.
__device__ __forceinline__ U32x4 dropout_words(uint32_t key0, uint32_t key1, int b, int h, int i, int j) {
  return philox4x32<7>(U32x4{static_cast<uint32_t>(j >> 4), static_cast<uint32_t>(i), static_cast<uint32_t>(b),
                            static_cast<uint32_t>(h)},
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

// The 8-bit slices of a tile whose rows are queries (i) and columns keys (j): slice[nt][e] for acc[nt][e] =
// (i0 + 8 * (e >> 1), n0 + 8 * nt + 2 * tq + (e & 1)), i0 this lane's row, n0 a multiple of 16. Call c = r * NT / 2 +
// u (counter {n0 / 16 + u, i0 + 8 r}) covers tiles 2u, 2u + 1 of row i0 + 8 r and serves the quad's 4 lanes, lane tq
// taking word tq (bytes: acc[2u][2r], acc[2u][2r + 1], acc[2u + 1][2r], acc[2u + 1][2r + 1]). Lane tq draws the
// calls with c % 4 == tq; in round s it sends word (tq - s) % 4 of its call and reads word tq of call 4k + (tq + s) %
// 4 from quad lane (tq + s) % 4. Rotations by -tq put the words to send, and the words read, in round / call order.
template <int NT>
__device__ __forceinline__ void dropout_slices_query_rows(const DropoutState& d, int b, int h, int i0, int n0,
                                                          int lane, uint32_t (&slice)[NT][4]) {
  static_assert(NT % 4 == 0, "tile shape");
  constexpr int kU = NT / 2;  // calls per row
  const int tq = lane & 3, quad = lane & ~3, back = (4 - tq) & 3;
#pragma unroll
  for (int k = 0; k < NT / 4; ++k) {
    const int own = 4 * k + tq;
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, i0 + 8 * (own / kU), n0 + 16 * (own % kU));
    uint32_t words[4] = {w.x, w.w, w.z, w.y};  // words[s] = word (-s) % 4
    rotate4(words, back);                       // words[s] = word (tq - s) % 4
#pragma unroll
    for (int s = 1; s < 4; ++s) words[s] = __shfl_sync(0xffffffffu, words[s], quad | ((tq + s) & 3));
    rotate4(words, back);  // words[m] = word tq of call 4k + m
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int c = 4 * k + m, r = c / kU, u = c % kU;
      slice[2 * u][2 * r] = words[m] & 0xffu;
      slice[2 * u][2 * r + 1] = (words[m] >> 8) & 0xffu;
      slice[2 * u + 1][2 * r] = (words[m] >> 16) & 0xffu;
      slice[2 * u + 1][2 * r + 1] = words[m] >> 24;
    }
  }
}

// The same for a transposed tile: rows are keys (j), columns queries (i): slice[nt][e] for acc[nt][e] =
// (j0 + 8 * (e >> 1), m0 + 8 * nt + 2 * tq + (e & 1)), this lane's key j0 = 16 * (group) + g, m0 a multiple of 8.
// Call q = 2 nt + (e & 1) (counter {j0 / 16, column of acc[nt][e]}) serves the 8 lanes g = 0..7 of column tq, lane g
// taking piece g: the bytes of keys g (low) and g + 8 (high), bytes g % 2 and g % 2 + 2 of word g / 2. Lane g draws
// the calls with q % 8 == g; in round s it sends piece g ^ s of its call and reads piece g of call 8k + (g ^ s) from
// lane g ^ s (lane index ^ 4 s). Permutations by ^ g order both.
template <int NT>
__device__ __forceinline__ void dropout_slices_key_rows(const DropoutState& d, int b, int h, int j0, int m0, int lane,
                                                        uint32_t (&slice)[NT][4]) {
  static_assert(NT % 4 == 0, "tile shape");
  const int g = lane >> 2, tq = lane & 3, j16 = j0 - g;
#pragma unroll
  for (int k = 0; k < 2 * NT / 8; ++k) {
    const int own = 8 * k + g, nt = own >> 1, e = own & 1;
    const U32x4 w = dropout_words(d.key0, d.key1, b, h, m0 + 8 * nt + 2 * tq + e, j16);
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
    uint32_t pieces[8];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const uint32_t x = ws[s >> 1] >> (8 * (s & 1));
      pieces[s] = (x & 0xffu) | ((x >> 8) & 0xff00u);
    }
    xor_permute8(pieces, g);  // pieces[s] = piece g ^ s
#pragma unroll
    for (int s = 1; s < 8; ++s) pieces[s] = __shfl_xor_sync(0xffffffffu, pieces[s], 4 * s);
    xor_permute8(pieces, g);  // pieces[m] = piece g of call 8k + m
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      const int q = 8 * k + m;
      slice[q >> 1][q & 1] = pieces[m] & 0xffu;
      slice[q >> 1][2 + (q & 1)] = pieces[m] >> 8;
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
