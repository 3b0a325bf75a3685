// A CPU emulation of the CUDA device, for running the tensor-core engine's own sources
// (csrc/ops/cuda/engine/*.cu, compiled as C++ with OT_FLOW_DEVICE_EMULATION and this header
// force-included) where no GPU is at hand: every CUDA thread of a block is a fiber on one host
// thread, switched at barriers and warp-wide instructions; warps exchange registers at shuffles
// and MMAs; the PTX instructions are modelled from the PTX ISA's text (fragment layouts of
// mma.m16n8k8.tf32 and mma.m16n8k16.bf16, cvt.rn.bf16x2, ex2.approx.ftz, cp.async groups).
//
// What it checks that reading cannot: the kernels' indexing, fragment layouts, masks, the
// staging pipeline (a cp.async's bytes are poison until the wait_group that covers it, so a
// read before the wait, or a refill of a buffer another warp still reads, shows up as NaN),
// barriers (a deadlock is reported), chunk merges, batching, and the host code of every launch.
// What it cannot: timing, the hardware's own rounding (the MMA sums exactly and rounds once, or
// truncates, by setting), memory-model subtleties beyond barriers.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

// ---- CUDA's keywords, as the host compiler should read them ----------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Blocks run one after another, so a block's __shared__ variables can be function statics.
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in variables of the thread that runs (set by the scheduler at every switch).
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace ot_flow::emulation {

// How the emulated device behaves; tests set it before a launch.
struct Settings {
  // Multiprocessors the host code sees (the column split aims at twice as many blocks).
  int multiprocessors = 132;
  // kPoisonUntilWait: a cp.async writes NaN at once and its bytes at the covering wait_group
  // (the latest the ISA allows); kAtIssue: its bytes at once.
  enum class Copies { kPoisonUntilWait, kAtIssue } copies = Copies::kPoisonUntilWait;
  // How an MMA rounds its float32 result: the exact sum of products and accumulator truncated
  // (toward zero, as the tensor cores are reported to do: Fasi et al. 2021, V100 to A100), or
  // rounded to nearest once.
  enum class MmaRounding { kTruncate, kNearest } mma_rounding = MmaRounding::kTruncate;
  // ex2.approx's error: its result times (1 + e), e drawn per call in [-2^-22, 2^-22] (the
  // hardware's approximation is within about 2 ulp), or none.
  bool ex2_error = true;
  // Seeds the order in which the fibers of a block run between switches.
  uint64_t schedule_seed = 1;
};
Settings& settings();

// What the emulated device has done since the last reset, for tests that the work took the
// path it should (tensor-core MMAs, several column chunks, blocks of so many threads); threads:
// every block's threads, summed.
struct Counters {
  int64_t launches = 0, blocks = 0, threads = 0, mma_tf32 = 0, mma_bf16 = 0, mma_f16 = 0, async_copies = 0;
};
Counters& counters();

// Runs body() as every thread of every block of the grid, blocks one after another. Throws
// std::runtime_error for a deadlock, a misaligned or unwaited cp.async, a misaligned vector load
// (check_aligned), or dynamic shared memory.
void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

// The calling thread's lane (0..31) within its warp.
int lane_id();
// Block barrier (__syncthreads) and warp barrier (__syncwarp) of the calling thread.
void block_barrier();
// The block barrier that also returns whether any thread of the block passed a nonzero
// predicate (__syncthreads_or).
int block_barrier_or(int predicate);
void warp_barrier();
// Publishes `bytes` (<= 64) of the calling lane and gathers the warp's: all[lane * bytes ...].
// Lanes that have exited read as what they last published (zeros if nothing).
void warp_exchange(const void* mine, size_t bytes, void* all);

// The PTX instructions of csrc/ops/cuda/ptx_instructions.cuh.
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);
uint32_t cvt_rn_bf16x2_f32(float a, float b);
uint32_t cvt_rn_f16x2_f32(float a, float b);
float cvt_f32_f16(uint32_t a);
float ex2_approx_ftz(float v);
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
// Throws std::runtime_error(what) unless p is a multiple of `bytes` (a vector load's alignment,
// which the hardware requires and x86 does not).
void check_aligned(const void* p, int bytes, const char* what);
void cp_async_commit_group();
void cp_async_wait_group(int pending);

}  // namespace ot_flow::emulation

// ---- CUDA's intrinsics --------------------------------------------------------------------
inline void __syncthreads() { ot_flow::emulation::block_barrier(); }
inline int __syncthreads_or(int predicate) { return ot_flow::emulation::block_barrier_or(predicate); }
inline void __syncwarp(unsigned = 0xffffffffu) { ot_flow::emulation::warp_barrier(); }

template <class T>
T __shfl_sync(unsigned, T v, int source) {
  T all[32];
  ot_flow::emulation::warp_exchange(&v, sizeof(T), all);
  return all[source & 31];
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  T all[32];
  ot_flow::emulation::warp_exchange(&v, sizeof(T), all);
  return all[(ot_flow::emulation::lane_id() ^ lane_mask) & 31];
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  int all[32];
  const int mine = predicate != 0 ? 1 : 0;
  ot_flow::emulation::warp_exchange(&mine, sizeof(int), all);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l) out |= static_cast<unsigned>(all[l]) << l;
  return out & mask;
}
inline int __ffs(int v) { return __builtin_ffs(v); }
// One host thread runs every fiber, and fibers switch only at barriers: atomics are plain.
inline int atomicAdd(int* address, int v) {
  const int old = *address;
  *address = old + v;
  return old;
}
inline uint32_t __float_as_uint(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline float __uint_as_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline long long __double_as_longlong(double v) {
  long long u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline double __longlong_as_double(long long u) {
  double v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
// CUDA's min and max of two integers of one type (the kernels call them unqualified).
template <class T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
