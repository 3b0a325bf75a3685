// Stand-in for the CUDA runtime's header in the device emulation build (dim3 and the built-in
// variables come from device_emulation.h).
#pragma once

struct CUstream_st;
using cudaStream_t = CUstream_st*;
