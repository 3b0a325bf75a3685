// The tensor-core engine's own sources (csrc/ops/cuda/engine), host code and kernels, run on the
// CPU emulation of the device (device_emulation.h) against float64 references: every precision
// mode of lse, barycentric, gumbel_argmax and mips, at sizes that are not multiples of any tile,
// 16-byte and 4-byte staging, one column chunk and several (merged), batches of problems.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "device_emulation.h"
#include "ops/cuda/engine/engine.h"
#include "ops/cuda/engine/launch.cuh"
#include "ops/cuda/engine/streamed_operands.h"
#include "ops/gumbel_noise.h"

namespace ot_flow::cuda::engine {
namespace {

using emulation::Settings;

const char* name(DotMode mode) {
  switch (mode) {
    case DotMode::kSplitTF32:
      return "highest (split tf32)";
    case DotMode::kSplitF16:
      return "highest (split f16)";
    case DotMode::kTF32:
      return "tf32";
    case DotMode::kBF16:
      break;
  }
  return "bf16";
}

bool splits(DotMode mode) { return mode == DotMode::kSplitTF32 || mode == DotMode::kSplitF16; }

// x as the mode's MMA operand sees it, in float64: TF32 rounds to nearest (ties away, as the
// engine's to_tf32), bfloat16 to nearest even; split TF32 keeps float32.
at::Tensor as_operand(const at::Tensor& x, DotMode mode) {
  at::Tensor bits = x.contiguous().view(at::kInt);
  if (mode == DotMode::kTF32) {
    bits = at::bitwise_and(bits + 0x1000, static_cast<int32_t>(0xffffe000u));
  } else if (mode == DotMode::kBF16) {
    const at::Tensor odd = at::bitwise_and(at::bitwise_right_shift(bits, 16), 1);
    bits = at::bitwise_and(bits + 0x7fff + odd, static_cast<int32_t>(0xffff0000u));
  }
  return bits.view(at::kFloat).to(at::kDouble);
}

// Scores scale <x_i, y_j> + h_j in float64 from the operands as the mode rounds them.
at::Tensor logits(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale, DotMode mode) {
  return at::matmul(as_operand(x, mode), as_operand(y, mode).t()) * scale + h.to(at::kDouble);
}

struct Shape {
  int64_t n, m, d;
};

// Sizes that are not multiples of a 64 x 64 tile or a slice of 8 / 16, d from 1 to past two
// slices (and past two packed slices of 32 words, 64 bfloat16 values: d = 97), one row and
// many; d % 4 == 0 takes the 16-byte copies, the others 4-byte copies.
const std::vector<Shape> kShapes = {{1, 1, 1},     {3, 5, 2},     {67, 131, 7}, {64, 64, 8},
                                    {70, 200, 17}, {33, 129, 64}, {130, 70, 12}, {37, 150, 97}};
const DotMode kModes[] = {DotMode::kSplitTF32, DotMode::kTF32, DotMode::kBF16, DotMode::kSplitF16};

class EngineEmulated : public ::testing::Test {
 protected:
  void SetUp() override {
    emulation::settings() = Settings{};
    emulation::counters() = emulation::Counters{};
    at::manual_seed(7);
  }
  // One column chunk (a GPU of one multiprocessor) and many (132: the chunks' partials merged).
  static constexpr int kMultiprocessors[] = {1, 132};
};

// lse of a fresh random problem of shape s in `mode` on `sms` multiprocessors, against the
// operands as the mode rounds them (float32 sums and exp2 remain), and the exact answer within
// the mode's documented error.
void expect_lse_matches_float64(const Shape& s, DotMode mode, int sms) {
  emulation::settings().multiprocessors = sms;
  const at::Tensor x = at::randn({s.n, s.d}), y = at::randn({s.m, s.d}), h = at::randn({s.m});
  const double scale = 0.7;
  const at::Tensor out = lse_tensor_cores(x, y, h, scale, mode).to(at::kDouble);
  const at::Tensor rounded = at::logsumexp(logits(x, y, h, scale, mode), 1);
  const at::Tensor exact = at::logsumexp(logits(x, y, h, scale, DotMode::kSplitTF32), 1);
  const double tol = 2e-6 * (1.0 + exact.abs().max().item<double>());
  const std::string where = std::string(name(mode)) + " n=" + std::to_string(s.n) + " m=" + std::to_string(s.m) +
                            " d=" + std::to_string(s.d) + " sms=" + std::to_string(sms);
  EXPECT_LE((out - rounded).abs().max().item<double>(), tol) << where;
  const double mode_error = splits(mode) ? 0.0 : (mode == DotMode::kTF32 ? 2e-3 : 2e-2);
  EXPECT_LE((out - exact).abs().max().item<double>(), tol + mode_error * std::sqrt(s.d)) << where;
}

// Sets environment variable `name` to `value` (nullptr: unset) for the object's lifetime, then
// restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* saved = std::getenv(name);
    had_value_ = saved != nullptr;
    if (had_value_) saved_ = saved;
    set(value);
  }
  ~ScopedEnv() { set(had_value_ ? saved_.c_str() : nullptr); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  void set(const char* value) const {
    if (value == nullptr) {
      unsetenv(name_);
    } else {
      setenv(name_, value, 1);
    }
  }

 private:
  const char* name_;
  std::string saved_;
  bool had_value_ = false;
};

TEST_F(EngineEmulated, LseMatchesFloat64InEveryMode) {
  for (const Shape& s : kShapes)
    for (DotMode mode : kModes)
      for (int sms : kMultiprocessors) expect_lse_matches_float64(s, mode, sms);
  EXPECT_GT(emulation::counters().mma_tf32, 0);
  EXPECT_GT(emulation::counters().mma_bf16, 0);
  EXPECT_GT(emulation::counters().mma_f16, 0);
}

// lse in 128-row blocks of 8 warps (OT_FLOW_ENGINE_BLOCK_ROWS=128, kernel_traits.cuh): split
// TF32, TF32 and bfloat16 where d > 8, split float16 where d > 16 (more than one 16-word slice of
// packed words; in 16-word slices); rows ending inside a block's first or second half, one to
// three blocks, both copy widths.
TEST_F(EngineEmulated, LseInTallBlocksMatchesFloat64) {
  const ScopedEnv tall("OT_FLOW_ENGINE_BLOCK_ROWS", "128");
  const std::vector<Shape> shapes = {{1, 1, 9}, {127, 70, 17}, {129, 131, 64}, {300, 200, 12}, {200, 65, 33}, {90, 3, 5}};
  for (const Shape& s : shapes)
    for (DotMode mode : kModes)
      for (int sms : kMultiprocessors) expect_lse_matches_float64(s, mode, sms);
  // 300 rows on a 1-multiprocessor device (no column chunks, no merge): three 128-row blocks of
  // 256 threads where the switch says so, else five 64-row blocks of 128; the warps' MMAs cover
  // 384 rows instead of 320 (6 : 5). Split float16 (d = 64 values: four 16-word slices or two
  // of 32, the same MMAs a row) is counted by its MMAs: its packing kernels launch blocks too.
  for (DotMode mode : {DotMode::kSplitTF32, DotMode::kSplitF16}) {
    int64_t mmas[3];
    const char* settings[3] = {nullptr, "64", "128"};
    for (int i = 0; i < 3; ++i) {
      tall.set(settings[i]);
      emulation::counters() = emulation::Counters{};
      expect_lse_matches_float64({300, 200, mode == DotMode::kSplitF16 ? 64 : 12}, mode, 1);
      const emulation::Counters& c = emulation::counters();
      mmas[i] = c.mma_tf32 + c.mma_f16;
      if (mode == DotMode::kSplitTF32) {
        EXPECT_EQ(c.blocks, i == 2 ? 3 : 5) << (settings[i] ? settings[i] : "unset");
        EXPECT_EQ(c.threads, i == 2 ? 3 * 256 : 5 * 128) << (settings[i] ? settings[i] : "unset");
      }
    }
    EXPECT_EQ(mmas[0], mmas[1]) << name(mode);
    EXPECT_EQ(5 * mmas[2], 6 * mmas[1]) << name(mode);
  }
  tall.set("96");
  EXPECT_THROW(expect_lse_matches_float64({300, 200, 12}, DotMode::kSplitTF32, 1), c10::ValueError);
}

// The packing kernel against the same packing by ATen's own float16 conversion: bit for bit,
// on values whose lo parts are subnormal halves, d not a multiple of 16, several problems; x's
// words in k order, y's in lane order (streamed_operands.h).
TEST_F(EngineEmulated, SplitF16PackingIsAtensFloat16Conversion) {
  at::Tensor x = at::randn({3, 37, 21}) * at::pow(10.0, at::rand({3, 37, 21}) * 8 - 4);
  x[2].zero_();  // an all-zero problem keeps scale 1
  const at::Tensor y = at::randn({3, 5, 21}) * at::pow(10.0, at::rand({3, 5, 21}) * 8 - 4);
  const SplitF16Operands split = split_f16_operands(x, y);
  ASSERT_EQ(split.d_pad, 32);
  // t's halves, scaled as the kernel scales them, as (rows, 2 slices, 2 q, 4 t, 2) pairs w = 4 q + t
  // (k = 2w, 2w + 1) of hi and lo; the exponent of the scale.
  auto split_pairs = [](const at::Tensor& t) {
    const float amax = t.abs().max().item<float>();
    int e = 0;
    std::frexp(amax, &e);
    const int exponent = amax > 0 ? 15 - e : 0;
    const at::Tensor scaled = t * std::ldexp(1.0, exponent);
    EXPECT_LT(scaled.abs().max().item<float>(), 32768.0f);
    const at::Tensor hi = scaled.to(at::kHalf), lo = (scaled - hi.to(at::kFloat)).to(at::kHalf);
    auto pairs = [&](const at::Tensor& h) { return at::constant_pad_nd(h, {0, 11}).view({t.size(0), 2, 2, 4, 2}); };
    return std::make_tuple(pairs(hi), pairs(lo), exponent);
  };
  for (int64_t b = 0; b < 3; ++b) {
    const auto [x_hi, x_lo, x_exponent] = split_pairs(x[b]);
    // x: per slice the hi pairs w = 0..7, then the lo pairs.
    const at::Tensor x_expected = at::stack({x_hi, x_lo}, 2).contiguous().view(at::kFloat).view({37, 32});
    EXPECT_TRUE(at::equal(split.x[b].view(at::kInt), x_expected.view(at::kInt))) << "x, problem " << b;
    const auto [y_hi, y_lo, y_exponent] = split_pairs(y[b]);
    // y: per slice, for t = 0..3, hi pairs t and t + 4 then lo pairs t and t + 4: order (t, hi/lo, q).
    const at::Tensor y_expected =
        at::stack({y_hi, y_lo}, 2).permute({0, 1, 4, 2, 3, 5}).contiguous().view(at::kFloat).view({5, 32});
    EXPECT_TRUE(at::equal(split.y[b].view(at::kInt), y_expected.view(at::kInt))) << "y, problem " << b;
    EXPECT_EQ(split.scale_exponent[b].item<int>(), x_exponent + y_exponent) << b;
  }
}

// The bfloat16 packing against ATen's own bfloat16 conversion (round to nearest even), bit for
// bit: d not a multiple of 32, several problems, values around bfloat16's rounding ties; x's
// words in k order, y's in lane order (streamed_operands.h).
TEST_F(EngineEmulated, BF16PackingIsAtensBFloat16Conversion) {
  at::Tensor x = at::randn({3, 37, 45}), y = at::randn({3, 5, 45});
  // Exact ties between two bfloat16 values: their float32 halfway points.
  x[1] = (x[1].to(at::kBFloat16).to(at::kFloat).view(at::kInt) | 0x8000).view(at::kFloat);
  const StreamedOperands packed = streamed_operands(x, y, DotMode::kBF16);
  ASSERT_EQ(packed.d, 32);  // two slices of 16 words (64 values)
  ASSERT_FALSE(packed.scale_exponent.defined());
  // t's values in bfloat16, zero past d, as (rows, 2 slices, 2 eights, 2 q, 4 t, 2): pair
  // w = 4 q + t of each eight (values 16 e + 2w, 16 e + 2w + 1 of the slice).
  auto pairs = [](const at::Tensor& t) {
    return at::constant_pad_nd(t.to(at::kBFloat16), {0, 64 - t.size(1)}).view({t.size(0), 2, 2, 2, 4, 2});
  };
  for (int64_t b = 0; b < 3; ++b) {
    // x: per slice the first eight's pairs w = 0..7, then the next eight's.
    const at::Tensor x_expected = pairs(x[b]).contiguous().view(at::kFloat).view({37, 32});
    EXPECT_TRUE(at::equal(packed.x[b].view(at::kInt), x_expected.view(at::kInt))) << "x, problem " << b;
    // y: per slice, for t = 0..3, the first eight's pairs t and t + 4, then the next eight's.
    const at::Tensor y_expected = pairs(y[b]).permute({0, 1, 4, 2, 3, 5}).contiguous().view(at::kFloat).view({5, 32});
    EXPECT_TRUE(at::equal(packed.y[b].view(at::kInt), y_expected.view(at::kInt))) << "y, problem " << b;
  }
}

// Split float16 scales each problem by its own power of two: problems of very different
// magnitudes in one batch, rows whose norms span nine orders (their small coordinates fall in
// float16's subnormal range), and magnitudes far outside float16's, all float32-accurate.
TEST_F(EngineEmulated, LseSplitF16AcrossMagnitudes) {
  for (int sms : kMultiprocessors) {
    emulation::settings().multiprocessors = sms;
    at::Tensor x = at::randn({3, 70, 24}), y = at::randn({3, 90, 24});
    x[0] *= 1e-3;
    y[0] *= 1e-2;
    x[1] *= at::pow(10.0, at::rand({70, 1}) * 9 - 6);  // row norms from 1e-6 to 1e3
    x[2] *= 1e18;
    y[2] *= 1e17;
    const at::Tensor h = at::randn({3, 90});
    const std::vector<double> scales = {30.0, 0.5, 1e-35};
    const at::Tensor out = lse_tensor_cores_batched(x, y, h, scales, DotMode::kSplitF16).to(at::kDouble);
    for (int b = 0; b < 3; ++b) {
      const at::Tensor exact = at::logsumexp(logits(x[b], y[b], h[b], scales[b], DotMode::kSplitTF32), 1);
      EXPECT_LE((out[b] - exact).abs().max().item<double>(), 2e-6 * (1.0 + exact.abs().max().item<double>()))
          << "problem " << b << " sms " << sms;
    }
  }
}

// The 16-byte staging needs every row on a 16-byte boundary: a base one float past an aligned
// address, with d % 4 == 0, must take the 4-byte copies and still be right (a 16-byte cp.async
// from there would fault; the emulation reports it).
TEST_F(EngineEmulated, LseOfMisalignedRows) {
  const at::Tensor xs = at::randn({70 * 16 + 1}), ys = at::randn({90 * 16 + 1}), h = at::randn({90});
  const at::Tensor x = xs.narrow(0, 1, 70 * 16).view({70, 16}), y = ys.narrow(0, 1, 90 * 16).view({90, 16});
  const at::Tensor out = lse_tensor_cores(x, y, h, 1.3, DotMode::kSplitTF32).to(at::kDouble);
  const at::Tensor exact = at::logsumexp(logits(x, y, h, 1.3, DotMode::kSplitTF32), 1);
  EXPECT_LE((out - exact).abs().max().item<double>(), 2e-6 * (1.0 + exact.abs().max().item<double>()));
}

// Copies that land at issue (no poison) give the same bits: the poisoned run read nothing early.
TEST_F(EngineEmulated, LseIndependentOfWhenCopiesLandAndOfTheSchedule) {
  emulation::settings().ex2_error = false;  // its stream follows the order of the calls
  const at::Tensor x = at::randn({70, 20}), y = at::randn({300, 20}), h = at::randn({300});
  const at::Tensor first = lse_tensor_cores(x, y, h, 0.5, DotMode::kSplitTF32);
  emulation::settings().copies = Settings::Copies::kAtIssue;
  emulation::settings().schedule_seed = 12345;
  const at::Tensor second = lse_tensor_cores(x, y, h, 0.5, DotMode::kSplitTF32);
  EXPECT_TRUE(at::equal(first, second));
}

// The same results, within the float32 noise, when the MMAs round to nearest and ex2 is exact:
// the tests' tolerances hold for the pessimistic hardware model and the ideal one alike.
TEST_F(EngineEmulated, IdealRoundingAgreesWithTheHardwareModel) {
  const at::Tensor x = at::randn({70, 40}), y = at::randn({300, 40}), h = at::randn({300});
  for (DotMode mode : kModes) {
    emulation::settings() = Settings{};
    const at::Tensor modelled = lse_tensor_cores(x, y, h, 0.5, mode);
    emulation::settings().mma_rounding = Settings::MmaRounding::kNearest;
    emulation::settings().ex2_error = false;
    const at::Tensor ideal = lse_tensor_cores(x, y, h, 0.5, mode);
    EXPECT_TRUE(at::allclose(modelled, ideal, 1e-6, 1e-6)) << name(mode);
  }
}

// "highest" stays float32-accurate at large d even though every tensor-core sum truncates (the
// emulation's default; stream_loop.cuh's RoundedSlices).
TEST_F(EngineEmulated, LseHighestUnderTruncatingMmasAtLargeD) {
  const at::Tensor x = at::randn({20, 1000}) * 0.05 + 0.05, y = at::randn({96, 1000}) * 0.05 + 0.05;
  const at::Tensor h = at::randn({96});
  const at::Tensor exact = at::logsumexp(logits(x, y, h, 3.0, DotMode::kSplitTF32), 1);
  for (DotMode mode : {DotMode::kSplitTF32, DotMode::kSplitF16}) {
    const at::Tensor out = lse_tensor_cores(x, y, h, 3.0, mode).to(at::kDouble);
    EXPECT_LE((out - exact).abs().max().item<double>(), 2e-6 * (1.0 + exact.abs().max().item<double>())) << name(mode);
  }
}

// Problems of a batch, each with its own scale, against each alone.
TEST_F(EngineEmulated, LseBatchedEqualsEachProblemAlone) {
  for (int sms : kMultiprocessors) {
    emulation::settings().multiprocessors = sms;
    const at::Tensor x = at::randn({3, 50, 9}), y = at::randn({3, 77, 9}), h = at::randn({3, 77});
    const std::vector<double> scales = {0.5, 1.0, 2.0};
    const at::Tensor batched = lse_tensor_cores_batched(x, y, h, scales, DotMode::kSplitTF32);
    for (int b = 0; b < 3; ++b) {
      const at::Tensor alone = lse_tensor_cores(x[b], y[b], h[b], scales[b], DotMode::kSplitTF32);
      // The batch plans its column chunks for all its rows: sums may run in another order.
      EXPECT_TRUE(at::allclose(batched[b], alone, 1e-6, 1e-6)) << "problem " << b << " sms " << sms;
    }
  }
}

// More problems than one launch takes (launch.cuh's BatchedLaunches: 256 a launch): the
// launches after the first read their own problems' operands, scales and keys, and write their
// own rows. Each problem against itself alone (a launch that read or wrote another problem's
// data would differ: the problems are independent random draws).
TEST_F(EngineEmulated, BatchesOfSeveralLaunchesEqualEachProblemAlone) {
  emulation::settings().multiprocessors = 1;  // one column chunk: one block a problem
  const int64_t problems = 300;
  const at::Tensor x = at::randn({problems, 3, 2}), y = at::randn({problems, 5, 2}), h = at::randn({problems, 5});
  const at::Tensor values = at::randn({problems, 5, 3});
  std::vector<double> scales;
  std::vector<GumbelKey> keys;
  for (int64_t b = 0; b < problems; ++b) {
    scales.push_back(0.5 + 0.01 * static_cast<double>(b));
    keys.push_back(GumbelKey{1000 + b, 3, 0, 0});
  }
  const int64_t launches_before = emulation::counters().launches;
  const at::Tensor lse = lse_tensor_cores_batched(x, y, h, scales, DotMode::kSplitTF32);
  EXPECT_EQ(emulation::counters().launches - launches_before, 2) << "300 problems: two launches of the lse kernel";
  const auto [mean, lse_of_mean] = barycentric_tensor_cores_batched(x, y, h, scales, values, DotMode::kSplitTF32);
  const auto [index, value] = gumbel_argmax_tensor_cores_batched(x, y, h, scales, keys, DotMode::kSplitTF32);
  for (int64_t b = 0; b < problems; ++b) {
    const at::Tensor alone = lse_tensor_cores(x[b], y[b], h[b], scales[b], DotMode::kSplitTF32);
    ASSERT_TRUE(at::allclose(lse[b], alone, 1e-6, 1e-6)) << "lse, problem " << b;
    const auto [mean_b, lse_b] =
        barycentric_tensor_cores(x[b], y[b], h[b], scales[b], values[b], DotMode::kSplitTF32);
    ASSERT_TRUE(at::allclose(mean[b], mean_b, 1e-5, 1e-5)) << "barycentric, problem " << b;
    ASSERT_TRUE(at::allclose(lse_of_mean[b], lse_b, 1e-6, 1e-6)) << "barycentric lse, problem " << b;
    const auto [index_b, value_b] = gumbel_argmax_tensor_cores(x[b], y[b], h[b], scales[b], keys[b], DotMode::kSplitTF32);
    ASSERT_TRUE(at::equal(index[b], index_b)) << "gumbel_argmax, problem " << b;
    ASSERT_TRUE(at::allclose(value[b], value_b, 1e-6, 1e-6)) << "gumbel_argmax value, problem " << b;
  }
}

// The cut of a batch into launches: every problem in exactly one launch, in order; at most 256
// problems a launch, and fewer where each problem takes several blocks of grid z (barycentric's
// value blocks), so that grid z stays within CUDA's 65,535; a problem that alone needs more
// blocks than that is refused.
TEST_F(EngineEmulated, BatchedLaunchesCoverEveryProblemOnceWithinGridZ) {
  using Traits = KernelTraits<DotMode::kSplitTF32, 16>;
  for (const auto& [problems, z_per_problem] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {256, 1}, {257, 1}, {600, 1}, {600, 300}, {5, 65535}}) {
    const BatchedLaunches launches = plan_batched_launches<Traits, 4>("test", problems, 100, 70, z_per_problem);
    EXPECT_EQ(launches.plan.row_blocks, 2);
    int64_t next = 0, calls = 0;
    launches.for_each([&](int64_t first, int64_t count, dim3 grid) {
      EXPECT_EQ(first, next);
      EXPECT_GE(count, 1);
      EXPECT_LE(count, ProblemBatch::kMaxProblems);
      EXPECT_EQ(static_cast<int64_t>(grid.z), count * z_per_problem);
      EXPECT_LE(static_cast<int64_t>(grid.z), kMaxGridZ);
      EXPECT_EQ(grid.x, 2u);
      EXPECT_EQ(static_cast<int64_t>(grid.y), launches.plan.chunks);
      next = first + count;
      ++calls;
    });
    EXPECT_EQ(next, problems) << problems << " problems x " << z_per_problem;
    const int64_t per_launch = std::min<int64_t>(256, kMaxGridZ / z_per_problem);
    EXPECT_EQ(calls, (problems + per_launch - 1) / per_launch) << problems << " problems x " << z_per_problem;
  }
  EXPECT_THROW((plan_batched_launches<Traits, 4>("test", 1, 100, 70, kMaxGridZ + 1)), c10::Error);
}

