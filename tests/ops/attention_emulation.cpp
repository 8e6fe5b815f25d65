// Runs the CUDA attention kernels of csrc/attention_kernels.cuh on the CPU, unchanged, over an emulation of the
// PTX they use (csrc/attention_ptx.cuh's functions, rewritten here from the PTX ISA's fragment layouts): each CUDA
// thread of a block is a host thread, __syncthreads and every warp-collective instruction (ldmatrix, mma.sync,
// shuffles) meet at a barrier, and the warp's lanes trade their operands through shared slots. cp.async is
// deferred: at issue it poisons its 16 destination bytes with NaNs and copies only when a cp.async.wait_group
// covers its group, so a tile read before its wait, or overwritten while another warp still reads it, shows up
// as NaN or wrong values in the outputs. Every ldmatrix row and cp.async destination must be 16-byte aligned and
// inside the launcher's shared memory size (a guard zone after it catches other writes); ldmatrix matrices whose
// 8 rows share a bank group are counted and printed ("ldmatrix_conflicts N"). The number of 16-byte cp.async copies
// that read memory goes to DIR/cp_async_copies.txt (what a window saves: the tiles its blocks skip).
//
// Usage: attention_emulation DIR, with DIR/params.txt
//   "dtype(h|b) head_dim batch heads max_seqlen rows packed scale dropout_p seed backward window" (rows: tokens
//   when packed, else max_seqlen; window -1: none, else the kernels' kWindow instantiations run, as the launchers'
//   would)
// and the raw inputs DIR/{q,k,v,dout}.bin (16-bit, [B, S, H, D] or [T, H, D], contiguous; or q, k, v as views of
// one DIR/qkv.bin [B, S, 3, H, D] or [T, 3, H, D], as a fused projection makes them), mask.bin (uint8 [B, S], when
// masked), cu.bin (int32 [B + 1]). Writes o.bin, lse.bin (fp32) and with backward dq.bin, dk.bin, dv.bin.
// tests/ops/test_attention_emulation.py compares them with a float64 attention.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>  // __half / __nv_bfloat16 and their host conversions
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#undef __shared__
#define __shared__ static  // one block runs at a time, so a static is the block's shared variable
#define __launch_bounds__(n)

namespace emu {
constexpr int kBlockThreads = 128, kWarps = kBlockThreads / 32;
struct Dim {
  unsigned x, y, z;
};
thread_local int tid = 0;
std::barrier<>* block_barrier = nullptr;
std::barrier<>* warp_barrier[kWarps];
const void* slots[kWarps][32];

// Publishes this lane's operand; f(slots) reads the whole warp's; barriers keep the slots stable meanwhile.
template <typename F>
void warp_collective(const void* mine, F&& f) {
  const int w = tid >> 5, l = tid & 31;
  slots[w][l] = mine;
  warp_barrier[w]->arrive_and_wait();
  f(slots[w]);
  warp_barrier[w]->arrive_and_wait();
}

struct Copy {
  void* dst;
  const void* src;
  bool valid;
};
thread_local std::vector<Copy> open_group;
thread_local std::deque<std::vector<Copy>> committed;

unsigned char* smem = nullptr;
size_t smem_bytes = 0;
std::atomic<long> ldmatrix_conflicts{0};
std::atomic<long> cp_async_copies{0};

[[noreturn]] void fail(const char* what, const void* p) {
  std::fprintf(stderr, "%s: %p (shared memory %p + %zu bytes)\n", what, p, static_cast<void*>(smem), smem_bytes);
  std::exit(4);
}

// A shared-memory access of 16 bytes at p: inside the launcher's dynamic shared memory and 16-byte aligned.
void check_smem16(const void* p, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < smem || c + 16 > smem + smem_bytes || reinterpret_cast<uintptr_t>(p) % 16 != 0) fail(what, p);
}

