#include "checks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "precision.h"

namespace ot_flow {

void check_point_dtype(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                    ": argument '", name, "' must be float16, bfloat16, float32 or float64, got ", dtype);
}

at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 ? at::kFloat : dtype;
}

at::Tensor computed(const at::Tensor& t) { return t.to(compute_dtype(t.scalar_type())).contiguous(); }

double check_points(const char* op, const char* name, const at::Tensor& t, bool read_values) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": argument '", name,
                    "' must be a 2-D tensor of points (num_points, dim), got shape ", t.sizes());
  check_point_dtype(op, name, t);
  TORCH_CHECK_VALUE(t.size(0) > 0 && t.size(1) > 0, op, ": argument '", name,
                    "' is empty (shape ", t.sizes(), "); it needs at least one point of dimension >= 1");
  if (!read_values) return 0.0;
  // max |entry| is NaN or Inf exactly when an entry is.
  const double max_abs = at::linalg_vector_norm(t, INFINITY).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(max_abs), op, ": argument '", name, "' contains NaN or Inf");
  return max_abs;
}

double check_log_weights(const char* op, const char* name, const at::Tensor& t, int64_t size,
                         const at::Tensor& like, bool read_values) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": argument '", name,
                    "' must be a 1-D tensor of length ", size, ", got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), op, ": argument '", name,
                    "' must have the points' dtype ", like.scalar_type(), ", got ", t.scalar_type());
  if (!read_values) return 0.0;
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

namespace {

// max |entry| of every problem of a (B, ...) tensor, on the host (one synchronisation).
std::vector<double> per_problem_max_abs(const at::Tensor& t) {
  const at::Tensor norms = at::linalg_vector_norm(t.reshape({t.size(0), -1}), INFINITY, {1}, false, at::kDouble);
  const at::Tensor host = norms.to(at::kCPU).contiguous();
  const double* p = host.const_data_ptr<double>();
  return std::vector<double>(p, p + host.numel());
}

}  // namespace

std::vector<double> check_batched_points(const char* op, const char* name, const at::Tensor& t,
                                         bool read_values) {
  TORCH_CHECK_VALUE(t.dim() == 3, op, ": argument '", name,
                    "' of a batched call must be a 3-D tensor (num_problems, num_points, dim), got shape ", t.sizes());
  check_point_dtype(op, name, t);
  TORCH_CHECK_VALUE(t.size(0) > 0 && t.size(1) > 0 && t.size(2) > 0, op, ": argument '", name,
                    "' is empty (shape ", t.sizes(), "); a batched call needs at least one problem of at least ",
                    "one point of dimension >= 1");
  if (!read_values) return std::vector<double>(t.size(0), 0.0);
  std::vector<double> max_abs = per_problem_max_abs(t);
  for (size_t b = 0; b < max_abs.size(); ++b) {
    TORCH_CHECK_VALUE(std::isfinite(max_abs[b]), op, ": argument '", name, "' contains NaN or Inf (problem ", b, ")");
  }
  return max_abs;
}

std::vector<double> check_batched_log_weights(const char* op, const char* name, const at::Tensor& t,
                                              int64_t batch, int64_t size, const at::Tensor& like,
                                              bool read_values) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == batch && t.size(1) == size, op, ": argument '", name,
                    "' of a batched call must be a 2-D tensor (num_problems, ", size, ") = (", batch, ", ", size,
                    "), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), op, ": argument '", name,
                    "' must have the points' dtype ", like.scalar_type(), ", got ", t.scalar_type());
  if (!read_values) return std::vector<double>(batch, 0.0);
  std::vector<double> max_abs = per_problem_max_abs(t.masked_fill(at::isneginf(t), 0));
  for (size_t b = 0; b < max_abs.size(); ++b) {
    TORCH_CHECK_VALUE(std::isfinite(max_abs[b]), op, ": argument '", name, "' contains NaN or +Inf (problem ", b,
                      "; -Inf is allowed and means zero mass)");
  }
  return max_abs;
}

std::vector<double> batched_scales(const char* op, const char* scales_name, double scale,
                                   const std::optional<c10::ArrayRef<double>>& scales, int64_t batch) {
  if (!scales.has_value()) {
    check_finite_scalar(op, "scale", scale);
    return std::vector<double>(batch, scale);
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(scales->size()) == batch, op, ": argument '", scales_name,
                    "' must hold one value per problem (", batch, "), got ", scales->size());
  for (size_t b = 0; b < scales->size(); ++b) {
    TORCH_CHECK_VALUE(std::isfinite((*scales)[b]), op, ": argument '", scales_name, "' must be finite, got ",
                      (*scales)[b], " for problem ", b);
  }
  return scales->vec();
}

void check_batched_pair(const char* op, const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK_VALUE(x.dim() == 3 && y.dim() == 3, op, ": arguments 'x' and 'y' must both be batched (3-D: ",
                    "num_problems, num_points, dim) or both 2-D, got shapes ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), op, ": arguments 'x' and 'y' must hold the same number of problems, ",
                    "got ", x.size(0), " and ", y.size(0), " (shapes ", x.sizes(), " and ", y.sizes(), ")");
}

const char* float_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kFloat:
      return "float32";
    default:
      return "float64";
  }
}

Precision parse_precision(const char* op, c10::string_view precision) {
  if (precision == "highest") return Precision::Highest;
  if (precision == "tf32") return Precision::TF32;
  TORCH_CHECK_VALUE(precision == "bf16", op, ": argument 'precision' must be one of 'highest', 'tf32', 'bf16', got '",
                    std::string(precision), "'");
  return Precision::BF16;
}

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
