// Every kernel launch of the CUDA ops: kernel<<<grid, block, shared_bytes, stream>>>(args...),
// then the launch check. One function instead of the launch syntax at each call, so that the
// CPU emulation of the device (tests/cpp/device_emulation, OT_FLOW_DEVICE_EMULATION) runs the
// ops' own host code, grids and chunk merges included, with the kernels on its emulated threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace ot_flow::cuda {

template <class Kernel, class... Args>
void launch_kernel(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, Args... args) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  (void)stream;
  ::ot_flow::emulation::launch(grid, block, shared_bytes, [&] { kernel(args...); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
#endif
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether `t` lives where the kernels read: on a CUDA device, or, on the emulated device (whose
// memory is the host's), on the CPU.
inline bool on_kernel_device(const at::Tensor& t) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}

}  // namespace ot_flow::cuda