// The engine's column split (chunk_plan.cuh): row blocks x chunks within one wave of the slots
// (or one chunk where the row blocks alone pass it), chunks of whole tiles that cover the columns
// with none empty; #17's 4,096 queries in four chunks of 264 slots (five were 1.2 waves), #16's
// n = 16,384 in 128-row blocks in two.
TEST(ChunkPlan, EngineChunksFillAtMostOneWave) {
  EXPECT_EQ(plan_chunks_in_one_wave(4096, 1'000'000, 264, 64, 64).chunks, 4);
  EXPECT_EQ(plan_chunks_in_one_wave(16384, 16384, 264, 128, 64).chunks, 2);
  EXPECT_EQ(plan_chunks_in_one_wave(16384, 16384, 528, 64, 64).chunks, 2);
  EXPECT_EQ(plan_chunks_in_one_wave(65536, 65536, 528, 64, 64).chunks, 1);
  EXPECT_EQ(plan_chunks_in_one_wave(1, 100, 528, 64, 64).chunks, 2);  // two column tiles
  for (int64_t n : {1, 63, 64, 65, 1000, 4096, 20'000, 65'536, 300'000})
    for (int64_t m : {1, 64, 65, 1000, 4099, 1'000'000})
      for (int64_t slots : {2, 4, 264, 528})
        for (int64_t rows : {64, 128}) {
          const ChunkPlan plan = plan_chunks_in_one_wave(n, m, slots, rows, 64);
          const std::string where = "n=" + std::to_string(n) + " m=" + std::to_string(m) +
                                    " slots=" + std::to_string(slots) + " rows=" + std::to_string(rows);
          EXPECT_EQ(plan.row_blocks, (n + rows - 1) / rows) << where;
          EXPECT_GE(plan.chunks, 1) << where;
          EXPECT_LE(plan.row_blocks * plan.chunks, std::max(plan.row_blocks, slots)) << where;
          EXPECT_EQ(plan.cols_per_chunk % 64, 0) << where;
          EXPECT_LT((plan.chunks - 1) * plan.cols_per_chunk, m) << where << ": an empty chunk";
          EXPECT_GE(plan.chunks * plan.cols_per_chunk, m) << where << ": columns left out";
          // At least half of what one wave and the column tiles allow.
          const int64_t allowed = std::min(std::max<int64_t>(1, slots / plan.row_blocks), (m + 63) / 64);
          EXPECT_GE(2 * plan.chunks, allowed) << where;
        }
}

// A bias of -inf drops a column; a row with every column dropped has lse -inf.
TEST_F(EngineEmulated, LseDroppedColumns) {
  const at::Tensor x = at::randn({10, 5}), y = at::randn({70, 5});
  at::Tensor h = at::randn({70});
  h.narrow(0, 3, 40).fill_(-std::numeric_limits<float>::infinity());
  const at::Tensor out = lse_tensor_cores(x, y, h, 1.0, DotMode::kSplitTF32).to(at::kDouble);
  const at::Tensor exact = at::logsumexp(logits(x, y, h, 1.0, DotMode::kSplitTF32), 1);
  EXPECT_LE((out - exact).abs().max().item<double>(), 1e-5);
  const at::Tensor none = at::full({70}, -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(at::all(at::isneginf(lse_tensor_cores(x, y, none, 1.0, DotMode::kSplitTF32))).item<bool>());
}

TEST_F(EngineEmulated, BarycentricMatchesFloat64InEveryMode) {
  const std::vector<std::tuple<Shape, int64_t>> cases = {
      {{1, 1, 1}, 1}, {{67, 131, 7}, 3}, {{70, 200, 17}, 16}, {{33, 129, 64}, 17}, {{40, 90, 12}, 70}};
  for (const auto& [s, k] : cases)
    for (DotMode mode : kModes)
      for (int sms : kMultiprocessors) {
        emulation::settings().multiprocessors = sms;
        const at::Tensor x = at::randn({s.n, s.d}), y = at::randn({s.m, s.d}), h = at::randn({s.m});
        const at::Tensor values = at::randn({s.m, k}) + 1.0;
        const auto [mean, lse] = barycentric_tensor_cores(x, y, h, 0.8, values, mode);
        const at::Tensor l = logits(x, y, h, 0.8, mode);
        const at::Tensor ref_lse = at::logsumexp(l, 1);
        const at::Tensor ref_mean = at::matmul(at::softmax(l, 1), values.to(at::kDouble));
        const std::string where = std::string(name(mode)) + " n=" + std::to_string(s.n) + " m=" + std::to_string(s.m) +
                                  " d=" + std::to_string(s.d) + " k=" + std::to_string(k) + " sms=" + std::to_string(sms);
        // In tf32 and bf16 the weights and values are MMA operands too, rounded to the mode's
        // unit u: the normaliser sums the rounded weights (lse moves by <= u) and the mean moves
        // by <= 2 u max|v|. (Emulated: tf32 0.3 u, bf16 0.25 u at most.)
        const double u = splits(mode) ? 0.0 : (mode == DotMode::kTF32 ? 0x1p-11 : 0x1p-8);
        const double vmax = values.abs().max().item<double>();
        EXPECT_LE((lse.to(at::kDouble) - ref_lse).abs().max().item<double>(),
                  2e-6 * (1.0 + ref_lse.abs().max().item<double>()) + u)
            << where;
        EXPECT_LE((mean.to(at::kDouble) - ref_mean).abs().max().item<double>(),
                  4e-6 * (1.0 + ref_mean.abs().max().item<double>()) + 2 * u * vmax)
            << where;
      }
}

// Scores in the thousands (a cold eps): the weights are 2^(v log2 e - max) with the running max
// in log2 units, and only a max that tracks the scores keeps them from overflowing float32
// (2^128); the lse and the mean still within float32 accuracy of float64.
TEST_F(EngineEmulated, BarycentricOfLargeScores) {
  for (DotMode mode : {DotMode::kSplitTF32, DotMode::kSplitF16}) {
    const at::Tensor x = at::randn({45, 9}), y = at::randn({150, 9}), h = at::randn({150}) * 300.0;
    const at::Tensor values = at::randn({150, 5});
    const auto [mean, lse] = barycentric_tensor_cores(x, y, h, 400.0, values, mode);
    const at::Tensor l = logits(x, y, h, 400.0, DotMode::kSplitTF32);
    const at::Tensor ref_lse = at::logsumexp(l, 1);
    ASSERT_GT(ref_lse.abs().max().item<double>(), 500.0);
    EXPECT_LE((lse.to(at::kDouble) - ref_lse).abs().max().item<double>(),
              2e-6 * (1.0 + ref_lse.abs().max().item<double>()))
        << name(mode);
    // A relative error e of the scores moves each weight by e |v|: the mean within 2e-6 |v| max|values|.
    const at::Tensor ref_mean = at::matmul(at::softmax(l, 1), values.to(at::kDouble));
    EXPECT_LE((mean.to(at::kDouble) - ref_mean).abs().max().item<double>(),
              2e-6 * l.abs().max().item<double>() * values.abs().max().item<double>())
        << name(mode);
  }
}

TEST_F(EngineEmulated, BarycentricBatchedEqualsEachProblemAlone) {
  emulation::settings().multiprocessors = 132;
  const at::Tensor x = at::randn({2, 40, 6}), y = at::randn({2, 150, 6}), h = at::randn({2, 150});
  const at::Tensor values = at::randn({2, 150, 20});
  const std::vector<double> scales = {0.6, 1.4};
  const auto [mean, lse] = barycentric_tensor_cores_batched(x, y, h, scales, values, DotMode::kSplitTF32);
  for (int b = 0; b < 2; ++b) {
    const auto [mean_b, lse_b] = barycentric_tensor_cores(x[b], y[b], h[b], scales[b], values[b], DotMode::kSplitTF32);
    // The batch plans its column chunks for all its rows, and ex2's modelled error differs per
    // call: the sums may differ in their last bits.
    EXPECT_LE((mean[b] - mean_b).abs().max().item<float>(), 1e-5f) << b;
    EXPECT_LE((lse[b] - lse_b).abs().max().item<float>(), 2e-6f * (1.0f + lse_b.abs().max().item<float>())) << b;
  }
}

// The Gumbel-max draw: the argmax of the float64 perturbed logits wherever the best and the
// second best are further apart than the mode's error could move them.
TEST_F(EngineEmulated, GumbelArgmaxMatchesFloat64InEveryMode) {
  for (const Shape& s : kShapes)
    for (DotMode mode : kModes)
      for (int sms : kMultiprocessors) {
        emulation::settings().multiprocessors = sms;
        const at::Tensor x = at::randn({s.n, s.d}), y = at::randn({s.m, s.d}), h = at::randn({s.m});
        const double scale = 1.5;
        const GumbelKey key{1234, 5, 11, 3};
        const auto [index, value] = gumbel_argmax_tensor_cores(x, y, h, scale, key, mode);
        const at::Tensor l = logits(x, y, h, scale, mode);
        const NoiseKey noise = noise_key(static_cast<uint64_t>(key.seed), static_cast<uint64_t>(key.offset));
        const auto la = l.accessor<double, 2>();
        int64_t checked = 0;
        for (int64_t i = 0; i < s.n; ++i) {
          GumbelRow row(noise, static_cast<uint64_t>(key.row_offset + i));
          double best = -INFINITY, second = -INFINITY;
          int64_t best_j = -1;
          for (int64_t j = 0; j < s.m; ++j) {
            const double p = la[i][j] + row.at(static_cast<uint64_t>(key.col_offset + j));
            if (p > best) {
              second = best;
              best = p;
              best_j = j;
            } else if (p > second) {
              second = p;
            }
          }
          if (best - second < 1e-4 * (1.0 + std::fabs(best))) continue;  // too close to call in float32
          ++checked;
          EXPECT_EQ(index[i].item<int64_t>(), best_j) << name(mode) << " row " << i << " sms " << sms;
          EXPECT_NEAR(value[i].item<double>(), best, 2e-5 * (1.0 + std::fabs(best))) << name(mode) << " row " << i;
        }
        EXPECT_GT(checked, s.n / 2) << name(mode);
      }
}

// (values, indices) of the k largest float64 scores <x_i, y_j> + bias_j per row, ties to the
// lower column, dropped columns (bias -inf) never listed.
std::tuple<at::Tensor, at::Tensor> mips_reference(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias,
                                                  int64_t k) {
  // Each score summed in float64 in k order, one fma a term, then the bias: an order the IEEE
  // standard fixes, so the same bits on any CPU (a BLAS product's order is its own, and could
  // split identical points' scores, or round a value to the other float32). The contract's
  // float64 answer; the engine's rescoring forms it the same way (exact_score).
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const at::Tensor xc = x.contiguous(), yc = y.contiguous(), bc = bias.contiguous();
  const auto xa = xc.accessor<float, 2>(), ya = yc.accessor<float, 2>();
  const auto ba = bc.accessor<float, 1>();
  at::Tensor scores = at::empty({n, m}, at::kDouble);
  auto sa = scores.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double sum = 0.0;
      for (int64_t c = 0; c < d; ++c) sum = std::fma(static_cast<double>(xa[i][c]), static_cast<double>(ya[j][c]), sum);
      sa[i][j] = sum + static_cast<double>(ba[j]);
    }
  at::Tensor values = at::empty({n, k}, at::kFloat), indices = at::empty({n, k}, at::kLong);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> order;
    for (int64_t j = 0; j < m; ++j)
      if (!std::isinf(sa[i][j])) order.push_back(j);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sa[i][a] > sa[i][b]; });
    for (int64_t e = 0; e < k; ++e) {
      const bool listed = e < static_cast<int64_t>(order.size());
      values[i][e] = listed ? static_cast<float>(sa[i][order[e]]) : -std::numeric_limits<float>::infinity();
      indices[i][e] = listed ? order[e] : -1;
    }
  }
  return {values, indices};
}

