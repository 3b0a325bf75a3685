#include "lse.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "checks.h"

namespace ot_flow {

namespace {

// The mode the kernels run for inputs of `dtype`: float64 always takes the exact path.
Precision kernel_precision(const char* op, c10::string_view precision, at::ScalarType dtype) {
  const Precision parsed = parse_precision(op, precision);
  return dtype == at::kDouble ? Precision::Highest : parsed;
}

}  // namespace

LseArgs prepare_lse_args(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                         double scale, c10::string_view precision, const char* op, const char* h_name,
                         bool validate) {
  // Devices first: nothing may read a tensor that sits on another device than the kernel's.
  check_same_device(op, "y", y, "x", x);
  if (h.has_value()) check_same_device(op, h_name, *h, "x", x);
  const double x_max = check_points(op, "x", x, validate);
  const double y_max = check_points(op, "y", y, validate);
  TORCH_CHECK_VALUE(x.scalar_type() == y.scalar_type(), op, ": arguments 'x' and 'y' must have one dtype, got ",
                    x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) == y.size(1), op, ": arguments 'x' and 'y' must have the same dimension, got x ",
                    x.sizes(), " and y ", y.sizes());
  check_finite_scalar(op, "scale", scale);
  const at::ScalarType dtype = compute_dtype(x.scalar_type());
  const Precision mode = kernel_precision(op, precision, dtype);
  at::Tensor bias;
  double h_max = 0.0;
  if (h.has_value()) {
    h_max = check_log_weights(op, h_name, *h, y.size(0), x, validate);
    bias = computed(*h);
  } else {
    bias = at::zeros({y.size(0)}, x.options().dtype(dtype));
  }
  if (validate) check_logit_range(op, dtype, x.size(1), x_max, y_max, scale, h_name, h_max);
  return {computed(x), computed(y), bias, mode};
}

bool is_batched(const at::Tensor& x, const at::Tensor& y) { return x.dim() == 3 || y.dim() == 3; }

at::Tensor problems_contiguous(const at::Tensor& t) {
  // Each problem t[b] contiguous is all the kernels need; the stride between problems is free.
  // On the CPU every problem must also start on a 64-byte boundary: MKL picks its GEMM code path
  // by the operands' alignment, and a problem at an odd offset of a packed batch would round an
  // ulp away from the same problem in a tensor of its own (which the allocator aligns), so the
  // batched call would no longer be the 2-D call problem by problem. Inputs that miss either are
  // copied into such a layout once per call; the solvers lay their batches out so already
  // (ops/layout.py, the same rule) and pay no copy.
  constexpr int64_t kAlignBytes = 64;
  const int64_t item = t.element_size();
  const bool on_cpu = t.device().is_cpu();
  int64_t per = 1;
  bool fits = true;
  for (int64_t dim = t.dim() - 1; dim >= 1; --dim) {
    if (t.size(dim) != 1 && t.stride(dim) != per) fits = false;
    per *= t.size(dim);
  }
  if (t.size(0) > 1 && t.stride(0) < per) fits = false;
  if (fits && on_cpu) {
    fits = reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % kAlignBytes == 0 &&
           (t.size(0) == 1 || (t.stride(0) * item) % kAlignBytes == 0);
  }
  if (fits) return t;
  const int64_t items = on_cpu ? std::max<int64_t>(1, kAlignBytes / item) : 1;
  const int64_t stride = (per + items - 1) / items * items;
  std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end()), strides(t.dim());
  strides[0] = stride;
  for (int64_t dim = t.dim() - 1, step = 1; dim >= 1; --dim) {
    strides[dim] = step;
    step *= t.size(dim);
  }
  at::Tensor out = at::empty({t.size(0) * stride}, t.options()).as_strided(sizes, strides);
  out.copy_(t);
  return out;
}

