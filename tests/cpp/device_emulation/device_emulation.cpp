// The emulated device of device_emulation.h: fibers (ucontext) for the threads of a block, run
// by a scheduler on the calling host thread, and models of the PTX instructions the engine uses.
#include "device_emulation.h"

#include <ucontext.h>

#include <algorithm>
#include <cfloat>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};
dim3 gridDim{1, 1, 1};

namespace ot_flow::emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSlotBytes = 64;

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
  int64_t group;  // the commit group it belongs to (the thread's count of commits when issued)
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  int tid = 0;
  bool done = false;
  std::vector<AsyncCopy> copies;
  int64_t commits = 0;
};

struct Warp {
  Barrier barrier;
  int live = 0;
  // Two sets of slots, alternating with the barrier's generation: a lane that has passed one
  // exchange writes the other set while slower lanes still read this one.
  unsigned char slots[2][32][kSlotBytes];
};

struct Device {
  Settings settings;
  Counters counters;
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_barrier;
  int block_live = 0;
  // __syncthreads_or's predicates, ORed into the set of the barrier's generation (generation & 1):
  // the release of generation g clears the set of g + 1, which was last read in generation g - 1,
  // before any thread passed the barrier of g.
  int block_or[2] = {0, 0};
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  uint64_t events = 0;  // barrier arrivals, releases and exits: a pass without any is a deadlock
  uint64_t ex2_calls = 0;  // the counter of ex2.approx's error stream
  std::string error;    // set by a fiber that cannot go on; the launch throws it
};

Device& device() {
  static Device d;
  return d;
}

Warp& warp_of(const Fiber& f) { return device().warps[f.tid / 32]; }

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield() {
  Device& dev = device();
  swapcontext(&dev.current->context, &dev.scheduler);
}

// Records the error and never returns: the scheduler abandons the block and the launch throws.
[[noreturn]] void fail(const std::string& what) {
  Device& dev = device();
  if (dev.error.empty()) dev.error = what;
  for (;;) yield();
}

void release_if_complete(Barrier& b, int live) {
  if (b.arrived > 0 && b.arrived >= live) {
    b.arrived = 0;
    ++b.generation;
    Device& dev = device();
    ++dev.events;
    if (&b == &dev.block_barrier) dev.block_or[b.generation & 1] = 0;
  }
}

void arrive_and_wait(Barrier& b, const int& live) {
  Device& dev = device();
  const uint64_t generation = b.generation;
  ++b.arrived;
  ++dev.events;
  release_if_complete(b, live);
  while (b.generation == generation) yield();
}

void apply(const AsyncCopy& c) {
  auto* dst = static_cast<unsigned char*>(c.dst);
  if (c.src_bytes > 0) std::memcpy(dst, c.src, static_cast<size_t>(c.src_bytes));
  std::memset(dst + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
}

void run_fiber() {
  Device& dev = device();
  (*dev.body)();
  Fiber& f = *dev.current;
  if (!f.copies.empty()) fail("a thread ended with cp.async copies it never waited for");
  f.done = true;
  ++dev.events;
  --dev.block_live;
  release_if_complete(dev.block_barrier, dev.block_live);
  Warp& w = warp_of(f);
  --w.live;
  release_if_complete(w.barrier, w.live);
  // Returning resumes uc_link, the scheduler.
}

void set_thread_index(int tid) {
  threadIdx.x = static_cast<unsigned>(tid) % blockDim.x;
  threadIdx.y = (static_cast<unsigned>(tid) / blockDim.x) % blockDim.y;
  threadIdx.z = static_cast<unsigned>(tid) / (blockDim.x * blockDim.y);
}

void run_block(int threads, std::mt19937_64& order_rng) {
  Device& dev = device();
  if (static_cast<int>(dev.fibers.size()) < threads) dev.fibers.resize(static_cast<size_t>(threads));
  dev.warps.assign(static_cast<size_t>((threads + 31) / 32), Warp{});
  for (int w = 0; w < static_cast<int>(dev.warps.size()); ++w) dev.warps[w].live = std::min(32, threads - 32 * w);
  dev.block_barrier = Barrier{};
  dev.block_or[0] = dev.block_or[1] = 0;
  dev.block_live = threads;
  for (int t = 0; t < threads; ++t) {
    Fiber& f = dev.fibers[t];
    if (!f.stack) f.stack.reset(new char[kStackBytes]);
    f.tid = t;
    f.done = false;
    f.copies.clear();
    f.commits = 0;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &dev.scheduler;
    makecontext(&f.context, run_fiber, 0);
  }
  std::vector<int> order(static_cast<size_t>(threads));
  std::iota(order.begin(), order.end(), 0);
  int remaining = threads;
  while (remaining > 0) {
    const uint64_t events_before = dev.events;
    std::shuffle(order.begin(), order.end(), order_rng);
    for (int t : order) {
      Fiber& f = dev.fibers[t];
      if (f.done) continue;
      dev.current = &f;
      set_thread_index(t);
      swapcontext(&dev.scheduler, &f.context);
      dev.current = nullptr;
      if (!dev.error.empty()) throw std::runtime_error("emulated device: " + dev.error);
      if (f.done) --remaining;
    }
    if (remaining > 0 && dev.events == events_before) {
      throw std::runtime_error("emulated device: deadlock (every live thread waits at a barrier that cannot complete)");
    }
  }
}

float round_to_float(double exact, Settings::MmaRounding rounding) {
  float r = static_cast<float>(exact);
  if (rounding == Settings::MmaRounding::kTruncate && std::fabs(static_cast<double>(r)) > std::fabs(exact)) {
    r = std::nextafter(r, 0.0f);
  }
  return r;
}

float tf32_value(uint32_t bits) { return __uint_as_float(bits & 0xffffe000u); }  // the MMA reads 19 bits
float bf16_value(uint32_t half) { return __uint_as_float((half & 0xffffu) << 16); }

// An IEEE binary16 (the low 16 bits) as a float, subnormals included.
float f16_value(uint32_t half) {
  const uint32_t sign = (half >> 15) & 1u, exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa == 0 ? INFINITY : NAN;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  return sign ? -magnitude : magnitude;
}

// The MMA of one warp: every lane publishes its fragments; each lane then forms its own four
// entries of d from the whole warp's. a_value(frag, row, k) and b_value(frag, k, col) read the
// matrices' entries out of the published fragments (the ISA's layouts).
struct Fragments {
  uint32_t a[4], b[2];
  float c[4];
};

template <int K, class AValue, class BValue>
void warp_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4], AValue a_value,
              BValue b_value) {
  Fragments mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  std::memcpy(mine.c, c, sizeof mine.c);
  Fragments all[32];
  warp_exchange(&mine, sizeof mine, all);
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  const Settings::MmaRounding rounding = device().settings.mma_rounding;
  // Accumulator layout (both shapes): c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1).
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    double sum = c[i];
    for (int k = 0; k < K; ++k) {
      sum += static_cast<double>(a_value(all, row, k)) * static_cast<double>(b_value(all, k, col));
    }
    d[i] = round_to_float(sum, rounding);
  }
}

}  // namespace

