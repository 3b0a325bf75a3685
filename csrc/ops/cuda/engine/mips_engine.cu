// ot_flow::mips on the tensor-core engine, exact (mips_epilogue.cuh has the bounds).
// k <= 2: one streaming pass lists, per row, the columns that could be in its exact top k
//   against a running lower bound of the row's k-th largest computed score (and records each
//   chunk's bound); a warp per row rescores in float64 the listed columns within the bound of the
//   row's final one. k = 1: rows whose list overflowed take a second streaming pass that rescores
//   as it goes, launched over every row block but run only by those that hold such a row (no
//   host synchronisation to learn which); its column chunks are merged by the same warp. k = 2:
//   such rows are listed again in a second pass, in their row blocks only, against the row's
//   final bound, which overflows only on near-ties (then the row's rescoring warp scans all its
//   columns, as for larger k).
// k > 2: pass 1 finds the maxima of each row's 64 column groups per chunk, whose k-th largest
//   (at::topk on the device) sets the row's threshold; pass 2 lists the columns that reach it;
//   pass 3, one warp per row, rescores the list in float64 into the row's top-k (top_k_list.h).
// The streaming passes are the engine's loop with their epilogue. Rows run in slices, which
// bound the candidate lists' memory.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../../mips.h"
#include "../../top_k_list.h"
#include "../kernel_launch.cuh"
#include "engine.h"
#include "launch.cuh"
#include "mips_epilogue.cuh"
#include "stream_loop.cuh"
#include "streamed_operands.h"

namespace ot_flow::cuda::engine {
namespace {

// What a streaming pass reads (streamed_operands.h): x and y themselves, or their bfloat16
// packing (d its words per row); the rescoring reads x and y themselves (RescoreInputs).
struct Streamed {
  const float* x;
  const float* y;
  int64_t d;
};

// Every mips streaming pass runs eight warps a multiprocessor: two blocks of 4 warps, or one of 8
// (top-1's opt-in 128-row blocks), up to 255 registers a thread: the 4-warp group maxima's
// kernel spilled on sm_90 when ptxas capped it at 96 without the bound; the passes hold 106-198
// (the bfloat16 32-word slices the most). They stream with one accumulator per tile
// (RoundedSlices = false): dot_error_bound budgets the tensor cores' truncation (stream_loop.cuh).
template <class Traits>
constexpr int mips_blocks_per_multiprocessor() {
  return 8 / Traits::kWarps;
}

// The one pass of k <= 2 (K = k): each row's list of columns that could be in its top K
// (RunningTopEpilogue), and its running bound in this chunk, at part_top[(chunk * n + row) * K + i].
template <class Traits, int Width, int K>
__global__ void __launch_bounds__(Traits::kThreads, mips_blocks_per_multiprocessor<Traits>())
    mips_running_list_kernel(const Streamed streamed, const RescoreInputs inputs, int64_t n, int64_t m,
                             int64_t cols_per_chunk,
                             int32_t* __restrict__ count, int64_t* __restrict__ candidates,
                             float* __restrict__ candidate_scores, int64_t capacity, float* __restrict__ part_top) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  RunningTopEpilogue<Traits, K> epi(inputs, row0 + warp * Traits::kWarpRows, n, lane, count, candidates,
                                    candidate_scores, capacity);
  stream_column_tiles<Traits, Width, false>(streamed.x, streamed.y, n, streamed.d, row0, col_begin, col_end, smem,
                                            epi);
  epi.finish(n, lane, part_top, blockIdx.y);
}

// Whether this block holds a row whose one-pass list overflowed (count > capacity), the same
// answer in all its threads (a barrier that every thread reaches: the block may then return).
template <class Traits>
__device__ __forceinline__ bool block_holds_overflow(int64_t row0, int64_t n, const int32_t* __restrict__ count,
                                                     int64_t capacity) {
  const int64_t own_row = row0 + threadIdx.x;  // kThreads >= kBlockRows: a thread per row
  return __syncthreads_or(threadIdx.x < Traits::kBlockRows && own_row < n && count[own_row] > capacity);
}

// Top-1's second pass, for the rows whose list overflowed: every column within the bound of the
// row's best rescored as the tiles stream (RescoreEpilogue), each chunk's (value, index) at
// part_*[chunk * n + row]. A block none of whose rows overflowed returns at once.
template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, mips_blocks_per_multiprocessor<Traits>())
    mips_top1_overflow_kernel(const Streamed streamed, const RescoreInputs inputs, int64_t n, int64_t m,
                              int64_t cols_per_chunk,
                              const int32_t* __restrict__ count, int64_t capacity, double* __restrict__ part_value,
                              int64_t* __restrict__ part_index) {
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  if (!block_holds_overflow<Traits>(row0, n, count, capacity)) return;
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  RescoreEpilogue<Traits> epi(inputs, row0 + warp * Traits::kWarpRows, n, lane);
  stream_column_tiles<Traits, Width, false>(streamed.x, streamed.y, n, streamed.d, row0, col_begin, col_end, smem,
                                            epi);
  epi.finish(n, lane, part_value, part_index, blockIdx.y);
}

