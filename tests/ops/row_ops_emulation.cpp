// Runs the CUDA row kernels of csrc/add_layer_norm.cu and csrc/embeddings.cu (the LayerNorm skeleton of
// csrc/layer_norm.cuh and the column sums of csrc/common.cu) on the CPU through their own launchers: each CUDA
// thread of a block is a host thread, blocks run one after another, __syncthreads and the warp shuffles meet at
// barriers, atomicAdd is an atomic_ref. The sources are compiled as they are, except that
// tests/ops/test_row_ops_emulation.py rewrites each `kernel<<<grid, block, smem, stream>>>(args)` into
// `::emu::launch(grid, block, smem, stream, [&] { kernel(args); })` and dynamic shared memory into a static buffer.
// Device pointers are host pointers.
//
// Usage: row_ops_emulation DIR, with DIR/params.txt
//   "aln dtype(f|h) param_dtype(f|h) n d has_residual has_x_bias has_bias has_dh_extra dropout_p seed eps"
//   "emb dtype(f|h) param_dtype(f|h) n e V P T has_bias dropout_p seed eps word_pad pos_pad" (P / T 0: no table)
// and the raw inputs next to it (see the test); writes the launchers' outputs as raw files.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <cuda_bf16.h>  // __half / __nv_bfloat16 and their host conversions
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#undef __shared__
#define __shared__ static  // one block runs at a time, so a static is the block's shared variable

namespace emu {
struct Dim {
  unsigned x, y, z;
};
thread_local int tid = 0;
std::barrier<>* block_barrier = nullptr;
std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
std::vector<const void*> slots;
constexpr size_t kDynSmemBytes = 48 * 1024;
alignas(16) unsigned char dyn_smem[kDynSmemBytes];
}  // namespace emu

inline thread_local emu::Dim threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline emu::Dim blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  const int w = emu::tid >> 5;
  emu::slots[emu::tid] = &v;
  emu::warp_barriers[w]->arrive_and_wait();
  const T out = *static_cast<const T*>(emu::slots[(w << 5) + (src & 31)]);
  emu::warp_barriers[w]->arrive_and_wait();
  return out;
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return __shfl_sync(0xffffffffu, v, (emu::tid & 31) ^ mask);
}

namespace emu {
// Runs `kernel` (a closure over the kernel call) as a grid of blocks, one host thread per CUDA thread.
template <class F>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, F&& kernel) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0 || threads > 1024 || smem > kDynSmemBytes) {
    std::fprintf(stderr, "bad launch: %d threads, %zu bytes of shared memory\n", threads, smem);
    std::exit(3);
  }
  blockDim = {block.x, block.y, block.z};
  gridDim = {grid.x, grid.y, grid.z};
  slots.assign(threads, nullptr);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(dyn_smem, 0xff, smem);  // uninitialised shared memory reads as NaN
        std::barrier<> bar(threads);
        block_barrier = &bar;
        warp_barriers.clear();
        for (int w = 0; w < threads / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            tid = t;
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockIdx = {bx, by, bz};
            kernel();
          });
        }
        for (auto& th : pool) th.join();
      }
    }
  }
}
}  // namespace emu

#define cudaGetLastError() cudaSuccess
#define cudaGetDevice(p) cudaErrorNoDevice
#define cudaDeviceGetAttribute(...) cudaErrorNoDevice

#include "add_layer_norm.cu"
#include "common.cu"
#include "embeddings.cu"

namespace {

std::string dir;

struct Buf {
  std::unique_ptr<unsigned char[]> owner;
  void* p = nullptr;
  size_t bytes = 0;
};

Buf alloc(size_t bytes) {
  Buf b;
  b.owner.reset(new unsigned char[bytes + 32]);
  b.p = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(b.owner.get()) + 15) & ~uintptr_t{15});
  b.bytes = bytes;
  std::memset(b.p, 0, bytes);
  return b;
}

Buf read(const std::string& name, size_t bytes) {
  Buf b = alloc(bytes);
  std::ifstream f(dir + "/" + name, std::ios::binary);
  if (!f.read(static_cast<char*>(b.p), static_cast<std::streamsize>(bytes))) {
    std::fprintf(stderr, "cannot read %zu bytes of %s\n", bytes, name.c_str());
    std::exit(2);
  }
  return b;
}

void write(const std::string& name, const Buf& b) {
  std::ofstream(dir + "/" + name, std::ios::binary).write(static_cast<const char*>(b.p), b.bytes);
}

fastenc::DType dtype_of(char c) { return c == 'h' ? fastenc::DType::kFloat16 : fastenc::DType::kFloat32; }
size_t size_of(char c) { return c == 'h' ? 2 : 4; }

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s returned error %d\n", what, static_cast<int>(err));
    std::exit(5);
  }
}

