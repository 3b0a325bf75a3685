#include "gumbel_argmax.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "lse.h"

namespace ot_flow {

std::tuple<at::Tensor, at::Tensor> run_gumbel_argmax(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& h, double scale,
                                                     int64_t seed, int64_t offset, int64_t row_offset,
                                                     int64_t col_offset,
                                                     const std::optional<c10::ArrayRef<double>>& scales,
                                                     at::OptionalIntArrayRef seeds, c10::string_view precision,
                                                     bool validate, GumbelArgmaxKernel kernel,
                                                     GumbelArgmaxBatchedKernel batched) {
  constexpr const char* op = "ot_flow.gumbel_argmax";
  if (!is_batched(x, y)) {
    refuse_scales_unbatched(op, scales);
    TORCH_CHECK_VALUE(!seeds.has_value(), op, ": argument 'seeds' is for batched inputs (x (B, n, d), ",
                      "y (B, m, d)); a 2-D call takes one seed");
    const LseArgs args = prepare_lse_args(x, y, h, scale, precision, op, "h", validate);
    TORCH_CHECK_VALUE(row_offset >= 0, op, ": argument 'row_offset' must be >= 0, got ", row_offset);
    TORCH_CHECK_VALUE(col_offset >= 0, op, ": argument 'col_offset' must be >= 0, got ", col_offset);
    return kernel(args.x, args.y, args.h, scale, GumbelKey{seed, offset, row_offset, col_offset}, args.precision);
  }
  const BatchedLseArgs args = prepare_batched_lse_args(x, y, h, scale, scales, precision, op, "h", validate);
  TORCH_CHECK_VALUE(row_offset >= 0, op, ": argument 'row_offset' must be >= 0, got ", row_offset);
  TORCH_CHECK_VALUE(col_offset >= 0, op, ": argument 'col_offset' must be >= 0, got ", col_offset);
  const int64_t count = args.x.size(0);
  TORCH_CHECK_VALUE(!seeds.has_value() || static_cast<int64_t>(seeds->size()) == count, op,
                    ": argument 'seeds' must hold one seed per problem (", count, "), got ",
                    seeds.has_value() ? seeds->size() : 0);
  std::vector<GumbelKey> keys;
  for (int64_t b = 0; b < count; ++b) {
    keys.push_back(GumbelKey{seeds.has_value() ? (*seeds)[b] : seed, offset, row_offset, col_offset});
  }
  if (batched != nullptr) return batched(args.x, args.y, args.h, args.scales, keys, args.precision);
  at::Tensor index = at::empty({count, args.x.size(1)}, args.x.options().dtype(at::kLong));
  at::Tensor value = at::empty({count, args.x.size(1)}, args.x.options().dtype(at::kDouble));
  for (int64_t b = 0; b < count; ++b) {
    auto [index_b, value_b] = kernel(args.x[b], args.y[b], args.h[b], args.scales[b], keys[b], args.precision);
    index[b].copy_(index_b);
    value[b].copy_(value_b);
  }
  return {index, value};
}

namespace {

// The CPU computes every precision exactly, so its kernels take none.
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& h, double scale,
                                                     int64_t seed, int64_t offset, int64_t row_offset,
                                                     int64_t col_offset, std::optional<c10::ArrayRef<double>> scales,
                                                     at::OptionalIntArrayRef seeds, c10::string_view precision,
                                                     bool validate) {
  return run_gumbel_argmax(
      x, y, h, scale, seed, offset, row_offset, col_offset, scales, seeds, precision, validate,
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& hc, double s, const GumbelKey& key,
         Precision) { return gumbel_argmax_cpu_kernel(xc, yc, hc, s, key); },
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& hc, const std::vector<double>& ss,
         const std::vector<GumbelKey>& keys, Precision) { return gumbel_argmax_cpu_batched_kernel(xc, yc, hc, ss, keys); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def(
      "gumbel_argmax(Tensor x, Tensor y, Tensor? h=None, float scale=1.0, int seed=0, int offset=0, "
      "int row_offset=0, int col_offset=0, float[]? scales=None, int[]? seeds=None, str precision=\"highest\", "
      "bool validate=True) -> (Tensor index, Tensor value)");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("gumbel_argmax", &gumbel_argmax_cpu); }

}  // namespace ot_flow