// Pass 1 of top-k: the group maxima of each row in this chunk, at
// part_group_max[(chunk * n + row) * 64 + group] (GroupMaxEpilogue).
template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, mips_blocks_per_multiprocessor<Traits>())
    mips_group_maxima_kernel(const Streamed streamed, const float* __restrict__ bias, int64_t n, int64_t m,
                             int64_t cols_per_chunk, float* __restrict__ part_group_max) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  GroupMaxEpilogue<Traits> epi(bias);
  stream_column_tiles<Traits, Width, false>(streamed.x, streamed.y, n, streamed.d, row0, col_begin, col_end, smem,
                                            epi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  epi.finish(row0 + warp * Traits::kWarpRows, n, lane, part_group_max, blockIdx.y);
}

// Pass 2 of top-k, and top-2's second pass: each row's list of the columns within twice the
// bound of its reference score (CandidateEpilogue). Top-2's (`only_over`: the one pass's counts)
// lists only the rows whose one-pass list overflowed, into the same rows of the lists (whose
// entries are of no use) and counting in a second counter; a block none of whose rows
// overflowed returns at once.
template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, mips_blocks_per_multiprocessor<Traits>())
    mips_candidates_kernel(const Streamed streamed, const RescoreInputs inputs, int64_t n, int64_t m,
                           int64_t cols_per_chunk, const int32_t* __restrict__ only_over,
                           int32_t* __restrict__ count, int64_t* __restrict__ candidates,
                           float* __restrict__ candidate_scores, int64_t capacity) {
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  if (only_over != nullptr && !block_holds_overflow<Traits>(row0, n, only_over, capacity)) return;  // uniform
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  CandidateEpilogue<Traits> epi(inputs, row0 + warp * Traits::kWarpRows, n, lane, count, candidates,
                                candidate_scores, capacity, only_over);
  stream_column_tiles<Traits, Width, false>(streamed.x, streamed.y, n, streamed.d, row0, col_begin, col_end, smem,
                                            epi);
}

constexpr int kSelectWarps = 8;

// Top-1's answer, one warp per row: the lanes rescore in float64 the listed columns whose
// computed score reaches the row's threshold (its best over all chunks minus 2 delta), or, for a
// row whose list overflowed, take the overflow pass's chunk answers; the warp merges them
// (keep_better: ties to the lower column). Writes values (float32, the float64 score rounded)
// and indices at row; a row with no column left gets -inf and -1.
__global__ void __launch_bounds__(32 * kSelectWarps)
    mips_top1_select_kernel(const RescoreInputs inputs, int64_t n, int64_t chunks, const int32_t* __restrict__ count,
                            const int64_t* __restrict__ candidates, const float* __restrict__ candidate_scores,
                            int64_t capacity, const double* __restrict__ part_value,
                            const int64_t* __restrict__ part_index, float* __restrict__ values,
                            int64_t* __restrict__ indices) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSelectWarps + warp;
  if (row >= n) return;  // the whole warp
  double best = -::cuda::std::numeric_limits<double>::infinity();
  int64_t best_j = -1;
  const int64_t listed = count[row];
  if (listed > capacity) {
    for (int64_t c = lane; c < chunks; c += 32) {
      keep_better(best, best_j, part_value[c * n + row], part_index[c * n + row]);
    }
  } else {
    const float threshold = candidate_threshold(inputs, row, n, score_error_bound(inputs, row, n));
    for (int64_t i = lane; i < listed; i += 32) {
      if (!(candidate_scores[row * capacity + i] >= threshold)) continue;
      const int64_t col = candidates[row * capacity + i];
      keep_better(best, best_j, exact_score(inputs, row, col), col);
    }
  }
  keep_better_over_lanes<32>(best, best_j);
  if (lane == 0) {
    values[row] = static_cast<float>(best);
    indices[row] = best_j;
  }
}