int run_add_layer_norm(std::ifstream& params) {
  char dt, pdt;
  int64_t n, d, seed;
  int has_res, has_xb, has_b, has_dhx;
  float p, eps;
  params >> dt >> pdt >> n >> d >> has_res >> has_xb >> has_b >> has_dhx >> p >> seed >> eps;
  const size_t es = size_of(dt), ps = size_of(pdt), rows = n * d * es;
  Buf x = read("x.bin", rows), w = read("w.bin", d * ps), dy = read("dy.bin", rows);
  Buf res = has_res ? read("res.bin", rows) : Buf{}, xb = has_xb ? read("xb.bin", d * es) : Buf{};
  Buf b = has_b ? read("b.bin", d * ps) : Buf{}, dhx = has_dhx ? read("dhx.bin", rows) : Buf{};
  Buf y = alloc(rows), h = alloc(rows), mean = alloc(n * 4), rstd = alloc(n * 4);
  const int64_t* sp = p > 0.f ? &seed : nullptr;
  check(fastenc::add_layer_norm_fwd(x.p, res.p, xb.p, w.p, b.p, y.p, h.p, static_cast<float*>(mean.p),
                                    static_cast<float*>(rstd.p), n, d, eps, p, sp, dtype_of(dt), dtype_of(pdt), nullptr),
        "add_layer_norm_fwd");
  Buf dx = alloc(rows), dh = alloc(rows), dxb = alloc(d * es), dw = alloc(d * ps), db = alloc(d * ps);
  Buf partial = alloc(3 * fastenc::row_partials_blocks(n) * d * 4);
  check(fastenc::add_layer_norm_bwd(dy.p, h.p, dhx.p, w.p, static_cast<float*>(mean.p), static_cast<float*>(rstd.p),
                                    p > 0.f ? dx.p : nullptr, dh.p, has_xb ? dxb.p : nullptr, dw.p,
                                    has_b ? db.p : nullptr, static_cast<float*>(partial.p), n, d, p, sp, dtype_of(dt),
                                    dtype_of(pdt), nullptr),
        "add_layer_norm_bwd");
  for (auto [name, buf] : {std::pair<const char*, const Buf*>{"y.bin", &y}, {"h.bin", &h}, {"mean.bin", &mean},
                           {"rstd.bin", &rstd}, {"dx.bin", &dx}, {"dh.bin", &dh}, {"dxb.bin", &dxb},
                           {"dw.bin", &dw}, {"db.bin", &db}})
    write(name, *buf);
  return 0;
}

int run_embeddings(std::ifstream& params) {
  char dt, pdt;
  int64_t n, e, V, P, T, seed, word_pad, pos_pad;
  int has_b;
  float p, eps;
  params >> dt >> pdt >> n >> e >> V >> P >> T >> has_b >> p >> seed >> eps >> word_pad >> pos_pad;
  const size_t es = size_of(dt), ps = size_of(pdt);
  Buf ids = read("ids.bin", n * 8), word = read("word.bin", V * e * es), w = read("w.bin", e * ps);
  Buf pos_ids = P ? read("pos_ids.bin", n * 8) : Buf{}, pos = P ? read("pos.bin", P * e * es) : Buf{};
  Buf tt_ids = T ? read("tt_ids.bin", n * 8) : Buf{}, tt = T ? read("tt.bin", T * e * es) : Buf{};
  Buf b = has_b ? read("b.bin", e * ps) : Buf{}, dy = read("dy.bin", n * e * es);
  Buf y = alloc(n * e * es), mean = alloc(n * 4), rstd = alloc(n * 4);
  const int64_t* sp = p > 0.f ? &seed : nullptr;
  const auto* ip = static_cast<const int64_t*>(ids.p);
  const auto* pp = static_cast<const int64_t*>(pos_ids.p);
  const auto* tp = static_cast<const int64_t*>(tt_ids.p);
  check(fastenc::embeddings_fwd(ip, pp, tp, word.p, pos.p, tt.p, w.p, b.p, y.p, static_cast<float*>(mean.p),
                                static_cast<float*>(rstd.p), n, e, V, P, T, eps, p, sp, dtype_of(dt), dtype_of(pdt),
                                nullptr),
        "embeddings_fwd");
  Buf dword = alloc(V * e * 4), dpos = alloc(P * e * 4), dtt = alloc(T * e * 4), dw = alloc(e * ps),
      db = alloc(e * ps), partial = alloc(2 * fastenc::row_partials_blocks(n) * e * 4);
  check(fastenc::embeddings_bwd(dy.p, ip, pp, tp, word.p, pos.p, tt.p, w.p, static_cast<float*>(mean.p),
                                static_cast<float*>(rstd.p), static_cast<float*>(dword.p),
                                P ? static_cast<float*>(dpos.p) : nullptr, T ? static_cast<float*>(dtt.p) : nullptr,
                                dw.p, has_b ? db.p : nullptr, static_cast<float*>(partial.p), n, e, V, P, T, p, sp,
                                word_pad, pos_pad, dtype_of(dt), dtype_of(pdt), nullptr),
        "embeddings_bwd");
  for (auto [name, buf] : {std::pair<const char*, const Buf*>{"y.bin", &y}, {"mean.bin", &mean}, {"rstd.bin", &rstd},
                           {"dword.bin", &dword}, {"dpos.bin", &dpos}, {"dtt.bin", &dtt}, {"dw.bin", &dw},
                           {"db.bin", &db}})
    write(name, *buf);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 1;
  dir = argv[1];
  std::ifstream params(dir + "/params.txt");
  std::string op;
  params >> op;
  if (op == "aln") return run_add_layer_norm(params);
  if (op == "emb") return run_embeddings(params);
  return 1;
}
