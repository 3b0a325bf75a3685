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

#include "precision.h"

namespace ot_flow {

// The validated inputs of a 2-D call, as the kernels take them: x (n, d), y (m, d), h (m)
// contiguous in compute_dtype (float16/bfloat16 upcast to float32; checks.h), h = zeros(m) when
// absent, and the precision of the dot products (Highest for float64 inputs, which always take
// the exact path).
struct LseArgs {
  at::Tensor x, y, h;
  Precision precision;
};

// Validates the arguments of a 2-D call. `op` and `h_name` name the calling op and its bias
// argument in error messages (ops built on lse share these checks).
// `validate` false skips the checks that read the data (checks.h, read_values) and the logit
// range check: the op's `validate=False`, for callers that checked the data once.
LseArgs prepare_lse_args(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                         double scale, c10::string_view precision, const char* op = "ot_flow.lse",
                         const char* h_name = "h", bool validate = true);

// The validated inputs of a batched call, each problem contiguous and in compute_dtype: x (B, n, d),
// y (B, m, d), h (B, m) (zeros when absent), the B scales and the precision (as LseArgs).
struct BatchedLseArgs {
  at::Tensor x, y, h;
  std::vector<double> scales;
  Precision precision;
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
                                        c10::string_view precision, const char* op = "ot_flow.lse",
                                        const char* h_name = "h", bool validate = true);

// Raises when `scales` is given to a 2-D call (it is the batched calls' argument).
void refuse_scales_unbatched(const char* op, const std::optional<c10::ArrayRef<double>>& scales,
                             const char* name = "scales");

// Kernels: x (n, d), y (m, d), h (m) contiguous, validated, same dtype (float32/float64) and
// device. The CPU kernels take no precision: they compute every mode exactly.
using LseKernel = at::Tensor (*)(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                                 Precision precision);
at::Tensor lse_cpu_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          double scale);
at::Tensor lse_cuda_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                           double scale, Precision precision);
// Batched kernels: x (B, n, d), y (B, m, d), h (B, m) contiguous, validated; out (B, n).
using LseBatchedKernel = at::Tensor (*)(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                        const std::vector<double>& scales, Precision precision);
at::Tensor lse_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                  const std::vector<double>& scales);

// The op for one device: checks (those that read the data only when `validate`), then `kernel`
// (2-D), or for batched inputs `batched` when given, else `kernel` once per problem, in order,
// on the current stream (the FMA kernels on CUDA; the engine takes the batch as a grid dimension).
at::Tensor run_lse(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale, const std::optional<c10::ArrayRef<double>>& scales, c10::string_view precision,
                   bool validate, LseKernel kernel, LseBatchedKernel batched = nullptr);

}  // namespace ot_flow