// The top-k answer (pass 3 of k > 2; top-2's after its one or two passes), one warp per row:
// the lanes rescore in float64, 32 at a time, the listed columns whose computed score reaches the
// row's threshold (its reference score minus 2 delta). The list is the row's second one (counted
// in `recount`) where top-2's first overflowed; where the list in use overflowed, all m columns.
// Lane 0 enters those that rank before the row's k-th entry into the row's list in shared memory
// (any order: top_k_insert ranks ties by column). Writes values (float32, the float64 score
// rounded) and indices at row * k.
__global__ void __launch_bounds__(32 * kSelectWarps)
    mips_select_top_k_kernel(const RescoreInputs inputs, int64_t n, int64_t m, int64_t k,
                             const int32_t* __restrict__ count, const int32_t* __restrict__ recount,
                             const int64_t* __restrict__ candidates, const float* __restrict__ candidate_scores,
                             int64_t capacity, float* __restrict__ values, int64_t* __restrict__ indices) {
  __shared__ double list_value[kSelectWarps][kMipsCudaMaxK];
  __shared__ int64_t list_index[kSelectWarps][kMipsCudaMaxK];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSelectWarps + warp;
  if (row >= n) return;  // the whole warp: no block barrier below
  double* best = list_value[warp];
  int64_t* best_j = list_index[warp];
  for (int64_t e = lane; e < k; e += 32) {
    best[e] = -::cuda::std::numeric_limits<double>::infinity();
    best_j[e] = -1;
  }
  __syncwarp();
  int64_t counted = count[row];
  if (recount != nullptr && counted > capacity) counted = recount[row];
  const bool overflow = counted > capacity;
  const int64_t listed = overflow ? m : counted;
  const float threshold = candidate_threshold(inputs, row, n, score_error_bound(inputs, row, n));
  for (int64_t base = 0; base < listed; base += 32) {
    const int64_t i = base + lane;
    double score = -::cuda::std::numeric_limits<double>::infinity();
    int64_t col = -1;
    if (i < listed) {
      col = overflow ? i : candidates[row * capacity + i];
      const bool reaches = overflow || candidate_scores[row * capacity + i] >= threshold;
      if (reaches && inputs.bias[col] != neg_inf_f()) score = exact_score(inputs, row, col);
    }
    unsigned pending = __ballot_sync(0xffffffffu, ranks_before(score, col, best[k - 1], best_j[k - 1]) &&
                                                      score != -::cuda::std::numeric_limits<double>::infinity());
    while (pending != 0) {  // warp-uniform
      const int source = __ffs(pending) - 1;
      pending &= pending - 1;
      const double value = __shfl_sync(0xffffffffu, score, source);
      const int64_t index = __shfl_sync(0xffffffffu, col, source);
      if (lane == 0) top_k_insert(best, best_j, k, value, index);
      __syncwarp();
    }
  }
  for (int64_t e = lane; e < k; e += 32) {
    values[row * k + e] = static_cast<float>(best[e]);
    indices[row * k + e] = best_j[e];
  }
}

