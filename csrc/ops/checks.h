// Argument checks shared by every op. Each raises a ValueError (TORCH_CHECK_VALUE) whose
// message starts with "ot_flow.<op>: argument '<name>'" so a user can tell which input is wrong.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace ot_flow {

// Raises unless `t` has a dtype the streaming ops take: float16, bfloat16, float32 or float64.
void check_point_dtype(const char* op, const char* name, const at::Tensor& t);

// The dtype the streaming ops compute and return in for inputs of `dtype`: float32 for float16
// and bfloat16 (torch autocast's rule for reductions such as logsumexp and softmax, whose sums
// over m terms would lose too much in 16 bits), else `dtype` itself.
at::ScalarType compute_dtype(at::ScalarType dtype);
// `t` in compute_dtype, contiguous: the kernels' view of an input (the one upcast of the ops).
at::Tensor computed(const at::Tensor& t);

// Every check below that reads a tensor's values (NaN, Inf, the largest |entry|) does so only
// when `read_values`: the caller of an op may have validated the data once already (the
// solvers: `validate=False` on lse and softmin), and on CUDA each such read is a host
// synchronisation. Without it the shape and dtype rules still hold and the maxima are 0.

// A point cloud: a 2-D, non-empty tensor of a dtype check_point_dtype takes, with finite
// entries. Returns max |entry|, for check_logit_range (the same reduction finds NaN and Inf).
double check_points(const char* op, const char* name, const at::Tensor& t, bool read_values = true);

// A per-point vector of log-weights or potentials of length `size`, same dtype as the
// points; -inf is allowed (a point that carries no mass), NaN and +inf are not. Returns the
// largest |entry| among the finite ones (0 when there are none).
double check_log_weights(const char* op, const char* name, const at::Tensor& t, int64_t size,
                         const at::Tensor& like, bool read_values = true);

// Raises unless `t` is on the device of `ref`. Ops check devices before anything reads a
// tensor, so a CPU tensor never reaches a CUDA kernel (or the reverse).
void check_same_device(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref);

void check_finite_scalar(const char* op, const char* name, double value);

// Batched inputs (B independent problems of equal sizes): the checks above per problem.
// A (B, num_points, dim) point cloud, B >= 1; returns max |entry| of each problem.
std::vector<double> check_batched_points(const char* op, const char* name, const at::Tensor& t,
                                         bool read_values = true);
// A (B, size) tensor of log-weights per problem (rules of check_log_weights); returns the
// largest finite |entry| of each problem.
std::vector<double> check_batched_log_weights(const char* op, const char* name, const at::Tensor& t,
                                              int64_t batch, int64_t size, const at::Tensor& like,
                                              bool read_values = true);
// The per-problem scales of a batched call: `scales` (B finite values) when given, else
// `scale` for every problem. `scales_name` names the list in errors.
std::vector<double> batched_scales(const char* op, const char* scales_name, double scale,
                                   const std::optional<c10::ArrayRef<double>>& scales, int64_t batch);
// Raises unless x and y are both batched (3-D) with one B: the shared shape rule of batched calls.
void check_batched_pair(const char* op, const at::Tensor& x, const at::Tensor& y);

// "float16", "bfloat16", "float32" or "float64", as users write the dtypes in Python.
const char* float_name(at::ScalarType dtype);

// Half the largest finite value of a float32/float64 dtype: the ceiling of the overflow checks,
// which leaves room for the rounding of sums of up to millions of terms.
double overflow_ceiling(at::ScalarType dtype);

// Raises unless the logits scale * <x_i, y_j> + h_j of points with d coordinates of at most
// x_max and y_max in magnitude (|h_j| <= h_max) fit in `dtype`: a float32 dot product of
// coordinates around 1e19 overflows, and the kernels would silently turn it into NaN, +inf
// or a wrong argmax. The bound is |<x_i, y_j>| <= d x_max y_max, taken with max(1, |scale|)
// because a kernel may form the unscaled dot product first, against overflow_ceiling(dtype).
void check_logit_range(const char* op, at::ScalarType dtype, int64_t d, double x_max, double y_max,
                       double scale, const char* h_name, double h_max);

}  // namespace ot_flow
