#!/usr/bin/env bash
# The C++ (CPU) kernels under AddressSanitizer: a copy of the working tree in build/asan-tree,
# its extension built CPU-only with -fsanitize=address, and pytest run against it with the ASan
# runtime preloaded; an out-of-bounds read or write, a use after free or a double free stops the
# run with its report (under build/asan-tree/asan.*). First, the tensor-core engine's kernels on
# the emulated device (tests/cpp/device_emulation) built with ASan as well: a kernel's read past
# its inputs, which a GPU reports as an illegal address or not at all, stops that run.
#   bash scripts/asan-check.sh [PYTEST ARGS]   (default: tests, less the one test of peak RSS,
#   which ASan's shadow memory and quarantine inflate)
# Needs `make build` first (the .venv); a few minutes to build, the tests run ~2x slower.
# libstdc++ is preloaded with libasan so that the C++ exceptions of torch's checks (every
# bad-input test) pass ASan's interceptor.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-$root/.venv/bin/python}
tree=$root/build/asan-tree
mkdir -p "$tree"
git ls-files -z | xargs -0 cp --parents -t "$tree"
cd "$tree"
CFLAGS="-fsanitize=address -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address" OT_FLOW_CUDA=0 \
  "$PY" setup.py build_ext --inplace > asan-build.log 2>&1 || { tail -30 asan-build.log; exit 1; }
rm -f asan.*
cmake -S tests/cpp -B build/emulation -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="-O1 -fsanitize=address -fno-omit-frame-pointer" -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$PY" > asan-emulation.log 2>&1 &&
  cmake --build build/emulation -j "$(nproc)" --target ot_flow_engine_emulated_tests >> asan-emulation.log 2>&1 ||
  { tail -30 asan-emulation.log; exit 1; }
# (ASan warns once that it does not fully support swapcontext, which the emulation's fibers use.)
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 build/emulation/ot_flow_engine_emulated_tests
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:halt_on_error=1:log_path=$tree/asan
status=0
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests --deselect tests/test_sinkhorn.py::test_memory_stays_linear_unless_cached)
PYTHONPATH=$tree "$PY" -X faulthandler -m pytest -q -p no:cacheprovider "${args[@]}" || status=$?
if compgen -G "asan.*" > /dev/null; then
  echo "AddressSanitizer reports:"
  head -60 asan.*
  exit 1
fi
exit $status