// What both searches read beside x, y and the bias: the operands their passes stream (x and y, or
// their bfloat16 packing) and the bounds' ingredients, |x_i|, max_j |y_j| and max_j |bias_j|
// (finite ones), all on the device: no host synchronisation.
struct SearchOperands {
  StreamedOperands operands;  // problems of one: (1, n, words), (1, m, words)
  at::Tensor x_norm, y_norm_max, bias_max;

  SearchOperands(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias, DotMode mode)
      : operands(streamed_operands(x.unsqueeze(0), y.unsqueeze(0), mode)),
        x_norm(at::linalg_vector_norm(x, 2, {1}, false, std::nullopt).contiguous()),
        y_norm_max(at::linalg_vector_norm(y, 2, {1}, false, std::nullopt).max()),
        bias_max(at::linalg_vector_norm(bias.masked_fill(at::isneginf(bias), 0), INFINITY)) {}

  // The streamed operands from row `first` of x on.
  Streamed streamed_from(int64_t first) const {
    return {operands.x.const_data_ptr<float>() + first * operands.d, operands.y.const_data_ptr<float>(), operands.d};
  }

  // Whether those rows take 16-byte copies.
  bool rows_aligned16_from(int64_t first) const {
    const Streamed s = streamed_from(first);
    return rows_aligned16(s.x, s.y, s.d);
  }

  // The rescoring inputs of rows [first, ...) of x (contiguous float32), reference scores unset.
  RescoreInputs rescore_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias, int64_t first,
                               DotMode mode) const {
    const int64_t d = x.size(1);
    return {x.const_data_ptr<float>() + first * d, y.const_data_ptr<float>(), bias.const_data_ptr<float>(), nullptr,
            x_norm.const_data_ptr<float>() + first, y_norm_max.const_data_ptr<float>(),
            bias_max.const_data_ptr<float>(), d, dot_error_bound(mode, d)};
  }
};

// mips's bound is relative to each row's norm, which split float16's subnormal term is not
// (kernel_traits.cuh): "highest" searches in split TF32.
DotMode searched_mode(DotMode mode) { return mode == DotMode::kSplitF16 ? DotMode::kSplitTF32 : mode; }

// Each row's k-th largest of its chunks' parts (chunks, rows, g): (rows), on the device.
at::Tensor row_kth_largest(const at::Tensor& parts, int64_t k) {
  const at::Tensor per_row = parts.permute({1, 0, 2}).reshape({parts.size(1), -1});
  return (k == 1 ? per_row.amax(1) : std::get<0>(per_row.topk(k, 1)).select(1, k - 1)).contiguous();
}