Settings& settings() { return device().settings; }
Counters& counters() { return device().counters; }

void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  Device& dev = device();
  if (dev.current != nullptr) throw std::runtime_error("emulated device: a launch from device code");
  if (shared_bytes != 0) throw std::runtime_error("emulated device: dynamic shared memory is not emulated");
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads < 1 || threads > 1024) throw std::runtime_error("emulated device: block of " + std::to_string(threads));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    throw std::runtime_error("emulated device: invalid grid");
  }
  ++dev.counters.launches;
  dev.body = &body;
  dev.error.clear();
  gridDim = grid;
  blockDim = block;
  std::mt19937_64 order_rng(dev.settings.schedule_seed);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        ++dev.counters.blocks;
        dev.counters.threads += threads;
        run_block(threads, order_rng);
      }
  dev.body = nullptr;
}

int lane_id() { return device().current->tid % 32; }

void block_barrier() {
  Device& dev = device();
  arrive_and_wait(dev.block_barrier, dev.block_live);
}

int block_barrier_or(int predicate) {
  Device& dev = device();
  const int set = static_cast<int>(dev.block_barrier.generation & 1);
  if (predicate != 0) dev.block_or[set] = 1;
  arrive_and_wait(dev.block_barrier, dev.block_live);
  return dev.block_or[set];
}

void warp_barrier() {
  Warp& w = warp_of(*device().current);
  arrive_and_wait(w.barrier, w.live);
}

void warp_exchange(const void* mine, size_t bytes, void* all) {
  if (bytes > kSlotBytes) fail("warp_exchange of more than 64 bytes");
  Warp& w = warp_of(*device().current);
  const int set = static_cast<int>(w.barrier.generation & 1);
  std::memcpy(w.slots[set][lane_id()], mine, bytes);
  warp_barrier();
  for (int l = 0; l < 32; ++l) std::memcpy(static_cast<unsigned char*>(all) + l * bytes, w.slots[set][l], bytes);
}

// m16n8k8 .tf32 (PTX ISA, "Matrix Fragments for mma.m16n8k8" with .tf32): lane = 4 groupID +
// threadID_in_group (g, t); a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4);
// b0 (k = t, col = g), b1 (k = t + 4, col = g).
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  ++device().counters.mma_tf32;
  warp_mma<8>(
      d, a, b, c,
      [](const Fragments* all, int row, int k) {
        return tf32_value(all[4 * (row & 7) + (k & 3)].a[(row >> 3) + 2 * (k >> 2)]);
      },
      [](const Fragments* all, int k, int col) { return tf32_value(all[4 * col + (k & 3)].b[k >> 2]); });
}

