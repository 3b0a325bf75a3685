// The one TORCH_LIBRARY block of the extension. Every op adds its schema with a
// TORCH_LIBRARY_FRAGMENT in csrc/ops/<op>.cpp and its kernels with TORCH_LIBRARY_IMPL
// next to them, so this file only opens the namespace and makes ot_flow._C importable.
#include <Python.h>
#include <torch/library.h>

#ifndef OT_FLOW_TORCH_VERSION
#define OT_FLOW_TORCH_VERSION "unknown"
#endif
#ifndef OT_FLOW_CUDA_VERSION
#define OT_FLOW_CUDA_VERSION ""
#endif

TORCH_LIBRARY(ot_flow, m) {}

// Importing ot_flow._C runs the static registrations above and below. The module records
// which torch and CUDA it was compiled against so that ot_flow/_extension.py can refuse a
// stale build with a message instead of a crash later.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ot_flow compiled ops", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "built_with_torch", OT_FLOW_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "built_with_cuda", OT_FLOW_CUDA_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
