// The inline PTX of the CUDA kernels, in one file: each instruction a function named after it,
// with the PTX ISA's operand order and meaning.
//
// Under OT_FLOW_DEVICE_EMULATION (the CPU emulation of the device in tests/cpp/device_emulation,
// which runs the engine's own sources on the host) each function calls the emulation's model of
// the instruction instead, written from the ISA's text; nothing else in the kernels differs
// between the two builds.
#pragma once

#include <cstdint>

namespace ot_flow::cuda::ptx {

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, c: d = a . b + c for the warp's
// 16 x 8 x 8 tile (fragment layouts: engine/mma_tile.cuh).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::mma_m16n8k8_tf32(d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::mma_m16n8k16_bf16(d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 d, a, b, c (the bf16 shape's layouts).
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::mma_m16n8k16_f16(d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// cvt.rn.bf16x2.f32 d, a, b: a and b rounded to bfloat16 (to nearest even), a in the upper half
// of d, b in the lower.
__device__ __forceinline__ uint32_t cvt_rn_bf16x2_f32(float a, float b) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  return ::ot_flow::emulation::cvt_rn_bf16x2_f32(a, b);
#else
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(a), "f"(b));
  return d;
#endif
}

// cvt.rn.f16x2.f32 d, a, b: a and b rounded to float16 (to nearest even; past 65504, to infinity),
// a in the upper half of d, b in the lower.
__device__ __forceinline__ uint32_t cvt_rn_f16x2_f32(float a, float b) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  return ::ot_flow::emulation::cvt_rn_f16x2_f32(a, b);
#else
  uint32_t d;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(a), "f"(b));
  return d;
#endif
}

// cvt.f32.f16 d, a: the float16 in the low 16 bits of a, exactly, as a float.
__device__ __forceinline__ float cvt_f32_f16(uint32_t a) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  return ::ot_flow::emulation::cvt_f32_f16(a);
#else
  float d;
  asm("cvt.f32.f16 %0, %1;\n" : "=f"(d) : "h"(static_cast<unsigned short>(a & 0xffffu)));
  return d;
#endif
}

// ex2.approx.ftz.f32: 2^v, subnormal inputs and results flushed to zero.
__device__ __forceinline__ float ex2_approx_ftz(float v) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  return ::ot_flow::emulation::ex2_approx_ftz(v);
#else
  float out;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(out) : "f"(v));
  return out;
#endif
}

// cp.async.{cg,ca}.shared.global [dst], [src], Bytes, src_bytes: copies src_bytes bytes from
// global src to shared dst and zero-fills the rest of the Bytes, asynchronously. 16 bytes go
// through L2 only (cg), unless KeepInL1 (ca: cached in L1 too, for data the block reads again);
// 4 bytes always through L1 (ca, the only form for them). It lands by the cp.async.wait_group
// that covers it.
template <int Bytes, bool KeepInL1 = false>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 16, "cp.async moves 4 or 16 bytes here");
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::cp_async(dst, src, Bytes, src_bytes);
#else
  const unsigned dst_shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (Bytes == 16 && KeepInL1) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_shared), "l"(src), "r"(src_bytes));
  } else if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_shared), "l"(src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst_shared), "l"(src), "r"(src_bytes));
  }
#endif
}

// cp.async.commit_group: the thread's copies issued since the last commit form one group.
__device__ __forceinline__ void cp_async_commit_group() {
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::cp_async_commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// cp.async.wait_group Pending: waits until at most Pending of the thread's committed groups are
// still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait_group() {
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::cp_async_wait_group(Pending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

}  // namespace ot_flow::cuda::ptx