// The 8 row addresses of one ldmatrix 8x8 matrix are served in one shared-memory wavefront iff their 16-byte
// chunks fall in 8 different groups of 4 banks.
void count_conflicts(const void* const* rows) {
  unsigned seen = 0;
  for (int r = 0; r < 8; ++r) seen |= 1u << ((static_cast<const unsigned char*>(rows[r]) - smem) / 16 % 8);
  if (seen != 0xffu) ++ldmatrix_conflicts;
}
}  // namespace emu

inline thread_local emu::Dim threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline emu::Dim blockDim{emu::kBlockThreads, 1, 1}, gridDim{1, 1, 1};
inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32); }
template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  T out;
  emu::warp_collective(&v, [&](const void* const* s) { std::memcpy(&out, s[src & 31], sizeof(T)); });
  return out;
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return __shfl_sync(0xffffffffu, v, (emu::tid & 31) ^ mask);
}

namespace fastenc {
namespace {

template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(emu::smem);
}

inline float exp2_approx(float x) { return std::exp2(x); }
inline float log2_approx(float x) { return std::log2(x); }

inline uint32_t load_b16x2(const void* p) {
  uint32_t r;
  std::memcpy(&r, p, 4);
  return r;
}

// ldmatrix .x4: lane 8 m + r gives the address of row r of matrix m (8 16-bit values); lane l receives, of matrix
// m, row l / 4 columns 2 (l % 4) and 2 (l % 4) + 1 (.trans: column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1).
// Each lane checks its own row address; lane 0 counts bank conflicts for the warp.
inline void ldmatrix_rows_check(const void* p, const void* const* s) {
  emu::check_smem16(p, "ldmatrix row address");
  if ((emu::tid & 31) == 0) {
    for (int m = 0; m < 4; ++m) emu::count_conflicts(s + 8 * m);
  }
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const int l = emu::tid & 31;
  emu::warp_collective(p, [&](const void* const* s) {
    ldmatrix_rows_check(p, s);
    for (int m = 0; m < 4; ++m) r[m] = load_b16x2(static_cast<const uint16_t*>(s[8 * m + l / 4]) + 2 * (l % 4));
  });
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const int l = emu::tid & 31;
  emu::warp_collective(p, [&](const void* const* s) {
    ldmatrix_rows_check(p, s);
    for (int m = 0; m < 4; ++m) {
      const uint16_t lo = static_cast<const uint16_t*>(s[8 * m + 2 * (l % 4)])[l / 4];
      const uint16_t hi = static_cast<const uint16_t*>(s[8 * m + 2 * (l % 4) + 1])[l / 4];
      r[m] = lo | (static_cast<uint32_t>(hi) << 16);
    }
  });
}

template <typename T>
float b16_to_float(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

// mma.sync.m16n8k16.row.col: lane 4 g + t holds A (16 x 16) at a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..),
// a3 (g + 8, 2t + 8..); B (16 x 8, k x n) at b0 (k = 2t..2t+1, n = g), b1 (k = 2t + 8.., n = g); C / D at
// d0 (g, 2t), d1 (g, 2t + 1), d2 (g + 8, 2t), d3 (g + 8, 2t + 1).
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  const int l = emu::tid & 31, g = l >> 2, t = l & 3;
  float out[4];
  emu::warp_collective(mine, [&](const void* const* s) {
    auto half_of = [&](int lane, int reg, int hi) {
      return b16_to_float<T>(static_cast<uint16_t>(static_cast<const uint32_t*>(s[lane])[reg] >> (16 * hi)));
    };
    auto a_at = [&](int row, int col) {
      return half_of(4 * (row % 8) + (col % 8) / 2, (row >= 8) + 2 * (col >= 8), col % 2);
    };
    auto b_at = [&](int k, int n) { return half_of(4 * n + (k % 8) / 2, 4 + (k >= 8), k % 2); };
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      double acc = 0.0;
      for (int k = 0; k < 16; ++k) acc += static_cast<double>(a_at(row, k)) * b_at(k, col);
      out[e] = static_cast<float>(d[e] + acc);
    }
  });
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

inline void cp_async_16(void* dst, const void* src, bool valid) {
  emu::check_smem16(dst, "cp.async destination");
  if (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0) emu::fail("cp.async source not 16-byte aligned", src);
  if (valid) ++emu::cp_async_copies;
  std::memset(dst, 0xff, 16);  // NaN in fp16 and bf16 until the copy is waited for
  emu::open_group.push_back({dst, src, valid});
}

inline void cp_async_commit() {
  emu::committed.push_back(std::move(emu::open_group));
  emu::open_group.clear();
}

template <int N>
void cp_async_wait() {
  while (static_cast<int>(emu::committed.size()) > N) {
    for (const emu::Copy& c : emu::committed.front()) {
      if (c.valid) {
        std::memcpy(c.dst, c.src, 16);
      } else {
        std::memset(c.dst, 0, 16);
      }
    }
    emu::committed.pop_front();
  }
}

}  // namespace
}  // namespace fastenc