// Exact in every mode: the same indices and values as float64, on random points, on
// integer-valued points full of exact ties and duplicates, and with dropped columns. (Split
// float16 searches in split TF32.)
TEST_F(EngineEmulated, MipsIsExactInEveryMode) {
  const std::vector<Shape> shapes = {{1, 1, 1}, {5, 7, 3}, {67, 131, 7}, {70, 200, 17}, {33, 129, 64}};
  for (const Shape& s : shapes)
    for (DotMode mode : kModes)
      for (bool integers : {false, true})
        for (int sms : kMultiprocessors) {
          emulation::settings().multiprocessors = sms;
          at::Tensor x = at::randn({s.n, s.d}), y = at::randn({s.m, s.d}), bias = at::randn({s.m});
          if (integers) {
            x = at::randint(-2, 3, {s.n, s.d}).to(at::kFloat);
            y = at::randint(-2, 3, {s.m, s.d}).to(at::kFloat);
            y.narrow(0, 0, s.m / 2).copy_(y.narrow(0, s.m - s.m / 2, s.m / 2));  // duplicated points
            bias = at::zeros({s.m});
            if (s.m > 4) bias[2] = -std::numeric_limits<float>::infinity();
          }
          const std::string where = std::string(name(mode)) + " n=" + std::to_string(s.n) +
                                    " m=" + std::to_string(s.m) + " d=" + std::to_string(s.d) +
                                    (integers ? " integers" : " random") + " sms=" + std::to_string(sms);
          for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{64}}) {
            if (k > s.m) continue;
            const auto [values, indices] = mips_tensor_cores(x, y, bias, k, mode);
            const auto [ref_values, ref_indices] = mips_reference(x, y, bias, k);
            EXPECT_TRUE(at::equal(indices, ref_indices)) << where << " k=" << k;
            EXPECT_TRUE(at::equal(values, ref_values)) << where << " k=" << k;
          }
        }
}