// m16n8k16 .bf16 and .f16: each register holds two 16-bit values, the lower k in the lower half;
// a0 (g, 2t..2t+1), a1 (g + 8, 2t..2t+1), a2 (g, 2t+8..2t+9), a3 (g + 8, 2t+8..2t+9);
// b0 (k = 2t..2t+1, col = g), b1 (k = 2t+8..2t+9, col = g).
template <class Value>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4], Value value) {
  warp_mma<16>(
      d, a, b, c,
      [&](const Fragments* all, int row, int k) {
        const uint32_t reg = all[4 * (row & 7) + ((k & 7) >> 1)].a[(row >> 3) + 2 * (k >> 3)];
        return value(reg >> (16 * (k & 1)));
      },
      [&](const Fragments* all, int k, int col) {
        const uint32_t reg = all[4 * col + ((k & 7) >> 1)].b[k >> 3];
        return value(reg >> (16 * (k & 1)));
      });
}

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  ++device().counters.mma_bf16;
  mma_m16n8k16(d, a, b, c, bf16_value);
}

void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  ++device().counters.mma_f16;
  mma_m16n8k16(d, a, b, c, f16_value);
}

uint32_t cvt_rn_bf16x2_f32(float a, float b) {
  auto to_bf16 = [](float v) -> uint32_t {
    const uint32_t u = __float_as_uint(v);
    if (std::isnan(v)) return 0x7fffu;  // the canonical NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // to nearest, ties to even
  };
  return (to_bf16(a) << 16) | to_bf16(b);
}

// v as IEEE binary16 bits, rounded to nearest even, subnormals included; past the largest finite
// half (65504; 65520 and up round away) to infinity.
uint32_t to_f16(float v) {
  const uint32_t sign = (__float_as_uint(v) >> 16) & 0x8000u;
  const float a = std::fabs(v);
  if (std::isnan(v)) return sign | 0x7e00u;
  if (a >= 65520.0f) return sign | 0x7c00u;
  if (a < 0x1p-14f) return sign | static_cast<uint32_t>(std::nearbyint(a * 0x1p24f));  // 1024 is 2^-14, encoded right
  int e;
  std::frexp(a, &e);  // a = f 2^e, f in [0.5, 1): the half's exponent is e - 1
  uint32_t q = static_cast<uint32_t>(std::nearbyint(std::ldexp(a, 11 - e)));  // in [1024, 2048]
  int biased = e - 1 + 15;
  if (q == 2048u) {
    q = 1024u;
    ++biased;
  }
  if (biased >= 31) return sign | 0x7c00u;
  return sign | (static_cast<uint32_t>(biased) << 10) | (q - 1024u);
}

uint32_t cvt_rn_f16x2_f32(float a, float b) { return (to_f16(a) << 16) | to_f16(b); }

float cvt_f32_f16(uint32_t a) { return f16_value(a & 0xffffu); }

float ex2_approx_ftz(float v) {
  if (std::fpclassify(v) == FP_SUBNORMAL) v = 0.0f;
  float r = std::exp2(v);
  Device& dev = device();
  if (dev.settings.ex2_error && std::isfinite(r)) {
    // A deterministic stream (splitmix64 of a counter): runs repeat bit for bit.
    uint64_t z = ++dev.ex2_calls * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double e = (static_cast<double>(z >> 11) * 0x1p-53 * 2.0 - 1.0) * 0x1p-22;
    r = static_cast<float>(static_cast<double>(r) * (1.0 + e));
  }
  return std::fpclassify(r) == FP_SUBNORMAL ? 0.0f : r;
}

void check_aligned(const void* p, int bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) != 0) fail(what);
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  Device& dev = device();
  Fiber& f = *dev.current;
  ++dev.counters.async_copies;
  if (reinterpret_cast<uintptr_t>(dst) % static_cast<uintptr_t>(bytes) != 0) fail("misaligned cp.async destination");
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(bytes) != 0) {
    fail("misaligned cp.async source");
  }
  if (src_bytes < 0 || src_bytes > bytes) fail("cp.async src-size outside [0, cp-size]");
  const AsyncCopy copy{dst, src, bytes, src_bytes, f.commits};
  if (dev.settings.copies == Settings::Copies::kAtIssue) {
    apply(copy);
  } else {
    const float nan = std::nanf("");
    for (int i = 0; i < bytes / 4; ++i) std::memcpy(static_cast<unsigned char*>(dst) + 4 * i, &nan, 4);
  }
  f.copies.push_back(copy);
}

void cp_async_commit_group() { ++device().current->commits; }

void cp_async_wait_group(int pending) {
  Device& dev = device();
  Fiber& f = *dev.current;
  // Groups [0, commits - pending) must have landed; copies not yet committed are not waited for.
  const int64_t landed = f.commits - pending;
  std::vector<AsyncCopy> still;
  for (const AsyncCopy& c : f.copies) {
    if (c.group < landed) {
      if (dev.settings.copies == Settings::Copies::kPoisonUntilWait) apply(c);
    } else {
      still.push_back(c);
    }
  }
  f.copies.swap(still);
}

}  // namespace ot_flow::emulation
