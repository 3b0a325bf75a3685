// ot_flow::marginal_error — how far a Sinkhorn half-step moved a potential, as the 1-norm
// marginal error it measures (the solvers' stopping rule, in one place):
//   out = sum_i w_i |expm1(scale (current_i - updated_i))|           in float64,
// for f_new = softmin(g): P 1 = a exp((f - f_new) / eps) row by row, so with w = a and
// scale = 1 / eps this is |P 1 - a|_1 of the plan (f, g); the unbalanced solver passes its
// target mass as w and 1 / (tau eps) as the scale. Batched: current, updated, weights (B, n),
// one scale per problem (`scales`), out (B,). A NaN or infinite entry of current or updated
// makes the result NaN (expm1(-inf) = -1 would hide a +inf potential in a finite error): the
// solvers read a non-finite error as non-finite potentials.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace ot_flow {

// The same sum in ATen ops, on any device (the CUDA kernel; the CPU one is a plain loop).
at::Tensor marginal_error_aten(const at::Tensor& current, const at::Tensor& updated, const at::Tensor& weights,
                               double scale, std::optional<c10::ArrayRef<double>> scales);

}  // namespace ot_flow
