// The running top-k list of ot_flow::mips, shared by its CPU and CUDA kernels: k (value,
// index) entries sorted by value descending, then index ascending. An empty slot holds
// (-inf, -1); -inf values are never entered, so they never come out either.
#pragma once

#include <cstdint>
#include <limits>

#include "host_device.h"

namespace ot_flow {

// Whether (value, index) ranks before (other_value, other_index): larger value, or equal
// value and lower index; everything ranks before an empty slot.
template <typename T>
OT_FLOW_HOST_DEVICE bool ranks_before(T value, int64_t index, T other_value, int64_t other_index) {
  return value > other_value || (value == other_value && (other_index < 0 || index < other_index));
}

// Enters (value, index) into values[0..k), indices[0..k) if it ranks before the k-th entry.
template <typename T>
OT_FLOW_HOST_DEVICE void top_k_insert(T* values, int64_t* indices, int64_t k, T value, int64_t index) {
  if (value == -std::numeric_limits<T>::infinity() || !ranks_before(value, index, values[k - 1], indices[k - 1])) {
    return;
  }
  int64_t p = k - 1;
  while (p > 0 && ranks_before(value, index, values[p - 1], indices[p - 1])) {
    values[p] = values[p - 1];
    indices[p] = indices[p - 1];
    --p;
  }
  values[p] = value;
  indices[p] = index;
}

}  // namespace ot_flow
