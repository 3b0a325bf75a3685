// ot_flow::lse — the streaming row log-sum-exp of a biased, scaled dot product:
//   out_i = log sum_j exp(scale * <x_i, y_j> + h_j)
// computed tile by tile with an online (max, sum) per row; no n x m buffer is formed.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace ot_flow {

// Validates the arguments and returns (x, y, h) contiguous, with h = zeros(m) when absent.
// `op` and `h_name` name the calling op and its bias argument in error messages (ops built on
// lse share these checks).
std::tuple<at::Tensor, at::Tensor, at::Tensor> prepare_lse_args(
    const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h, double scale,
    const char* op = "ot_flow.lse", const char* h_name = "h");

// Kernels: x (n, d), y (m, d), h (m) contiguous, validated, same dtype and device.
using LseKernel = at::Tensor (*)(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale);
at::Tensor lse_cpu_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          double scale);
at::Tensor lse_cuda_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                           double scale);

// The op for one device: checks, then `kernel`.
at::Tensor run_lse(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale, LseKernel kernel);

}  // namespace ot_flow