// The one pass's lists (k = 1, 2) against the running bound (mips_engine.cu): exact where they
// hold every candidate, and where rows overflow them and take the second pass (top-1: the
// rescoring one; top-2: the relisting one, whose lists overflow in turn on ties, and then every
// column is rescored), alone or beside rows that do not (lists of one entry a chunk). Adversarial data: identical points (every column ties: columns 0 and 1 win), near-ties
// below every mode's resolution, and scores rising along the columns (every tile raises the bound).
TEST_F(EngineEmulated, MipsOnePassListsAndTheirOverflowAreExact) {
  const int64_t n = 70, m = 300, d = 17;
  const at::Tensor x = at::randn({n, d});
  const at::Tensor direction = at::randn({d});
  const at::Tensor rising = at::linspace(0.0, 3.0, m).unsqueeze(1) * at::sign(at::matmul(x, direction)).mean() *
                            direction.unsqueeze(0);
  const std::vector<std::pair<const char*, at::Tensor>> data = {
      {"random", at::randn({m, d})},
      {"identical", at::randn({1, d}).expand({m, d}).contiguous()},
      {"near ties", at::randn({1, d}) + 1e-5 * at::randn({m, d})},
      {"rising", rising + 1e-3 * at::randn({m, d})},
  };
  const ScopedEnv block_rows("OT_FLOW_ENGINE_BLOCK_ROWS", nullptr);
  for (const char* rows : {"64", "128"})
    for (const auto& [what, y] : data)
      for (DotMode mode : {DotMode::kSplitTF32, DotMode::kTF32, DotMode::kBF16})
        for (int sms : kMultiprocessors)
          for (int64_t list_per_chunk : {int64_t{1}, int64_t{2}, kMipsListPerChunk, int64_t{1000}})
            for (int64_t k = 1; k <= kMipsOnePassMaxK; ++k) {
              block_rows.set(rows);
              emulation::settings().multiprocessors = sms;
              const at::Tensor bias = 0.1 * at::randn({m});
              const auto [values, indices] = mips_tensor_cores(x, y, bias, k, mode, list_per_chunk);
              const auto [ref_values, ref_indices] = mips_reference(x, y, bias, k);
              const std::string where = std::string(what) + " " + name(mode) + " sms=" + std::to_string(sms) +
                                        " list=" + std::to_string(list_per_chunk) + " rows=" + rows +
                                        " k=" + std::to_string(k);
              EXPECT_TRUE(at::equal(indices, ref_indices)) << where;
              EXPECT_TRUE(at::equal(values, ref_values)) << where;
            }
}