// k <= kMipsOnePassMaxK: the one streaming pass, then top-1's overflow pass and select kernel, or
// top-2's relisting pass and the top-k select kernel; into values and indices (n, k).
void search_in_one_pass(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias, int64_t k, DotMode mode,
                        int64_t list_per_chunk, at::Tensor& values, at::Tensor& indices) {
  const int64_t n = x.size(0), m = y.size(0);
  const SearchOperands search(x, y, bias, mode);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // Slices of rows keep the lists within 2^22 entries (48 MiB): slices of 2^17 / k rows make
  // 2,048 / k row blocks, one column chunk on any GPU of fewer than 1,024 / k block slots.
  const int64_t slice_rows = (int64_t{1} << 17) / k;
  for (int64_t first = 0; first < n; first += slice_rows) {
    const int64_t rows = std::min(slice_rows, n - first);
    const Streamed streamed = search.streamed_from(first);
    auto search_rows = [&](auto traits, auto width) {
      using Traits = decltype(traits);
      constexpr int kWidth = decltype(width)::value;
      const ChunkPlan plan = plan_launch<Traits, mips_blocks_per_multiprocessor<Traits>()>(rows, m);
      TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.mips: too many rows");
      const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
      // A row lists about k (ln(tiles) + 1) columns a chunk on random data (engine.h).
      const int64_t capacity = std::min(m, k * list_per_chunk * plan.chunks);
      at::Tensor count = at::zeros({rows}, x.options().dtype(at::kInt));
      at::Tensor candidates = at::empty({rows, capacity}, x.options().dtype(at::kLong));
      at::Tensor candidate_scores = at::empty({rows, capacity}, x.options());
      at::Tensor part_top = at::empty({plan.chunks, rows, k}, x.options());
      RescoreInputs inputs = search.rescore_inputs(x, y, bias, first, mode);
      auto stream_lists = [&](auto kernel) {
        launch_kernel(kernel, grid, Traits::kThreads, 0, stream, streamed, inputs, rows, m, plan.cols_per_chunk,
                      count.data_ptr<int32_t>(), candidates.data_ptr<int64_t>(), candidate_scores.data_ptr<float>(),
                      capacity, part_top.data_ptr<float>());
      };
      const unsigned blocks = static_cast<unsigned>((rows + kSelectWarps - 1) / kSelectWarps);
      if (k == 2) {
        stream_lists(mips_running_list_kernel<Traits, kWidth, 2>);
        const at::Tensor row_bound = row_kth_largest(part_top, 2);
        inputs.row_best = row_bound.const_data_ptr<float>();
        at::Tensor recount = at::zeros({rows}, x.options().dtype(at::kInt));
        launch_kernel(mips_candidates_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream, streamed, inputs,
                      rows, m, plan.cols_per_chunk, count.const_data_ptr<int32_t>(), recount.data_ptr<int32_t>(),
                      candidates.data_ptr<int64_t>(), candidate_scores.data_ptr<float>(), capacity);
        launch_kernel(mips_select_top_k_kernel, blocks, 32 * kSelectWarps, 0, stream, inputs, rows, m, k,
                      count.const_data_ptr<int32_t>(), recount.const_data_ptr<int32_t>(),
                      candidates.const_data_ptr<int64_t>(), candidate_scores.const_data_ptr<float>(), capacity,
                      values.data_ptr<float>() + first * k, indices.data_ptr<int64_t>() + first * k);
        return;
      }
      stream_lists(mips_running_list_kernel<Traits, kWidth, 1>);
      const at::Tensor row_best = row_kth_largest(part_top, 1);
      inputs.row_best = row_best.const_data_ptr<float>();
      at::Tensor part_value = at::empty({plan.chunks, rows}, x.options().dtype(at::kDouble));
      at::Tensor part_index = at::empty({plan.chunks, rows}, x.options().dtype(at::kLong));
      launch_kernel(mips_top1_overflow_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream, streamed, inputs,
                    rows, m, plan.cols_per_chunk, count.const_data_ptr<int32_t>(), capacity,
                    part_value.data_ptr<double>(), part_index.data_ptr<int64_t>());
      launch_kernel(mips_top1_select_kernel, blocks, 32 * kSelectWarps, 0, stream, inputs, rows, plan.chunks,
                    count.const_data_ptr<int32_t>(), candidates.const_data_ptr<int64_t>(),
                    candidate_scores.const_data_ptr<float>(), capacity, part_value.const_data_ptr<double>(),
                    part_index.const_data_ptr<int64_t>(), values.data_ptr<float>() + first,
                    indices.data_ptr<int64_t>() + first);
    };
    // 128-row blocks (OT_FLOW_ENGINE_BLOCK_ROWS=128, opt-in as lse's): half the L2 reads of y,
    // which bound the search at large d (the README's counts: 65 GB a pass at #17's d = 512 in
    // bfloat16 64-row blocks).
    if (tall_blocks_selected()) {
      with_traits<32, 8, false>(mode, streamed.d, search.rows_aligned16_from(first), search_rows);
    } else {
      with_traits<32, 4, false>(mode, streamed.d, search.rows_aligned16_from(first), search_rows);
    }
  }
}

