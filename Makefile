# Two commands do everything on a bare machine: `make demo` (the main job) and `make test`.
# Each creates .venv with the pinned torch when missing, builds ot_flow._C in place when a
# source changed, and runs. A second run reuses both and starts in seconds.

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MAX_JOBS ?= $(shell nproc)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

VENV_STAMP  := $(VENV)/.requirements-installed
BUILD_STAMP := build/.ot_flow-built
SOURCES     := setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test build pytest cpptest gpu-check bench clean

demo: $(BUILD_STAMP)
	$(PY) -m ot_flow demo

test: pytest cpptest

build: $(BUILD_STAMP)

$(VENV_STAMP): requirements.txt requirements-test-nodeps.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-test-nodeps.txt
	touch $@

$(BUILD_STAMP): $(VENV_STAMP) $(SOURCES)
	$(PY) setup.py build_ext --inplace
	mkdir -p build && touch $@

pytest: $(BUILD_STAMP)
	$(PY) -m pytest tests

# GoogleTest of the C++ kernels, built by CMake against the pip-installed libtorch.
cpptest: $(BUILD_STAMP)
	@command -v cmake >/dev/null && test -f /usr/include/gtest/gtest.h || scripts/install-system-deps.sh
	cmake -S tests/cpp -B build/cpp -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE=$(CURDIR)/$(PY) > build/cpp-configure.log || (cat build/cpp-configure.log; false)
	cmake --build build/cpp -j $(MAX_JOBS)
	cd build/cpp && ctest --output-on-failure

# On a machine with an NVIDIA GPU and a preinstalled PyTorch (no .venv): build, CUDA tests,
# short benchmark. See scripts/gpu-check.sh.
gpu-check:
	bash scripts/gpu-check.sh

BENCH_STAMP := $(VENV)/.bench-requirements-installed

$(BENCH_STAMP): requirements-bench.txt requirements-bench-nodeps.txt $(VENV_STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-bench-nodeps.txt
	touch $@

# Side-by-side benchmarks with the peers; outputs under benchmarks/results/.
bench: $(BUILD_STAMP) $(BENCH_STAMP)
	$(PY) benchmarks/bench_lse.py --out benchmarks/results/lse-cpu.txt
	$(PY) benchmarks/bench_sinkhorn.py --out benchmarks/results/sinkhorn-cpu.txt
	$(PY) benchmarks/bench_sampling.py --out benchmarks/results/sampling-cpu.txt
	$(PY) benchmarks/bench_mips.py --fit-sizes --out benchmarks/results/mips-cpu.txt
	$(PY) benchmarks/bench_mips.py --fit-only --fit-sizes 10000 --fit-max-steps 3000 --out benchmarks/results/mips-fit-cpu-d64.txt
	$(PY) benchmarks/bench_distributed.py --out benchmarks/results/distributed-cpu.txt

clean:
	rm -rf build ot_flow/_C*.so
