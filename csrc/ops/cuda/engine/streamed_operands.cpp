// What the streaming loop reads (streamed_operands.h).
#include "streamed_operands.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace ot_flow::cuda::engine {
namespace {

constexpr int64_t kSliceValues = 16;

// 2^e for integer tensors e, built from the exponent bits: exact where pow and exp2 need not be.
at::Tensor float_power_of_two(const at::Tensor& e) {  // e in [-126, 127]
  return at::bitwise_left_shift((e + 127).to(at::kInt), 23).view(at::kFloat);
}
at::Tensor double_power_of_two(const at::Tensor& e) {  // e in [-1022, 1023]
  return at::bitwise_left_shift((e + 1023).to(at::kLong), 52).view(at::kDouble);
}

// (packed (B, r, d_pad), exponent (B,) int32): each problem of t (B, r, d) scaled by
// s = 2^exponent so that its max |t s| lies in [2^14, 2^15) (float16's largest is 65504),
// then split into t s = hi + lo, both float16 (t s - hi is exact in float32).
std::pair<at::Tensor, at::Tensor> pack(const at::Tensor& t, int64_t d_pad) {
  const int64_t problems = t.size(0), rows = t.size(1), d = t.size(2);
  const at::Tensor amax = t.abs().amax({1, 2});
  // amax = f 2^e with f in [0.5, 1): s = 2^(15 - e). An all-zero problem keeps s = 1; the
  // exponent stays <= 120 so that s is a float32 (data below 2^-105 lose range, not values).
  const at::Tensor e = std::get<1>(at::frexp(amax));
  const at::Tensor exponent = at::where(amax > 0, (15 - e).clamp_max(120), at::zeros_like(e));
  const at::Tensor scaled = t * float_power_of_two(exponent).view({problems, 1, 1});
  const at::Tensor hi = scaled.to(at::kHalf);
  const at::Tensor lo = (scaled - hi.to(at::kFloat)).to(at::kHalf);
  auto slices = [&](const at::Tensor& half) {
    return at::constant_pad_nd(half, {0, d_pad - d}).view({problems, rows, d_pad / kSliceValues, kSliceValues});
  };
  const at::Tensor packed = at::stack({slices(hi), slices(lo)}, 3).contiguous();  // (B, r, S, 2, 16) halves
  return {packed.view(at::kFloat).view({problems, rows, d_pad}), exponent};
}

}  // namespace

SplitF16Operands split_f16_operands(const at::Tensor& x, const at::Tensor& y) {
  const int64_t d_pad = (x.size(2) + kSliceValues - 1) / kSliceValues * kSliceValues;
  auto [xs, x_exponent] = pack(x, d_pad);
  auto [ys, y_exponent] = pack(y, d_pad);
  // In float64: 2^-(a + b) may leave float32's range where scale * 2^-(a + b) does not.
  const at::Tensor unscale = double_power_of_two(-(x_exponent + y_exponent));
  return {std::move(xs), std::move(ys), unscale, d_pad};
}

StreamedOperands streamed_operands(const at::Tensor& x, const at::Tensor& y, DotMode mode) {
  if (mode == DotMode::kSplitF16) {
    SplitF16Operands split = split_f16_operands(x, y);
    return {std::move(split.x), std::move(split.y), std::move(split.unscale), split.d_pad, true};
  }
  auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % 16 == 0 && t.stride(0) % 4 == 0;
  };
  return {x, y, at::Tensor(), x.size(2), x.size(2) % 4 == 0 && aligned(x) && aligned(y)};
}

bool highest_as_split_f16() {
  const char* value = std::getenv("OT_FLOW_ENGINE_HIGHEST");
  if (value == nullptr || value[0] == '\0' || std::strcmp(value, "split_tf32") == 0) return false;
  if (std::strcmp(value, "split_f16") == 0) return true;
  TORCH_CHECK_VALUE(false, "ot_flow: environment variable OT_FLOW_ENGINE_HIGHEST must be 'split_tf32' (the default) ",
                    "or 'split_f16', got '", value, "'");
  return false;
}

}  // namespace ot_flow::cuda::engine
