// ot_flow::lse_dense — the log-sum-exp of the Sinkhorn updates over a precomputed matrix of
// dot products D (n, m), along either axis:
//   dim = 1: out_i = log sum_j exp(scale * D_ij + h_j)      (h of length m)
//   dim = 0: out_j = log sum_i exp(scale * D_ij + h_i)      (h of length n)
// The cached-cost path of the Sinkhorn solver: when D fits a memory budget, computing it once
// leaves one fused pass (no GEMM) per half-iteration.
//
#pragma once

#include <ATen/core/Tensor.h>

namespace ot_flow {

// `shift`, optional, is a guess of the result (the previous Sinkhorn iterate's): kernels may
// use it to skip their max pass, and must return the same values with or without it.

// Kernels on a contiguous D, h and shift of D's dtype; dim already normalised to 0 or 1.
using LseDenseKernel = at::Tensor (*)(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                                      const std::optional<at::Tensor>& shift);
at::Tensor lse_dense_cpu_kernel(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                                const std::optional<at::Tensor>& shift);
at::Tensor lse_dense_cuda_kernel(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                                 const std::optional<at::Tensor>& shift);

// Checks the arguments, runs `kernel`, and rejects a NaN result (D held NaN or +Inf: the
// matrix is not scanned up front, which would double the memory traffic). Without `validate`
// (the op's validate=False) nothing reads the data: no NaN/Inf checks, no host synchronisation.
at::Tensor run_lse_dense(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                         const std::optional<at::Tensor>& shift, bool validate, LseDenseKernel kernel);

}  // namespace ot_flow
