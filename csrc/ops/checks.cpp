#include "checks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace ot_flow {

double check_points(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": argument '", name,
                    "' must be a 2-D tensor of points (num_points, dim), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
                    ": argument '", name, "' must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) > 0 && t.size(1) > 0, op, ": argument '", name,
                    "' is empty (shape ", t.sizes(), "); it needs at least one point of dimension >= 1");
  // max |entry| is NaN or Inf exactly when an entry is.
  const double max_abs = at::linalg_vector_norm(t, INFINITY).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(max_abs), op, ": argument '", name, "' contains NaN or Inf");
  return max_abs;
}

double check_log_weights(const char* op, const char* name, const at::Tensor& t, int64_t size,
                         const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": argument '", name,
                    "' must be a 1-D tensor of length ", size, ", got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), op, ": argument '", name,
                    "' must have the points' dtype ", like.scalar_type(), ", got ", t.scalar_type());
  // With -inf set to 0, max |entry| is NaN or +inf exactly when an entry is NaN or +inf.
  const double max_abs = at::linalg_vector_norm(t.masked_fill(at::isneginf(t), 0), INFINITY).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(max_abs), op, ": argument '", name,
                    "' contains NaN or +Inf (-Inf is allowed and means zero mass)");
  return max_abs;
}

void check_same_device(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(),
                    " but '", ref_name, "' is on ", ref.device(), "; put them on one device");
}

void check_finite_scalar(const char* op, const char* name, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value), op, ": argument '", name, "' must be finite, got ", value);
}

const char* float_name(at::ScalarType dtype) { return dtype == at::kFloat ? "float32" : "float64"; }

double overflow_ceiling(at::ScalarType dtype) {
  return 0.5 * (dtype == at::kFloat ? std::numeric_limits<float>::max() : std::numeric_limits<double>::max());
}

void check_logit_range(const char* op, at::ScalarType dtype, int64_t d, double x_max, double y_max,
                       double scale, const char* h_name, double h_max) {
  const double limit = overflow_ceiling(dtype);
  const double bound = std::max(1.0, std::abs(scale)) * static_cast<double>(d) * x_max * y_max + h_max;
  const char* name = float_name(dtype);
  TORCH_CHECK_VALUE(bound <= limit, op, ": the dot products of arguments 'x' and 'y' can overflow ", name,
                    ": max(1, |scale|) * d * max|x| * max|y| + max|", h_name, "| = ", bound,
                    " is above half the largest ", name, " (", limit,
                    "). Pass float64 inputs, or centre and rescale the problem so that the logits "
                    "scale * <x_i, y_j> stay well inside the ", name, " range");
}

}  // namespace ot_flow
