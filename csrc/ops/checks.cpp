#include "checks.h"

#include <ATen/ATen.h>

#include <cmath>

namespace ot_flow {

void check_points(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": argument '", name,
                    "' must be a 2-D tensor of points (num_points, dim), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
                    ": argument '", name, "' must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) > 0 && t.size(1) > 0, op, ": argument '", name,
                    "' is empty (shape ", t.sizes(), "); it needs at least one point of dimension >= 1");
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), op, ": argument '", name,
                    "' contains NaN or Inf");
}

void check_log_weights(const char* op, const char* name, const at::Tensor& t, int64_t size,
                       const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": argument '", name,
                    "' must be a 1-D tensor of length ", size, ", got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), op, ": argument '", name,
                    "' must have the points' dtype ", like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(!(at::isnan(t) | at::isposinf(t)).any().item<bool>(), op, ": argument '",
                    name, "' contains NaN or +Inf (-Inf is allowed and means zero mass)");
}

void check_same_device(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(),
                    " but '", ref_name, "' is on ", ref.device(), "; put them on one device");
}

void check_finite_scalar(const char* op, const char* name, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value), op, ": argument '", name, "' must be finite, got ", value);
}

}  // namespace ot_flow
