#include "mips.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "lse.h"

namespace ot_flow {

std::tuple<at::Tensor, at::Tensor> run_mips(const at::Tensor& x, const at::Tensor& y,
                                            const std::optional<at::Tensor>& bias, int64_t k,
                                            c10::string_view precision, bool validate, MipsKernel kernel,
                                            int64_t max_k) {
  constexpr const char* op = "ot_flow.mips";
  const LseArgs args = prepare_lse_args(x, y, bias, 1.0, precision, op, "bias", validate);
  TORCH_CHECK_VALUE(k >= 1 && k <= args.y.size(0), op, ": argument 'k' must lie in [1, m] = [1, ", args.y.size(0),
                    "], got ", k);
  TORCH_CHECK_VALUE(k <= max_k, op, ": argument 'k' = ", k, " is above ", max_k,
                    ", the largest this device's kernel supports");
  return kernel(args.x, args.y, args.h, k, args.precision);
}

namespace {

// The CPU computes every precision exactly, so its kernel takes none.
std::tuple<at::Tensor, at::Tensor> mips_cpu(const at::Tensor& x, const at::Tensor& y,
                                            const std::optional<at::Tensor>& bias, int64_t k,
                                            c10::string_view precision, bool validate) {
  return run_mips(
      x, y, bias, k, precision, validate,
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& bc, int64_t kc, Precision) {
        return mips_cpu_kernel(xc, yc, bc, kc);
      },
      std::numeric_limits<int64_t>::max());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def(
      "mips(Tensor x, Tensor y, Tensor? bias=None, int k=1, str precision=\"highest\", bool validate=True) -> "
      "(Tensor values, Tensor indices)");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("mips", &mips_cpu); }

}  // namespace ot_flow