#include "attention_kernels.cuh"

namespace {

constexpr size_t kGuard = 4096;
constexpr unsigned char kGuardByte = 0x5a;

// Runs kernel(p) on every block of grid (x, heads, batch) in turn, a host thread per CUDA thread.
void launch(const std::function<void(const fastenc::AttnParams&)>& kernel, int blocks_x, size_t smem_bytes,
            const fastenc::AttnParams& p) {
  std::vector<unsigned char> smem(smem_bytes + kGuard, kGuardByte);
  emu::smem = smem.data();
  emu::smem_bytes = smem_bytes;
  std::barrier<> block(emu::kBlockThreads);
  std::deque<std::barrier<>> warps;
  for (int w = 0; w < emu::kWarps; ++w) emu::warp_barrier[w] = &warps.emplace_back(32);
  emu::block_barrier = &block;
  std::vector<std::thread> threads;
  for (int t = 0; t < emu::kBlockThreads; ++t) {
    threads.emplace_back([&, t] {
      emu::tid = t;
      threadIdx = {static_cast<unsigned>(t), 0, 0};
      for (int z = 0; z < p.batch; ++z) {
        for (int y = 0; y < p.heads; ++y) {
          for (int x = 0; x < blocks_x; ++x) {
            blockIdx = {static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)};
            emu::committed.clear();
            emu::open_group.clear();
            kernel(p);
            block.arrive_and_wait();  // the next block reuses the shared memory
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = smem_bytes; i < smem.size(); ++i) {
    if (smem[i] != kGuardByte) {
      std::fprintf(stderr, "shared memory written past the launcher's %zu bytes (offset %zu)\n", smem_bytes, i);
      std::exit(3);
    }
  }
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream(path, std::ios::binary).write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

int blocks_for(int max_seqlen, int rows) { return (max_seqlen + rows - 1) / rows; }

template <typename T, int D, bool kWindow>
void run(const std::string& dir, fastenc::AttnParams p, int64_t rows, bool packed, bool backward) {
  using namespace fastenc;
  const int64_t n = (packed ? rows : rows * p.batch) * p.heads * D;
  std::vector<char> qkv = read_file(dir + "/qkv.bin");  // fused [rows, 3, H, D] (q, k, v views), else q / k / v
  std::vector<char> q = read_file(dir + "/q.bin"), k = read_file(dir + "/k.bin"), v = read_file(dir + "/v.bin");
  std::vector<char> dout = read_file(dir + "/dout.bin"), mask = read_file(dir + "/mask.bin");
  std::vector<char> cu = read_file(dir + "/cu.bin");
  std::vector<uint16_t> o(n), dq(n), dk(n), dv(n);
  const int64_t lse_n = packed ? p.heads * rows : static_cast<int64_t>(p.batch) * p.heads * p.max_seqlen;
  std::vector<float> lse(lse_n, NAN), delta(lse_n, NAN);
  const int64_t seq_rows = packed ? rows : p.max_seqlen;
  auto tensor = [&](void* ptr, int64_t views = 1) {  // views: rows interleaved with views - 1 other tensors
    const int64_t row = views * p.heads * D;
    return AttnTensor{ptr, packed ? 0 : seq_rows * row, row, D};
  };
  auto input = [&](std::vector<char>& own, int64_t which) {
    return qkv.empty() ? tensor(own.data()) : tensor(qkv.data() + which * p.heads * D * 2, 3);
  };
  p.q = input(q, 0);
  p.k = input(k, 1);
  p.v = input(v, 2);
  p.o = tensor(o.data());
  p.dout = tensor(dout.data());
  p.dq = tensor(dq.data());
  p.dk = tensor(dk.data());
  p.dv = tensor(dv.data());
  p.lse = lse.data();
  p.delta = delta.data();
  p.lse_batch_stride = packed ? 0 : static_cast<int64_t>(p.heads) * p.max_seqlen;
  p.lse_head_stride = packed ? rows : p.max_seqlen;
  p.key_mask = mask.empty() ? nullptr : reinterpret_cast<const uint8_t*>(mask.data());
  p.mask_batch_stride = p.max_seqlen;
  p.cu_seqlens = packed ? reinterpret_cast<const int32_t*>(cu.data()) : nullptr;

  using Fwd = FwdTile<D>;
  using Bwd = BwdTile<D>;
  launch(attention_fwd_kernel<T, D, kWindow>, blocks_for(p.max_seqlen, Fwd::kM), Fwd::kSmem, p);
  write_file(dir + "/o.bin", o.data(), o.size() * 2);
  write_file(dir + "/lse.bin", lse.data(), lse.size() * 4);
  if (!backward) return;
  launch(attention_bwd_delta_kernel<T, D>, blocks_for(p.max_seqlen, 64), 0, p);
  launch(attention_bwd_dkdv_kernel<T, D, kWindow>, blocks_for(p.max_seqlen, Bwd::kN), Bwd::kSmemDkDv, p);
  launch(attention_bwd_dq_kernel<T, D, kWindow>, blocks_for(p.max_seqlen, Bwd::kDqRows), Bwd::kSmemDq, p);
  write_file(dir + "/dq.bin", dq.data(), dq.size() * 2);
  write_file(dir + "/dk.bin", dk.data(), dk.size() * 2);
  write_file(dir + "/dv.bin", dv.data(), dv.size() * 2);
}

template <typename T, bool kWindow>
void run_dim(int d, const std::string& dir, const fastenc::AttnParams& p, int64_t rows, bool packed, bool backward) {
  if (d == 32) run<T, 32, kWindow>(dir, p, rows, packed, backward);
  if (d == 64) run<T, 64, kWindow>(dir, p, rows, packed, backward);
  if (d == 128) run<T, 128, kWindow>(dir, p, rows, packed, backward);
}

template <typename T>
void run_dim(int d, const std::string& dir, const fastenc::AttnParams& p, int64_t rows, bool packed, bool backward) {
  if (p.window >= 0) {
    run_dim<T, true>(d, dir, p, rows, packed, backward);
  } else {
    run_dim<T, false>(d, dir, p, rows, packed, backward);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  std::ifstream params(dir + "/params.txt");
  char dtype;
  int d, packed, backward;
  long long rows, seed;
  fastenc::AttnParams p{};
  params >> dtype >> d >> p.batch >> p.heads >> p.max_seqlen >> rows >> packed >> p.softmax_scale >>
      p.dropout_p >> seed >> backward >> p.window;
  if (!params || (d != 32 && d != 64 && d != 128) || p.window < -1) return 2;
  p.head_dim = d;
  const int64_t seed64 = seed;
  p.seed = p.dropout_p > 0.f ? &seed64 : nullptr;
  if (dtype == 'h') {
    run_dim<__half>(d, dir, p, rows, packed != 0, backward != 0);
  } else {
    run_dim<__nv_bfloat16>(d, dir, p, rows, packed != 0, backward != 0);
  }
  std::ofstream(dir + "/cp_async_copies.txt") << emu::cp_async_copies.load() << "\n";
  std::printf("ldmatrix_conflicts %ld\n", emu::ldmatrix_conflicts.load());
  return 0;
}