void expect_one_pass_streams_twice_only_where_a_list_overflowed(bool tall) {
  const int64_t n = 200, m = 1000, d = 24;
  const at::Tensor x = at::randn({n, d}), bias = at::zeros({m});
  auto copies = [&](const at::Tensor& y, int64_t list_per_chunk, int64_t k = 1) {
    emulation::counters() = emulation::Counters{};
    mips_tensor_cores(x, y, bias, k, DotMode::kTF32, list_per_chunk);
    return emulation::counters().async_copies;
  };
  const int64_t one_pass = copies(at::randn({m, d}), kMipsListPerChunk);
  EXPECT_GT(one_pass, 0);
  const emulation::Counters& c = emulation::counters();
  if (tall) {
    EXPECT_EQ(c.threads, 256 * c.blocks);
  } else {
    EXPECT_LT(c.threads, 256 * c.blocks);
  }
  EXPECT_EQ(copies(at::randn({1, d}).expand({m, d}).contiguous(), 1), 2 * one_pass);
  // Top-2 likewise (its relisting pass); k = 3 streams twice in 64-row blocks (the three passes),
  // whatever the switch.
  EXPECT_EQ(copies(at::randn({m, d}), kMipsListPerChunk, 2), one_pass);
  EXPECT_EQ(copies(at::randn({1, d}).expand({m, d}).contiguous(), 1, 2), 2 * one_pass);
  if (!tall) EXPECT_EQ(copies(at::randn({m, d}), kMipsListPerChunk, 3), 2 * one_pass);
  // Rows of zeros score 0 against every column (zero bias): all tie, and each lists every column.
  // Rows 70 to 127 are in one row block, the second of four or the first of two (its second
  // half), and only it streams again.
  x.narrow(0, 70, 58).zero_();
  const at::Tensor y = at::randn({m, d});
  for (int64_t k = 1; k <= kMipsOnePassMaxK; ++k) {
    // Lists of top-1's length for both k: 2 x 32 a chunk would hold all m = 1000 columns here.
    const int64_t list_per_chunk = kMipsListPerChunk / k;
    const int64_t mixed = copies(y, list_per_chunk, k);
    const auto [values, indices] = mips_tensor_cores(x, y, bias, k, DotMode::kTF32, list_per_chunk);
    const auto [ref_values, ref_indices] = mips_reference(x, y, bias, k);
    EXPECT_TRUE(at::equal(indices, ref_indices)) << "k=" << k;
    EXPECT_TRUE(at::equal(values, ref_values)) << "k=" << k;
    EXPECT_EQ(indices[70][k - 1].item<int64_t>(), k - 1) << "k=" << k;
    EXPECT_GT(mixed, one_pass) << "k=" << k;
    EXPECT_LT(mixed, 2 * one_pass) << "k=" << k;
  }
}

