// ot_flow::softmin_dense — the Sinkhorn half-step over a precomputed matrix of dot products D,
// the dense twin of ot_flow::softmin, in one call:
//   dim = 1: out_i = -eps log sum_j exp((g_j + D_ij) / eps + log_w_j)      (g of length m)
//   dim = 0: out_j = -eps log sum_i exp((g_i + D_ij) / eps + log_w_i)      (g of length n)
// i.e. -eps lse_dense(D, g / eps + log_w, 1 / eps, dim, shift = current / -eps): the cached-cost
// path of the solver, whose half-step was five small ops around lse_dense (on the CPU, at the
// batch sizes of OT-FM, their dispatch cost more than the pass itself).
// Batched: D (B, n, m), g, log_weights and current (B, len), one eps per problem (`epsilons`);
// problem b is computed exactly as the 2-D call on it (the same bits).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "lse_dense.h"

namespace ot_flow {

// Checks the arguments under softmin_dense's names and runs lse_dense's `kernel` (the CPU or
// the CUDA one) through run_lse_dense. `current`, optional, is the output potential's current
// iterate: the shift hint of lse_dense (the result depends on it only in its rounding).
at::Tensor run_softmin_dense(const at::Tensor& dots, const at::Tensor& g, double eps, int64_t dim,
                             const std::optional<at::Tensor>& log_weights, const std::optional<at::Tensor>& current,
                             const std::optional<c10::ArrayRef<double>>& epsilons, bool validate,
                             LseDenseKernel kernel);

// The op's implementation on one backend: run_softmin_dense on that backend's lse_dense kernel
// (registered for the CPU in softmin_dense.cpp, for CUDA in cuda/dense_half_step_cuda.cpp).
template <LseDenseKernel kernel>
at::Tensor softmin_dense_on(const at::Tensor& dots, const at::Tensor& g, double eps, int64_t dim,
                            const std::optional<at::Tensor>& log_weights, const std::optional<at::Tensor>& current,
                            std::optional<c10::ArrayRef<double>> epsilons, bool validate) {
  return run_softmin_dense(dots, g, eps, dim, log_weights, current, epsilons, validate, kernel);
}

// Problem b's entries of t ((len) for one problem, (B, len) for B) divided by sign * eps[b],
// plus `add` where given: a new tensor in t's dtype. `plain_loops` (CPU tensors only): C++
// loops, since the ATen ops with a scalar operand cost ~5 us each (the scalar becomes a tensor),
// more than the whole loop at the batch sizes of OT-FM; otherwise ATen ops with the eps as a
// (B, 1) column (the CUDA path). Either way one IEEE division and addition per entry in t's
// dtype, so problem b's bits are its 2-D call's, and the two paths give the same bits.
at::Tensor divided_rows(const at::Tensor& t, const std::vector<double>& eps, double sign,
                        const std::optional<at::Tensor>& add, bool plain_loops);
// out (as divided_rows' t) times sign * eps[b] in place, problem by problem; `plain_loops` as
// there (and out contiguous).
void scale_rows_(at::Tensor& out, const std::vector<double>& eps, double sign, bool plain_loops);

}  // namespace ot_flow
