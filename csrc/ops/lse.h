// ot_flow::lse — the streaming row log-sum-exp of a biased, scaled dot product:
//   out_i = log sum_j exp(scale * <x_i, y_j> + h_j)
// computed tile by tile with an online (max, sum) per row; no n x m buffer is formed.
//
// Batched: x (B, n, d), y (B, m, d), h (B, m) are B independent problems of equal sizes, each
// with its own scale (`scales`, B values, when given; else `scale` for all), and out is (B, n).
// The batch is the outer task dimension of the CPU tiling (cpu/tiling.h): problem b gets the
// bits of the 2-D call on (x[b], y[b], h[b], scales[b]).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace ot_flow {

// Validates the arguments and returns (x, y, h) contiguous, with h = zeros(m) when absent.
// `op` and `h_name` name the calling op and its bias argument in error messages (ops built on
// lse share these checks).
std::tuple<at::Tensor, at::Tensor, at::Tensor> prepare_lse_args(
    const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h, double scale,
    const char* op = "ot_flow.lse", const char* h_name = "h");

// The validated inputs of a batched call, each problem contiguous: x (B, n, d), y (B, m, d), h (B, m)
// (zeros when absent) and the B scales.
struct BatchedLseArgs {
  at::Tensor x, y, h;
  std::vector<double> scales;
};

// t (B, ...) itself when every problem t[b] is contiguous and, on the CPU, starts on a 64-byte
// boundary (so that problem b rounds as the 2-D call on its own tensor); else a copy laid out so.
at::Tensor problems_contiguous(const at::Tensor& t);

// Whether a call is batched (x or y 3-D; check_batched_pair then insists on both).
bool is_batched(const at::Tensor& x, const at::Tensor& y);

// The checks of prepare_lse_args for a batched call, per problem; `scales` (named 'scales' in
// errors) must hold B finite values when given.
BatchedLseArgs prepare_batched_lse_args(const at::Tensor& x, const at::Tensor& y,
                                        const std::optional<at::Tensor>& h, double scale,
                                        const std::optional<c10::ArrayRef<double>>& scales,
                                        const char* op = "ot_flow.lse", const char* h_name = "h");

// Raises when `scales` is given to a 2-D call (it is the batched calls' argument).
void refuse_scales_unbatched(const char* op, const std::optional<c10::ArrayRef<double>>& scales,
                             const char* name = "scales");

// Kernels: x (n, d), y (m, d), h (m) contiguous, validated, same dtype and device.
using LseKernel = at::Tensor (*)(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale);
at::Tensor lse_cpu_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          double scale);
at::Tensor lse_cuda_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                           double scale);
// Batched kernels: x (B, n, d), y (B, m, d), h (B, m) contiguous, validated; out (B, n).
using LseBatchedKernel = at::Tensor (*)(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                        const std::vector<double>& scales);
at::Tensor lse_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                  const std::vector<double>& scales);

// The op for one device: checks, then `kernel` (2-D), or for batched inputs `batched` when
// given, else `kernel` once per problem, in order, on the current stream: the CUDA fallback
// until the batch is a grid dimension of the CUDA engine (issue #16).
at::Tensor run_lse(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale, const std::optional<c10::ArrayRef<double>>& scales, LseKernel kernel,
                   LseBatchedKernel batched = nullptr);

}  // namespace ot_flow