void refuse_scales_unbatched(const char* op, const std::optional<c10::ArrayRef<double>>& scales,
                             const char* name) {
  TORCH_CHECK_VALUE(!scales.has_value(), op, ": argument '", name,
                    "' is for batched inputs (x (B, n, d), y (B, m, d)); a 2-D call takes one scale");
}

BatchedLseArgs prepare_batched_lse_args(const at::Tensor& x, const at::Tensor& y,
                                        const std::optional<at::Tensor>& h, double scale,
                                        const std::optional<c10::ArrayRef<double>>& scales,
                                        c10::string_view precision, const char* op, const char* h_name,
                                        bool validate) {
  check_same_device(op, "y", y, "x", x);
  if (h.has_value()) check_same_device(op, h_name, *h, "x", x);
  check_batched_pair(op, x, y);
  const std::vector<double> x_max = check_batched_points(op, "x", x, validate);
  const std::vector<double> y_max = check_batched_points(op, "y", y, validate);
  TORCH_CHECK_VALUE(x.scalar_type() == y.scalar_type(), op, ": arguments 'x' and 'y' must have one dtype, got ",
                    x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.size(2) == y.size(2), op, ": arguments 'x' and 'y' must have the same dimension, got x ",
                    x.sizes(), " and y ", y.sizes());
  const int64_t batch = x.size(0);
  std::vector<double> all_scales = batched_scales(op, "scales", scale, scales, batch);
  const at::ScalarType dtype = compute_dtype(x.scalar_type());
  const Precision mode = kernel_precision(op, precision, dtype);
  at::Tensor bias;
  std::vector<double> h_max(batch, 0.0);
  if (h.has_value()) {
    h_max = check_batched_log_weights(op, h_name, *h, batch, y.size(1), x, validate);
    bias = problems_contiguous(h->to(dtype));
  } else {
    bias = at::zeros({batch, y.size(1)}, x.options().dtype(dtype));
  }
  for (int64_t b = 0; validate && b < batch; ++b) {
    check_logit_range(op, dtype, x.size(2), x_max[b], y_max[b], all_scales[b], h_name, h_max[b]);
  }
  return {problems_contiguous(x.to(dtype)), problems_contiguous(y.to(dtype)), bias, std::move(all_scales), mode};
}

at::Tensor run_lse(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale, const std::optional<c10::ArrayRef<double>>& scales, c10::string_view precision,
                   bool validate, LseKernel kernel, LseBatchedKernel batched) {
  if (!is_batched(x, y)) {
    refuse_scales_unbatched("ot_flow.lse", scales);
    const LseArgs args = prepare_lse_args(x, y, h, scale, precision, "ot_flow.lse", "h", validate);
    return kernel(args.x, args.y, args.h, scale, args.precision);
  }
  const BatchedLseArgs args = prepare_batched_lse_args(x, y, h, scale, scales, precision, "ot_flow.lse", "h", validate);
  if (batched != nullptr) return batched(args.x, args.y, args.h, args.scales, args.precision);
  at::Tensor out = at::empty({args.x.size(0), args.x.size(1)}, args.x.options());
  for (int64_t b = 0; b < args.x.size(0); ++b) {
    out[b].copy_(kernel(args.x[b], args.y[b], args.h[b], args.scales[b], args.precision));
  }
  return out;
}

namespace {

// The CPU computes every precision exactly, so its kernels take none.
at::Tensor lse_cpu(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale, std::optional<c10::ArrayRef<double>> scales, c10::string_view precision,
                   bool validate) {
  return run_lse(
      x, y, h, scale, scales, precision, validate,
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& hc, double s, Precision) {
        return lse_cpu_kernel(xc, yc, hc, s);
      },
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& hc, const std::vector<double>& ss,
         Precision) { return lse_cpu_batched_kernel(xc, yc, hc, ss); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def(
      "lse(Tensor x, Tensor y, Tensor? h=None, float scale=1.0, float[]? scales=None, str precision=\"highest\", "
      "bool validate=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("lse", &lse_cpu); }

}  // namespace ot_flow
