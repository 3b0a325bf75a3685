// Marks helpers that the C++ (CPU) kernels and the CUDA kernels share.
#pragma once

#if defined(__CUDACC__)
#define OT_FLOW_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define OT_FLOW_HOST_DEVICE inline
#endif
