// ot_flow::gumbel_argmax — one draw per row from the implicit row-softmax of a biased, scaled
// dot product, by the Gumbel-max trick:
//   index_i = argmax_j  scale * <x_i, y_j> + h_j + G(seed, offset, row_offset + i, col_offset + j)
//   value_i = the winning perturbed logit (float64), -inf and index -1 when every h_j = -inf
// with G the counter-based Gumbel noise of gumbel_noise.h, in one streaming pass (a running
// (value, index) per row, ties to the lowest j). With h_j = g_j / eps + log b_j and
// scale = 1 / eps, index_i is a draw from P(. | i) of a Sinkhorn coupling. The offsets make a
// shard's draw equal to the same rows and columns of the unsharded one, and the float64 value
// lets shards of columns be merged exactly: the larger value wins, the lower index on ties.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ot_flow {

// Where the noise of one call comes from: the key (seed, offset) and the global index of
// this call's first row and first column.
struct GumbelKey {
  int64_t seed, offset, row_offset, col_offset;
};

// Kernels on validated, contiguous inputs; return (index int64 (n), value float64 (n)).
using GumbelArgmaxKernel = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& x, const at::Tensor& y,
                                                                  const at::Tensor& h, double scale,
                                                                  const GumbelKey& key);
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& h, double scale,
                                                            const GumbelKey& key);
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& h, double scale,
                                                             const GumbelKey& key);

// The op for one device: checks, then `kernel`.
std::tuple<at::Tensor, at::Tensor> run_gumbel_argmax(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& h, double scale,
                                                     int64_t seed, int64_t offset, int64_t row_offset,
                                                     int64_t col_offset, GumbelArgmaxKernel kernel);

}  // namespace ot_flow
