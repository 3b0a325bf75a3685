// ot_flow::mips — biased maximum inner-product search, exact, top-k:
//   for each query x_i, the k largest  <x_i, y_j> + bias_j  and their j,
// sorted by value (descending), ties to the lowest j; one streaming pass of GEMM tiles with
// the selection fused, so no n x m buffer. Columns whose bias is -inf are never returned:
// when fewer than k columns remain, the tail holds value -inf and index -1.
// Semidiscrete OT pairs noise with data by it (bias = the dual potential, minus |y_j|^2 / 2
// for the squared Euclidean cost).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "precision.h"

namespace ot_flow {

// Kernels on validated, contiguous inputs in compute_dtype (float32/float64); return (values
// (n, k) in that dtype, indices int64 (n, k)). The CPU kernel takes no precision: it computes
// every mode exactly.
using MipsKernel = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& x, const at::Tensor& y,
                                                          const at::Tensor& bias, int64_t k, Precision precision);
std::tuple<at::Tensor, at::Tensor> mips_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                   const at::Tensor& bias, int64_t k);
std::tuple<at::Tensor, at::Tensor> mips_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                    const at::Tensor& bias, int64_t k, Precision precision);

// The largest k the CUDA kernel keeps per row (its lists live in per-thread local memory).
constexpr int64_t kMipsCudaMaxK = 64;

// The op for one device: checks (those that read the data only when `validate`), then `kernel`.
std::tuple<at::Tensor, at::Tensor> run_mips(const at::Tensor& x, const at::Tensor& y,
                                            const std::optional<at::Tensor>& bias, int64_t k,
                                            c10::string_view precision, bool validate, MipsKernel kernel,
                                            int64_t max_k);

}  // namespace ot_flow
