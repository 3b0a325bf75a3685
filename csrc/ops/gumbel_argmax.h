// ot_flow::gumbel_argmax — one draw per row from the implicit row-softmax of a biased, scaled
// dot product, by the Gumbel-max trick:
//   index_i = argmax_j  scale * <x_i, y_j> + h_j + G(seed, offset, row_offset + i, col_offset + j)
//   value_i = the winning perturbed logit (float64), -inf and index -1 when every h_j = -inf
// with G the counter-based Gumbel noise of gumbel_noise.h, in one streaming pass (a running
// (value, index) per row, ties to the lowest j). With h_j = g_j / eps + log b_j and
// scale = 1 / eps, index_i is a draw from P(. | i) of a Sinkhorn coupling. The offsets make a
// shard's draw equal to the same rows and columns of the unsharded one, and the float64 value
// lets shards of columns be merged exactly: the larger value wins, the lower index on ties.
//
// Batched (see lse.h): x (B, n, d), y (B, m, d), h (B, m), one scale and one seed per problem
// (`scales`, `seeds`: B values each when given, else `scale` and `seed` for all); index and
// value are (B, n). Problem b draws what the 2-D call on it with seed seeds[b] (the same offsets)
// draws: the noise is keyed on (seed, offset, row, column) only, not on the problem.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "precision.h"

namespace ot_flow {

// Where the noise of one call comes from: the key (seed, offset) and the global index of
// this call's first row and first column.
struct GumbelKey {
  int64_t seed, offset, row_offset, col_offset;
};

// Kernels on validated, contiguous inputs in compute_dtype (float32/float64); return (index int64
// (n), value float64 (n)). The CPU kernels take no precision: they compute every mode exactly.
using GumbelArgmaxKernel = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& x, const at::Tensor& y,
                                                                  const at::Tensor& h, double scale,
                                                                  const GumbelKey& key, Precision precision);
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& h, double scale,
                                                            const GumbelKey& key);
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& h, double scale,
                                                             const GumbelKey& key, Precision precision);

using GumbelArgmaxBatchedKernel = std::tuple<at::Tensor, at::Tensor> (*)(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, const std::vector<double>& scales,
    const std::vector<GumbelKey>& keys, Precision precision);
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y,
                                                                    const at::Tensor& h,
                                                                    const std::vector<double>& scales,
                                                                    const std::vector<GumbelKey>& keys);

// The op for one device: checks (those that read the data only when `validate`), then `kernel`;
// batched inputs go to `batched` when given, else to `kernel` once per problem on the current
// stream (the CUDA fallback, see lse.h).
std::tuple<at::Tensor, at::Tensor> run_gumbel_argmax(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& h, double scale,
                                                     int64_t seed, int64_t offset, int64_t row_offset,
                                                     int64_t col_offset,
                                                     const std::optional<c10::ArrayRef<double>>& scales,
                                                     at::OptionalIntArrayRef seeds, c10::string_view precision,
                                                     bool validate, GumbelArgmaxKernel kernel,
                                                     GumbelArgmaxBatchedKernel batched = nullptr);

}  // namespace ot_flow
