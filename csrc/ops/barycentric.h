// ot_flow::barycentric — softmax-weighted sums of values along the rows of the implicit
// kernel exp(scale * <x_i, y_j> + h_j):
//   lse_i = log sum_j exp(scale * <x_i, y_j> + h_j)
//   out_i = sum_j exp(scale * <x_i, y_j> + h_j - lse_i) * values_j
// With values = y this is the barycentric projection (entropic map) of a Sinkhorn coupling;
// with other values it gives the gradients of lse. Same shape as attention, and like
// flash attention it never forms the n x m weights.
//
// Batched (see lse.h): x (B, n, d), y (B, m, d), h (B, m), values (B, m, k), one scale per
// problem; out (B, n, k) and lse (B, n), problem b bitwise the 2-D call on it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "precision.h"

namespace ot_flow {

// Kernels on validated, contiguous inputs in compute_dtype (float32/float64); return (out (n, k),
// lse (n)). A row whose every bias is -inf gets out = 0 and lse = -inf. The CPU kernels take
// no precision: they compute every mode exactly.
using BarycentricKernel = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& x, const at::Tensor& y,
                                                                 const at::Tensor& h, double scale,
                                                                 const at::Tensor& values, Precision precision);
std::tuple<at::Tensor, at::Tensor> barycentric_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                          const at::Tensor& h, double scale,
                                                          const at::Tensor& values);
std::tuple<at::Tensor, at::Tensor> barycentric_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                           const at::Tensor& h, double scale,
                                                           const at::Tensor& values, Precision precision);

using BarycentricBatchedKernel = std::tuple<at::Tensor, at::Tensor> (*)(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, const std::vector<double>& scales,
    const at::Tensor& values, Precision precision);
std::tuple<at::Tensor, at::Tensor> barycentric_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y,
                                                                  const at::Tensor& h,
                                                                  const std::vector<double>& scales,
                                                                  const at::Tensor& values);

// The op for one device: checks, then `kernel`; batched inputs go to `batched` when given, else
// to `kernel` once per problem on the current stream (the CUDA fallback, see lse.h).
std::tuple<at::Tensor, at::Tensor> run_barycentric(const at::Tensor& x, const at::Tensor& y,
                                                   const std::optional<at::Tensor>& h, double scale,
                                                   const std::optional<at::Tensor>& values,
                                                   const std::optional<c10::ArrayRef<double>>& scales,
                                                   c10::string_view precision, BarycentricKernel kernel,
                                                   BarycentricBatchedKernel batched = nullptr);

}  // namespace ot_flow
