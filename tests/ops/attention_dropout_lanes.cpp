// Runs the lane logic of csrc/attention_dropout.cuh on the CPU: one thread per lane of a warp, and the warp
// shuffles exchange values through a barrier. Prints, for each tile asked on stdin ("q|k NT b h row0 col0 seed p"),
// the keep bits of all 32 lanes (bit 4 nt + e for acc[nt][e]); tests/ops/test_attention_dropout_lanes.py checks
// them against the documented scheme.
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

namespace emu {
thread_local int lane = 0;
uint64_t slots[32];
std::barrier<>* warp = nullptr;

template <typename T>
T exchange(T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle width");
  std::memcpy(&slots[lane], &v, sizeof(T));
  warp->arrive_and_wait();
  T out;
  std::memcpy(&out, &slots[src & 31], sizeof(T));
  warp->arrive_and_wait();
  return out;
}
}  // namespace emu

inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32); }
template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  return emu::exchange(v, src);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return emu::exchange(v, emu::lane ^ mask);
}
struct EmuDim {
  unsigned x, y, z;
};
inline EmuDim threadIdx{0, 0, 0}, blockDim{32, 1, 1};
inline void __syncthreads() {}

#include "attention_dropout.cuh"

template <int NT>
void run_tile(char kind, int b, int h, int row0, int col0, const fastenc::DropoutState& d) {
  uint32_t bits[32];
  std::vector<std::thread> lanes;
  for (int l = 0; l < 32; ++l) {
    lanes.emplace_back([&, l] {
      emu::lane = l;
      const int g = l >> 2;
      uint32_t slice[NT][4];
      if (kind == 'q') {
        fastenc::dropout_slices_query_rows<NT>(d, b, h, row0 + g, col0, l, slice);
      } else {
        fastenc::dropout_slices_key_rows<NT>(d, b, h, row0 + g, col0, l, slice);
      }
      bits[l] = 0;
      for (int nt = 0; nt < NT; ++nt) {
        for (int e = 0; e < 4; ++e) bits[l] |= static_cast<uint32_t>(slice[nt][e] >= d.threshold) << (4 * nt + e);
      }
    });
  }
  for (auto& t : lanes) t.join();
  for (int l = 0; l < 32; ++l) std::printf("%u%c", bits[l], l == 31 ? '\n' : ' ');
}

int main() {
  std::barrier<> warp(32);
  emu::warp = &warp;
  char kind;
  int nt, b, h, row0, col0;
  long long seed;
  float p;
  while (std::scanf(" %c %d %d %d %d %d %lld %f", &kind, &nt, &b, &h, &row0, &col0, &seed, &p) == 8) {
    fastenc::DropoutState d{true, static_cast<uint32_t>(seed), static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32),
                            fastenc::dropout_threshold8(p), 1.f / (1.f - p)};
    if (nt == 4) {
      run_tile<4>(kind, b, h, row0, col0, d);
    } else if (nt == 8) {
      run_tile<8>(kind, b, h, row0, col0, d);
    } else {
      return 1;
    }
  }
  return 0;
}
