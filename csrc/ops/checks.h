// Argument checks shared by every op. Each raises a ValueError (TORCH_CHECK_VALUE) whose
// message starts with "ot_flow.<op>: argument '<name>'" so a user can tell which input is wrong.
#pragma once

#include <ATen/core/Tensor.h>

namespace ot_flow {

// A point cloud: a 2-D, non-empty float32/float64 tensor with finite entries.
void check_points(const char* op, const char* name, const at::Tensor& t);

// A per-point vector of log-weights or potentials of length `size`, same dtype as the
// points; -inf is allowed (a point that carries no mass), NaN and +inf are not.
void check_log_weights(const char* op, const char* name, const at::Tensor& t, int64_t size,
                       const at::Tensor& like);

void check_same_device(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref);

void check_finite_scalar(const char* op, const char* name, double value);

}  // namespace ot_flow