// Top-1's second pass streams only in row blocks that hold a row whose list overflowed: none on
// random data with the default lists (the copies of one pass), every one where all points are
// identical and the lists hold one entry a chunk (the copies of two); in 64- and 128-row blocks
// (every block of 256 threads with OT_FLOW_ENGINE_BLOCK_ROWS=128, the select kernel's too).
// Top-2 the same (its relisting pass), top-3 twice in every case.
TEST_F(EngineEmulated, MipsOnePassStreamsTwiceOnlyWhereAListOverflowed) {
  const ScopedEnv block_rows("OT_FLOW_ENGINE_BLOCK_ROWS", nullptr);
  for (const char* rows : {"64", "128"}) {
    block_rows.set(rows);
    expect_one_pass_streams_twice_only_where_a_list_overflowed(std::string(rows) == "128");
  }
}

}  // namespace
}  // namespace ot_flow::cuda::engine

namespace ot_flow::cuda::engine {
namespace {

// OT_FLOW_ENGINE_HIGHEST picks how "highest" runs; anything but its two values raises.
TEST(EngineSwitch, HighestIsSplitTF32UnlessSplitF16IsAsked) {
  const ScopedEnv highest("OT_FLOW_ENGINE_HIGHEST", nullptr);
  EXPECT_EQ(dot_mode(Precision::Highest), DotMode::kSplitTF32);
  highest.set("split_f16");
  EXPECT_EQ(dot_mode(Precision::Highest), DotMode::kSplitF16);
  EXPECT_EQ(dot_mode(Precision::TF32), DotMode::kTF32);
  highest.set("split_tf32");
  EXPECT_EQ(dot_mode(Precision::Highest), DotMode::kSplitTF32);
  highest.set("f16");
  EXPECT_THROW(dot_mode(Precision::Highest), c10::ValueError);
}

// OT_FLOW_ENGINE_BLOCK_ROWS: 64 (unset, empty or "64") or 128; anything else raises, naming it.
TEST(EngineSwitch, BlockRowsAre64Unless128IsAsked) {
  const ScopedEnv rows("OT_FLOW_ENGINE_BLOCK_ROWS", nullptr);
  EXPECT_FALSE(tall_blocks_selected());
  for (const char* value : {"", "64"}) {
    rows.set(value);
    EXPECT_FALSE(tall_blocks_selected()) << value;
  }
  rows.set("128");
  EXPECT_TRUE(tall_blocks_selected());
  rows.set("256");
  try {
    tall_blocks_selected();
    ADD_FAILURE() << "256 accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("OT_FLOW_ENGINE_BLOCK_ROWS"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ot_flow::cuda::engine
