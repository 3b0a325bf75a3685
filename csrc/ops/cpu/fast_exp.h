// A branch-free exp that GCC and Clang vectorise inside `#pragma omp simd` loops. std::exp
// is a library call that blocks vectorisation, and ATen's Vectorized<T>::exp is only fast
// when the extension is compiled with ATen's own CPU_CAPABILITY machinery.
//
// Method: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its Taylor
// polynomial, 2^n assembled in the exponent bits. The shifter constant 1.5 * 2^p rounds
// x log2(e) to the nearest integer n and leaves n in the low mantissa bits, so no
// float->int conversion is needed. Relative error: a few ulp in float (degree 7,
// truncation 5e-9) and in double (degree 13, truncation 4e-18). Inputs are clamped to the
// normal range, so very negative arguments give a tiny positive number instead of 0;
// callers only sum exp(v - max) <= 1, where that difference is far below rounding.
// The clamps vectorise only with -fno-trapping-math (setup.py sets it): otherwise GCC keeps
// the comparisons as branches and the loop runs scalar, about 8x slower.
#pragma once

#include <cstdint>
#include <cstring>

namespace ot_flow {

inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float kd = x * 1.44269504088896341f + shifter;
  const float n = kd - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  std::uint32_t bits;
  std::memcpy(&bits, &kd, sizeof(bits));
  bits = (bits + 127u) << 23;  // (n + 127) in the exponent field; n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double fast_exp(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double kd = x * 1.4426950408889634074 + shifter;
  const double n = kd - shifter;
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  std::uint64_t bits;
  std::memcpy(&bits, &kd, sizeof(bits));
  bits = (bits + 1023u) << 52;  // (n + 1023) in the exponent field; n in [-1022, 1023]
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace ot_flow