// k > kMipsOnePassMaxK: the three passes, into values and indices (n, k).
void search_in_three_passes(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias, int64_t k,
                            DotMode mode, at::Tensor& values, at::Tensor& indices) {
  const int64_t n = x.size(0), m = y.size(0);
  const SearchOperands search(x, y, bias, mode);
  // Columns that reach the threshold, random N(0, 1) scores (a simulation of the group maxima,
  // 64 rows, m = 4099 to 10^6): k = 5: 5.1-5.2 on average, 7 at most; k = 64: 280-310 on average,
  // 660 at most with one column chunk, 68 and 74 with eight. A list 16k + 256 long overflows only
  // on near-ties, where pass 3 scans the row. Slices of rows keep the lists within 2^23 entries
  // (96 MiB).
  const int64_t capacity = std::min<int64_t>(16 * k + 256, m);
  const int64_t slice_rows = std::max<int64_t>(64, (int64_t{1} << 23) / capacity);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t first = 0; first < n; first += slice_rows) {
    const int64_t rows = std::min(slice_rows, n - first);
    const Streamed streamed = search.streamed_from(first);
    at::Tensor count = at::zeros({rows}, x.options().dtype(at::kInt));
    at::Tensor candidates = at::empty({rows, capacity}, x.options().dtype(at::kLong));
    at::Tensor candidate_scores = at::empty({rows, capacity}, x.options());
    at::Tensor threshold_score;  // L_i, kept alive until pass 3 has run
    RescoreInputs inputs = search.rescore_inputs(x, y, bias, first, mode);
    with_traits<32, 4, false>(mode, streamed.d, search.rows_aligned16_from(first), [&](auto traits, auto width) {
      using Traits = decltype(traits);
      constexpr int kWidth = decltype(width)::value;
      constexpr int kGroups = GroupMaxEpilogue<Traits>::kGroups;
      static_assert(kGroups >= kMipsCudaMaxK, "one chunk's group maxima cover the largest k");
      const ChunkPlan plan = plan_launch<Traits, mips_blocks_per_multiprocessor<Traits>()>(rows, m);
      const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
      at::Tensor part_group_max = at::empty({plan.chunks, rows, kGroups}, x.options());
      launch_kernel(mips_group_maxima_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream, streamed,
                    bias.const_data_ptr<float>(), rows, m, plan.cols_per_chunk, part_group_max.data_ptr<float>());
      threshold_score = row_kth_largest(part_group_max, k);
      inputs.row_best = threshold_score.const_data_ptr<float>();
      launch_kernel(mips_candidates_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream, streamed, inputs,
                    rows, m, plan.cols_per_chunk, static_cast<const int32_t*>(nullptr), count.data_ptr<int32_t>(),
                    candidates.data_ptr<int64_t>(), candidate_scores.data_ptr<float>(), capacity);
    });
    const unsigned blocks = static_cast<unsigned>((rows + kSelectWarps - 1) / kSelectWarps);
    launch_kernel(mips_select_top_k_kernel, blocks, 32 * kSelectWarps, 0, stream, inputs, rows, m, k,
                  count.const_data_ptr<int32_t>(), static_cast<const int32_t*>(nullptr),
                  candidates.const_data_ptr<int64_t>(), candidate_scores.const_data_ptr<float>(), capacity,
                  values.data_ptr<float>() + first * k, indices.data_ptr<int64_t>() + first * k);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mips_tensor_cores(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias,
                                                     int64_t k, DotMode requested, int64_t list_per_chunk) {
  const DotMode mode = searched_mode(requested);
  TORCH_CHECK(engine_handles(x), "ot_flow.mips: the tensor-core engine takes float32 inputs, got ", x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0);
  TORCH_CHECK(k >= 1 && k <= kMipsCudaMaxK && k <= m, "ot_flow.mips: k = ", k, " outside [1, min(m, ",
              kMipsCudaMaxK, ")]");
  TORCH_CHECK(list_per_chunk >= 1, "ot_flow.mips: list_per_chunk = ", list_per_chunk, " must be positive");
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor values = at::empty({n, k}, x.options());
  at::Tensor indices = at::empty({n, k}, x.options().dtype(at::kLong));
  if (n == 0) return {values, indices};
  if (k <= kMipsOnePassMaxK) {
    search_in_one_pass(x, y, bias, k, mode, list_per_chunk, values, indices);
  } else {
    search_in_three_passes(x, y, bias, k, mode, values, indices);
  }
  return {values, indices};
}

}  // namespace ot_flow::cuda::engine
