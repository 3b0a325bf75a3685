// Stand-in for torch's header in the device emulation build (device_emulation.h): the current
// stream and the device's properties, as the engine's host code asks for them.
#pragma once

#include <cuda_runtime.h>

namespace at::cuda {

struct EmulatedDeviceProperties {
  int multiProcessorCount;
};

inline const EmulatedDeviceProperties* getCurrentDeviceProperties() {
  static EmulatedDeviceProperties properties;
  properties.multiProcessorCount = ::ot_flow::emulation::settings().multiprocessors;
  return &properties;
}

inline cudaStream_t getCurrentCUDAStream() { return nullptr; }

}  // namespace at::cuda
