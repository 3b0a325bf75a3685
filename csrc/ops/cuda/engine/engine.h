// Entry points of the tensor-core streaming engine (csrc/ops/cuda/engine/), for the ops' CUDA
// dispatchers. The engine has not run on a GPU yet: it is opt-in (OT_FLOW_CUDA_ENGINE), and the
// FMA kernels beside it stay the default until its tests pass on one.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "../../gumbel_argmax.h"
#include "../../precision.h"
#include "kernel_traits.cuh"

namespace ot_flow::cuda::engine {

// True when the environment variable OT_FLOW_CUDA_ENGINE is "tensor_cores" (read on each call,
// so tests and scripts can switch it); "fma" or unset selects the FMA kernels. Anything else
// raises, naming the variable.
bool tensor_cores_selected();

// Whether "highest" runs as split float16 (OT_FLOW_ENGINE_HIGHEST=split_f16; DotMode::kSplitF16)
// rather than split TF32 (unset or "split_tf32"): opt-in until a GPU has measured both; anything
// else raises, naming the variable.
bool highest_as_split_f16();

// Whether lse (and so the Sinkhorn loop) and mips with k = 1 stream in 128-row blocks of 8 warps
// (OT_FLOW_ENGINE_BLOCK_ROWS=128) rather than 64-row blocks of 4 (unset or "64") where d > 8
// (packed operands: d > 16 words, then in 16-word slices; launch.cuh's with_traits): half the
// L2 reads of y, for twice the warps at each barrier; opt-in until a GPU has measured both.
// Anything else raises, naming the variable.
bool tall_blocks_selected();

// How the engine forms the dot products for an op's `precision`: "highest" in split TF32, or in
// split float16 where OT_FLOW_ENGINE_HIGHEST selects it (streamed_operands.h; mips stays in
// split TF32, whose error bound is relative to each row).
inline DotMode dot_mode(Precision precision) {
  switch (precision) {
    case Precision::TF32:
      return DotMode::kTF32;
    case Precision::BF16:
      return DotMode::kBF16;
    case Precision::Highest:
      break;
  }
  return highest_as_split_f16() ? DotMode::kSplitF16 : DotMode::kSplitTF32;
}

// Whether a call with inputs of `dtype` goes to the engine: the switch is on and the inputs are
// float32 or 16-bit (computed in float32); float64 keeps the exact FMA path.
inline bool engine_takes(at::ScalarType dtype) { return tensor_cores_selected() && dtype != at::kDouble; }

// Whether the engine computes this call: float32 inputs (float64 keeps the exact FMA path).
bool engine_handles(const at::Tensor& x);

// out_i = log sum_j exp(scale <x_i, y_j> + h_j); x (n, d), y (m, d), h (m) float32, contiguous,
// validated, on one CUDA device. Runs on the current stream.
at::Tensor lse_tensor_cores(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                            DotMode mode);

// Batched: x (B, n, d), y (B, m, d), h (B, m), each problem contiguous; out (B, n), problem b
// with scales[b]. One launch per 256 problems (the batch is the grid's z dimension).
at::Tensor lse_tensor_cores_batched(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                    const std::vector<double>& scales, DotMode mode);

// (mean, lse): mean_i = sum_j w_ij values_j with w_ij = exp(scale <x_i, y_j> + h_j - lse_i), in one
// pass; values (m, k) float32 contiguous. Rows without mass get mean 0 and lse -inf.
std::tuple<at::Tensor, at::Tensor> barycentric_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& h, double scale,
                                                            const at::Tensor& values, DotMode mode);

// Batched: x (B, n, d), y (B, m, d), h (B, m), values (B, m, k), each problem contiguous; mean
// (B, n, k) and lse (B, n), problem b with scales[b]. The batch is the grid's z dimension (times
// the value blocks): one launch per 256 problems, or fewer when k needs many value blocks.
std::tuple<at::Tensor, at::Tensor> barycentric_tensor_cores_batched(const at::Tensor& x, const at::Tensor& y,
                                                                    const at::Tensor& h,
                                                                    const std::vector<double>& scales,
                                                                    const at::Tensor& values, DotMode mode);

// (index, value) of argmax_j scale <x_i, y_j> + h_j + G(key, i, j) (gumbel_argmax.h), the noise
// drawn only where a column can still win; index int64, value float64.
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                              const at::Tensor& h, double scale, const GumbelKey& key,
                                                              DotMode mode);

// Batched: x (B, n, d), y (B, m, d), h (B, m), each problem contiguous; index and value (B, n),
// problem b with scales[b] and keys[b], drawing exactly what the 2-D call with keys[b] draws. The
// keys may differ in seed and offset only. One launch per 256 problems (grid z).
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_tensor_cores_batched(const at::Tensor& x, const at::Tensor& y,
                                                                      const at::Tensor& h,
                                                                      const std::vector<double>& scales,
                                                                      const std::vector<GumbelKey>& keys,
                                                                      DotMode mode);

// The largest k that mips searches in one streaming pass (mips_engine.cu): 1, and 2 for the
// semidiscrete fit's Newton step; larger k take three passes.
constexpr int64_t kMipsOnePassMaxK = 2;

// Entries a row's candidate list holds per column chunk and per unit of k in mips's one pass: on
// random data a row is expected to list about k (ln(tiles) + 1) columns a chunk, those that raise
// its running k-th score (a harmonic number, 9 at 4,000 tiles, 15 at a million; not measured); a
// row that lists more takes a second streaming pass, in its row block only.
constexpr int64_t kMipsListPerChunk = 32;

// mips, exact in every mode, for 1 <= k <= min(m, kMipsCudaMaxK): (values (n, k) float32,
// indices (n, k) int64), each row's k largest float64 scores <x_i, y_j> + bias_j rounded to
// float32, sorted, ties to the lower column; bias (m) float32 (-inf drops a column; dropped
// columns are never returned: a row short of them gets -inf and -1, top_k_list.h's empty slots).
// list_per_chunk: the one pass's list entries per chunk and unit of k (tests make it small to
// overflow the lists).
std::tuple<at::Tensor, at::Tensor> mips_tensor_cores(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias,
                                                     int64_t k, DotMode mode,
                                                     int64_t list_per_chunk = kMipsListPerChunk);

}  // namespace ot_flow::cuda::engine
