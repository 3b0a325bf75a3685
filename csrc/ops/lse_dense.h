// ot_flow::lse_dense — the log-sum-exp of the Sinkhorn updates over a precomputed matrix of
// dot products D (n, m), along either axis:
//   dim = 1: out_i = log sum_j exp(scale * D_ij + h_j)      (h of length m)
//   dim = 0: out_j = log sum_i exp(scale * D_ij + h_i)      (h of length n)
// The cached-cost path of the Sinkhorn solver: when D fits a memory budget, computing it once
// leaves one fused pass (no GEMM) per half-iteration.
// Batched: D (B, n, m), h and shift (B, len), one scale per problem (`scales`); problem b of
// the batch is computed exactly as the 2-D call on (D[b], h[b], scales[b]), so it gives the
// same bits (the batched Sinkhorn solve relies on it to equal B separate solves).
//
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace ot_flow {

// `shift`, optional, is a guess of the result (the previous Sinkhorn iterate's): kernels may
// use it to skip their max pass, and must return the same values with or without it.

// Kernels take B problems: contiguous D (B, n, m), h (B, len) and shift (B, len_out) of D's
// dtype, one scale per problem; dim already normalised to 0 or 1 (an axis of each matrix).
// Returns (B, len_out). A 2-D call reaches them as the batch of one.
using LseDenseKernel = at::Tensor (*)(const at::Tensor& dots, const at::Tensor& h, const std::vector<double>& scales,
                                      int64_t dim, const std::optional<at::Tensor>& shift);
at::Tensor lse_dense_cpu_kernel(const at::Tensor& dots, const at::Tensor& h, const std::vector<double>& scales,
                                int64_t dim, const std::optional<at::Tensor>& shift);
at::Tensor lse_dense_cuda_kernel(const at::Tensor& dots, const at::Tensor& h, const std::vector<double>& scales,
                                 int64_t dim, const std::optional<at::Tensor>& shift);

// Checks the arguments, runs `kernel`, and rejects a NaN result (D held NaN or +Inf: the
// matrix is not scanned up front, which would double the memory traffic). Without `validate`
// (the op's validate=False) nothing reads the data: no NaN/Inf checks, no host synchronisation.
at::Tensor run_lse_dense(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                         const std::optional<at::Tensor>& shift, bool validate,
                         const std::optional<c10::ArrayRef<double>>& scales, LseDenseKernel kernel);

}  // namespace ot_flow
